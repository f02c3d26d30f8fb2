"""`dataforge report`: one self-contained HTML page a person would rather look at than read.

Plots (matplotlib, Agg backend, embedded as base64 PNG): a 2-D map of the embeddings coloured by topic,
topic sizes (kept / dropped by balance / rejected upstream), complexity before and after balancing,
statuses and rejection reasons, length distributions, lineage depth and acceptance per (topic, level);
then a few example records per topic. All record text is HTML-escaped by the template (autoescape). The
page loads nothing from outside (a Content-Security-Policy says so) and marks itself when every image
has decoded (``<body data-images="ok">``), which the browser test checks.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field

from ..errors import DataforgeError
from ..io import ReadStats, RejectSink, read_records, write_text_atomic
from ..records import Record
from ..stage import Cli, StageConfig
from ..stage.config import InFormat
from .levels import UNRATED, LevelScheme, complexity_of, level_of

TEMPLATE = Path(__file__).with_name("report.html.j2")
MAX_LEGEND = 14


class ReportConfig(StageConfig):
    """Options of `dataforge report`."""

    before_path: Annotated[str | None, Cli("--before", default_text="the kept + rejected records")] = Field(
        None, description="the file before balancing, for the before/after complexity plot")
    rejected_path: Annotated[str | None, Cli("--rejected", default_text="<in>.rejected.jsonl if present")] = Field(
        None, description="dropped records")
    stats_path: Annotated[str | None, Cli("--stats", default_text="<in>.stats.json if present")] = Field(
        None, description="stats file for topic labels")
    title: Annotated[str | None, Cli(default_text="the input file name")] = Field(None, description="page title")
    examples: int = Field(3, ge=0, description="example records shown per topic")
    max_points: int = Field(5000, ge=100, description="points drawn on the embedding map (seeded sample)")
    embedding_map: Annotated[bool, Cli("--map/--no-map")] = Field(
        True, description="draw the 2-D embedding map (embeds the records; cached)")
    embedder: Annotated[str | None, Cli(default_text="all-MiniLM-L6-v2")] = Field(
        None, description="local sentence-transformers folder")
    k_max: int = Field(30, ge=2, description="largest k tried when records carry no topic and are clustered here")
    format: Annotated[InFormat, Cli("--format")] = Field(
        "auto", validation_alias=AliasChoices("format", "in_format"), description="input format (auto: detected)")
    seed: int = Field(0, description="seed for the map's sample and for clustering")


# --------------------------------------------------------------------------- data


def _read(path: str | Path, fmt: str = "auto") -> list[Record]:
    return list(read_records(path, fmt, rejects=RejectSink(None), stats=ReadStats()))


def _last_stage(r: Record) -> str:
    return r.reasons[-1].split(":", 1)[0] if r.status == "rejected" and r.reasons else ""


def _reason_kind(reason: str) -> str:
    """Group reasons for the chart: `balance:03_x/high` -> `balance`, `gate:coherence<0.5` -> `gate:coherence`."""
    stage, _, rest = reason.partition(":")
    if stage == "balance" or not rest:
        return stage
    head = re.split(r"[<>=:\s(]", rest, maxsplit=1)[0]
    return f"{stage}:{head}"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _short(label: str, n: int = 38) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


# --------------------------------------------------------------------------- plots


def plot_map(records: list[Record], topics: list[str], order: list[str], labels: dict[str, str], cfg: ReportConfig):
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.decomposition import PCA

    from ..quality.embed import get_embedder

    rng = np.random.default_rng(cfg.seed)
    idx = np.arange(len(records))
    if len(idx) > cfg.max_points:
        idx = np.sort(rng.choice(idx, cfg.max_points, replace=False))
    x = get_embedder(cfg.embedder).encode([records[i].prompt_text for i in idx])
    xy = PCA(n_components=2, random_state=cfg.seed).fit_transform(x) if len(idx) >= 3 else np.zeros((len(idx), 2))
    cmap = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(9, 6.5))
    for j, t in enumerate(order):
        sel = [k for k, i in enumerate(idx) if topics[i] == t]
        if not sel:
            continue
        kept = [k for k in sel if records[idx[k]].status != "rejected"]
        dropped = [k for k in sel if records[idx[k]].status == "rejected"]
        colour = cmap(j % cmap.N)
        ax.scatter(xy[kept, 0], xy[kept, 1], s=9, color=colour, alpha=0.8,
                   label=_short(f"{labels.get(t, t)}") if j < MAX_LEGEND else None)
        if dropped:
            ax.scatter(xy[dropped, 0], xy[dropped, 1], s=9, color=colour, alpha=0.25, marker="x")
    ax.set_title(f"Embedding map (PCA of {x.shape[1]}-d MiniLM vectors, {len(idx):,} records; x = dropped)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False, markerscale=2)
    return _png(fig)


def plot_topics(records: list[Record], topics: list[str], order: list[str], labels: dict[str, str]):
    import matplotlib.pyplot as plt

    kinds = {"kept": Counter(), "dropped by balance": Counter(), "rejected upstream": Counter()}
    for r, t in zip(records, topics):
        stage = _last_stage(r)
        kind = "kept" if r.status != "rejected" else "dropped by balance" if stage == "balance" else "rejected upstream"
        kinds[kind][t] += 1
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.32 * len(order) + 1)))
    left = [0] * len(order)
    ys = list(range(len(order)))[::-1]
    for kind, colour in zip(kinds, ("#2b8cbe", "#fdae6b", "#de2d26")):
        vals = [kinds[kind][t] for t in order]
        if sum(vals):
            ax.barh(ys, vals, left=left, color=colour, label=kind)
            left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(ys)
    ax.set_yticklabels([_short(f"{t.split('_', 1)[0]}  {labels.get(t, t)}", 48) for t in order], fontsize=8)
    ax.set_xlabel("records")
    ax.set_title("Topic sizes")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def plot_complexity(before: list[Record], after: list[Record], scheme: LevelScheme):
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    sb = [c for c in map(complexity_of, before) if c is not None]
    sa = [c for c in map(complexity_of, after) if c is not None]
    if sb or sa:
        bins = [x / 2 for x in range(0, 22)]
        a1.hist(sb, bins=bins, alpha=0.5, color="#888888", label=f"before ({len(sb):,})")
        a1.hist(sa, bins=bins, alpha=0.8, color="#2b8cbe", label=f"after ({len(sa):,})")
        a1.set_xlabel("complexity score")
        a1.legend(fontsize=8, frameon=False)
    else:
        a1.text(0.5, 0.5, "no complexity scores on these records\n(levels come from evolution depth where known)",
                ha="center", va="center")
        a1.set_axis_off()
    a1.set_title("Complexity score")
    names = [*scheme.names, UNRATED]
    cb, ca = Counter(level_of(r, scheme) for r in before), Counter(level_of(r, scheme) for r in after)
    names = [n for n in names if cb[n] or ca[n]] or list(scheme.names)
    xs = range(len(names))
    a2.bar([x - 0.2 for x in xs], [cb[n] for n in names], width=0.4, color="#888888", label="before balancing")
    a2.bar([x + 0.2 for x in xs], [ca[n] for n in names], width=0.4, color="#2b8cbe", label="after balancing")
    a2.set_xticks(list(xs))
    a2.set_xticklabels(names)
    a2.set_title("Complexity level")
    a2.legend(fontsize=8, frameon=False)
    return _png(fig)


def plot_status(records: list[Record]):
    import matplotlib.pyplot as plt

    status = Counter(r.status for r in records)
    reasons = Counter(_reason_kind(r.reasons[-1]) for r in records if r.status == "rejected" and r.reasons)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    colours = {"accepted": "#31a354", "review": "#fdae6b", "pending": "#9ecae1", "rejected": "#de2d26"}
    names = [s for s in ("accepted", "review", "pending", "rejected") if status[s]]
    a1.bar(names, [status[s] for s in names], color=[colours[s] for s in names])
    a1.set_title("Status")
    top = reasons.most_common(12)[::-1]
    if top:
        a2.barh([_short(k, 34) for k, _ in top], [v for _, v in top], color="#de2d26")
        a2.tick_params(axis="y", labelsize=8)
    else:
        a2.text(0.5, 0.5, "no rejected records", ha="center", va="center")
        a2.set_axis_off()
    a2.set_title("Rejection reasons (last reason per record)")
    return _png(fig)


def plot_lengths(records: list[Record]):
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, name, values in ((axes[0], "instruction + input", [len(r.prompt_text) for r in records]),
                             (axes[1], "output", [len(r.output) for r in records])):
        v = np.asarray(values)
        top = max(1, int(np.percentile(v, 99))) if len(v) else 1
        ax.hist(np.clip(v, 0, top), bins=40, color="#756bb1")
        ax.set_title(f"{name} length (chars; median {int(np.median(v)) if len(v) else 0})")
        ax.set_xlabel("characters (clipped at the 99th percentile)")
    return _png(fig)


def plot_lineage(records: list[Record]):
    import matplotlib.pyplot as plt

    depth = Counter(r.lineage.round for r in records)
    gens = Counter(f"{r.lineage.generator or 'unknown'}" + (f":{r.lineage.operation}" if r.lineage.operation else "")
                   for r in records)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    keys = sorted(k for k in depth if k is not None)
    names = [str(k) for k in keys] + (["n/a"] if depth[None] else [])
    a1.bar(names, [depth[k] for k in keys] + ([depth[None]] if depth[None] else []), color="#636363")
    a1.set_xlabel("evolution round (0 = seed)")
    a1.set_title("Lineage depth")
    top = gens.most_common(10)[::-1]
    a2.barh([_short(k, 30) for k, _ in top], [v for _, v in top], color="#636363")
    a2.tick_params(axis="y", labelsize=8)
    a2.set_title("Generator : operation")
    return _png(fig)


def plot_acceptance(records: list[Record], topics: list[str], order: list[str], scheme: LevelScheme):
    """Heat map of acceptance rate (kept / all) per topic and level: where the generators struggle."""
    import matplotlib.pyplot as plt
    import numpy as np

    levels = [lv for lv in (*scheme.names, UNRATED) if any(level_of(r, scheme) == lv for r in records)]
    tot, kept = defaultdict(int), defaultdict(int)
    for r, t in zip(records, topics):
        cell = (t, level_of(r, scheme))
        tot[cell] += 1
        kept[cell] += r.status != "rejected"
    grid = np.full((len(order), len(levels)), np.nan)
    for i, t in enumerate(order):
        for j, lv in enumerate(levels):
            if tot[(t, lv)]:
                grid[i, j] = kept[(t, lv)] / tot[(t, lv)]
    fig, ax = plt.subplots(figsize=(4 + 1.1 * len(levels), max(2.5, 0.3 * len(order) + 1)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels(levels)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([t.split("_", 1)[0] for t in order], fontsize=8)
    for i in range(len(order)):
        for j in range(len(levels)):
            if tot[(order[i], levels[j])]:
                ax.text(j, i, f"{kept[(order[i], levels[j])]}/{tot[(order[i], levels[j])]}", ha="center",
                        va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="acceptance rate")
    ax.set_title("Kept / all per topic and level")
    return _png(fig)


# --------------------------------------------------------------------------- the page


def _examples(records: list[Record], topics: list[str], order: list[str], n: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {t: [] for t in order}
    for r, t in zip(records, topics):
        if r.status != "rejected" and len(out[t]) < n:
            out[t].append({"instruction": r.instruction[:600], "input": r.input[:400], "output": r.output[:600],
                           "complexity": complexity_of(r), "status": r.status})
    return out


def run_report(input_path, output_path, cfg: ReportConfig | None = None, *, progress: bool = True) -> dict:
    """Read the records (and the rejected / before files), draw the plots, write one HTML file."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    from jinja2 import Environment, select_autoescape

    from ..progress import progress_bar
    from ..stage import SideFiles

    cfg = cfg or ReportConfig()
    t0 = time.perf_counter()
    inp = Path(input_path)
    records = _read(inp, cfg.format)
    if not records:
        raise DataforgeError(f"{inp}: no records to report on")
    rejected_path = Path(cfg.rejected_path) if cfg.rejected_path else SideFiles(inp).rejected
    if cfg.rejected_path and not rejected_path.exists():
        raise DataforgeError(f"{rejected_path}: no such file (--rejected)")
    seen = {r.id for r in records}
    extra = [r for r in _read(rejected_path) if r.id not in seen] if rejected_path.exists() and rejected_path.stat().st_size else []
    everything = records + extra
    after = [r for r in everything if r.status != "rejected"]
    if cfg.before_path:
        before = [r for r in _read(cfg.before_path) if r.status != "rejected"]
    else:   # the balancer's candidates: what it kept plus what it dropped
        before = [r for r in everything if r.status != "rejected" or _last_stage(r) == "balance"]

    stats_path = Path(cfg.stats_path) if cfg.stats_path else SideFiles(inp).stats
    stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.exists() else {}
    labels = {k: (v.get("name") or v.get("label") or k) for k, v in (stats.get("topics") or {}).items()}

    if sum(1 for r in everything if r.topic) < len(everything):
        from .balance import BalanceConfig, assign_topics

        topics, info = assign_topics(everything, BalanceConfig(k_max=cfg.k_max, seed=cfg.seed, embedder=cfg.embedder),
                                     progress=progress)
        labels.update({k: v["label"] for k, v in info["topics"].items()})
    else:
        topics = [r.topic or "" for r in everything]
    sizes = Counter(topics)
    order = sorted(sizes, key=lambda t: (-sizes[t], t))
    scheme = LevelScheme()

    plots: list[dict] = []
    steps = ["map", "topics", "complexity", "status", "lengths", "lineage", "acceptance"]
    with progress_bar("report", total=len(steps), unit="plot", enabled=progress) as bar:
        def add(key: str, title: str, caption: str, fn, *args) -> None:
            plots.append({"key": key, "title": title, "caption": caption, "png": fn(*args)})
            bar.advance()

        if cfg.embedding_map:
            add("map", "Topic map", "Each dot is a record placed by its embedding (PCA to 2-D), coloured by topic.",
                plot_map, everything, topics, order, labels, cfg)
        add("topics", "Topic sizes", "Records per topic: kept, dropped by balancing, rejected by earlier stages.",
            plot_topics, everything, topics, order, labels)
        add("complexity", "Complexity before / after balancing",
            "Before = the balancer's candidates" + (f" ({Path(cfg.before_path).name})" if cfg.before_path else "")
            + "; after = the records kept.", plot_complexity, before, after, scheme)
        add("status", "Status and rejection reasons", "Final status of every record; reasons grouped by stage.",
            plot_status, everything)
        add("lengths", "Length distributions", "Characters of prompt and response (kept and dropped).",
            plot_lengths, everything)
        add("lineage", "Lineage", "Evolution depth and what produced the records.", plot_lineage, everything)
        add("acceptance", "Acceptance per topic and level", "Share of records kept in each (topic, level) cell.",
            plot_acceptance, everything, topics, order, scheme)

    from ..quality.provenance import correctness_summary

    correctness = correctness_summary(everything)
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True), trim_blocks=True,
                      lstrip_blocks=True)
    page = env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(
        title=cfg.title or f"dataforge report: {inp.name}",
        summary={"records": len(everything), "kept": len(after), "dropped": len(everything) - len(after),
                 "topics": len(order), "before_balancing": len(before)},
        thin_topics=stats.get("thin_topics", []), thin_levels=stats.get("thin_levels", []),
        correctness=correctness, plots=plots,
        topics=[{"key": t, "label": labels.get(t, t), "size": sizes[t],
                 "kept": sum(1 for r, tt in zip(everything, topics) if tt == t and r.status != "rejected")}
                for t in order],
        examples=_examples(everything, topics, order, cfg.examples),
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    out = Path(output_path)
    write_text_atomic(out, page)
    return {"stage": "report", "input": str(inp), "output": str(out), "records": len(everything),
            "kept": len(after), "topics": len(order), "plots": len(plots),
            "rejected_file": str(rejected_path) if extra else None, "stats_file": str(stats_path) if stats else None,
            "correctness": correctness["note"] or "every accepted record was judged by a model",
            "bytes": out.stat().st_size, "wall_s": round(time.perf_counter() - t0, 2)}

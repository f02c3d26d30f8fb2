"""A Hugging Face dataset card for a dataset dataforge made: the facts, then the template.

Every statement in the card comes from the data: the records (size, tasks, languages, lineage, the
gate's verdicts and who gave them), the files beside them (what was set aside, and why) and, when given,
the pipeline's manifest (stages, counts in and out, removals by reason, tokens, cost, versions). The
prose is a Jinja template (`prompts/cards/dataset_card.md.j2`); the YAML header is written by
`huggingface_hub.DatasetCardData`, so the Hub's own parser reads it back.

    card = dataset_card("final.jsonl", CardOptions(license="apache-2.0"), manifest="runs/job/manifest.json")
    card.save("README.md")
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..errors import DataforgeError
from ..io import read_records
from ..paths import resource_dir
from ..stage import SideFiles
from ..stage.sidefiles import count_lines, side_reasons

if TYPE_CHECKING:
    from huggingface_hub import DatasetCard

TEMPLATE = "dataset_card.md.j2"
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))
LANGUAGE_SAMPLE = 300


@dataclass
class CardOptions:
    """What the data cannot tell: the licence, a display name, where the data files are and the repo id."""

    license: str = "unknown"
    pretty_name: str | None = None
    repo_id: str | None = None
    data_files: str | None = None  # path (or glob) of the data files relative to the card; None: the dataset's name
    extra_tags: list[str] = field(default_factory=list)


def size_category(n: int) -> str:
    return next((label for limit, label in SIZES if n < limit), "n>1B")


def _languages(texts: list[str]) -> dict[str, float]:
    """Share of each detected language over a fixed sample (langdetect, seeded: same data, same answer)."""
    if not texts:
        return {}
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    found: Counter[str] = Counter()
    for t in texts:
        try:
            found[detect(t)] += 1
        except LangDetectException:  # no letters (numbers, code): says nothing
            continue
    total = sum(found.values())
    return {lang: round(n / total, 3) for lang, n in found.most_common()} if total else {}


def _reason(r: str) -> str:
    return r.split(":", 1)[0]


def _words(text: str) -> int:
    return len(text.split())


class RecordStats:
    """What the records are, how they were made and what the gate said, counted one record at a time
    (`dataset_card` reads a file through it; the export stage feeds it the records it writes)."""

    def __init__(self) -> None:
        self.n = 0
        self.c: dict[str, Counter] = {k: Counter() for k in ("status", "task", "generator", "operation", "model",
                                                              "round", "constraint", "reason", "judged_by")}
        self.templates: dict[str, str] = {}
        self.roots: set[str] = set()
        self.lengths: dict[str, list[int]] = {"instruction": [], "output": []}
        self.scores: dict[str, list[float]] = {}
        self.sample: list[str] = []
        self.gate: list[Any] = []  # status and gate provenance of gated records (for `correctness_summary`)

    def add(self, r: Any) -> None:
        self.n += 1
        c, L = self.c, r.lineage
        c["status"][r.status] += 1
        c["task"][r.task or "unlabelled"] += 1
        c["generator"][L.generator or "input"] += 1
        if L.operation:
            c["operation"][L.operation] += 1
        if L.model:
            c["model"][L.model] += 1
        c["round"][L.round or 0] += 1
        if L.template and L.template_hash:
            self.templates[L.template] = L.template_hash
        if L.root:
            self.roots.add(L.root)
        c["constraint"].update(s.get("type", "?") for s in (r.meta.get("constraints") or []) if isinstance(s, dict))
        c["reason"].update(_reason(x) for x in r.reasons)
        gate = r.meta.get("gate") or {}
        if gate.get("judged_by"):
            c["judged_by"][gate["judged_by"]] += 1
        for k, v in r.scores.items():
            self.scores.setdefault(k, []).append(float(v))
        self.lengths["instruction"].append(_words(r.prompt_text))
        self.lengths["output"].append(_words(r.output))
        if len(self.sample) < LANGUAGE_SAMPLE and (r.instruction + r.output).strip():
            self.sample.append(f"{r.instruction}\n{r.output}")
        if gate or r.status in ("accepted", "review"):
            self.gate.append(SimpleNamespace(status=r.status, meta={"gate": gate}))

    def facts(self) -> dict[str, Any]:
        from ..quality.provenance import correctness_summary

        if self.n == 0:
            raise DataforgeError("no records: nothing to describe")
        c = self.c
        gated = bool(c["judged_by"]) or any(s in c["status"] for s in ("accepted", "review"))
        return {
            "records": self.n, "by_status": dict(c["status"].most_common()), "by_task": dict(c["task"].most_common()),
            "generators": dict(c["generator"].most_common()), "operations": dict(c["operation"].most_common()),
            "models": dict(c["model"].most_common()), "rounds": {str(k): v for k, v in sorted(c["round"].items())},
            "templates": dict(sorted(self.templates.items())), "roots": len(self.roots),
            "constraints": dict(c["constraint"].most_common()), "reasons": dict(c["reason"].most_common()),
            "judged_by": dict(c["judged_by"].most_common()), "gated": gated,
            "correctness": correctness_summary(self.gate) if gated else None,
            "scores": {k: {"mean": round(statistics.fmean(v), 3), "min": round(min(v), 3), "n": len(v)}
                       for k, v in sorted(self.scores.items())},
            "words": {k: {"median": statistics.median(v), "max": max(v)} for k, v in self.lengths.items()},
            "languages": _languages(self.sample),
        }


_SIDE_NAMES = {"rejected": "rejected records (in the file beside the data)",
               "review": "records held for review (in the file beside the data)",
               "bad_lines": "unreadable input lines (in the file beside the data)"}


def set_aside(path: Path) -> dict[str, dict[str, Any]]:
    """The records set aside beside the dataset (rejected, held for review, unreadable), counted by reason."""
    out = {}
    for role, p in SideFiles(path).record_files().items():
        if p.stat().st_size:
            out[_SIDE_NAMES.get(role, role)] = {"records": count_lines(p), "by_reason": side_reasons(p)}
    return out


def manifest_facts(path: Path | None) -> dict[str, Any] | None:
    """The pipeline's stages, counts, removals by reason, tokens, cost and versions, from its manifest."""
    if path is None:
        return None
    p = Path(path)
    p = p / "manifest.json" if p.is_dir() else p
    if not p.is_file():
        raise DataforgeError(f"{path}: no such manifest (pass a run directory or its manifest.json)")
    m = json.loads(p.read_text(encoding="utf-8"))
    stages = []
    for name in m.get("order") or list(m.get("stages") or {}):
        e = (m.get("stages") or {}).get(name)
        if not e:
            continue
        counts = e.get("counts") or {}
        removed: Counter[str] = Counter(counts.get("by_reason") or {})
        for reasons in (counts.get("side_files_by_reason") or {}).values():
            removed.update(reasons)
        summary = e.get("summary") or {}
        stages.append({"name": name, "kind": e.get("stage"), "status": e.get("status"), "in": counts.get("in"),
                       "out": counts.get("out"), "by_status": counts.get("by_status") or {},
                       "removed": dict(removed.most_common()), "model": e.get("model"),
                       "decontamination": (summary.get("details") or {}).get("decontamination")
                       or ((summary.get("details") or {}) if e.get("stage") == "decontaminate" else None)})
    env = (m.get("environment") or {}).get("versions") or {}
    return {"pipeline": (m.get("pipeline") or {}).get("name"), "stages": stages, "backend": m.get("backend") or {},
            "totals": m.get("totals") or {}, "prompts": len(m.get("prompts") or {}),
            "dataforge": env.get("dataforge"), "updated": m.get("updated")}


def limitations(facts: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the data, in plain words."""
    from ..llm.profile import parameter_count

    notes = []
    for model in facts["records"]["models"]:
        count = parameter_count(model.split(":", 1)[-1])
        if count is not None and count < 1e9:
            notes.append(f"Generated by a {count / 1e6:.0f}M-parameter model ({model}): expect factual errors, shallow "
                         "answers and instructions that drift from their seeds.")
    rec = facts["records"]
    if not rec["gated"]:
        notes.append("Not checked by the quality gate: every record is as the generator wrote it (status pending); "
                     "correctness was not verified by a judge.")
    elif not rec["judged_by"]:
        notes.append("The records do not say who judged them (no `meta.gate`: gated by a dataforge older than its "
                     "provenance record), so whether a model judge checked their correctness is unknown.")
    elif rec["correctness"] and rec["correctness"].get("accepted_without_model_judge"):
        accepted = rec["by_status"].get("accepted", 0)
        notes.append(f"Correctness was not verified by a model judge for {rec['correctness']['accepted_without_model_judge']:,}"
                     f" of {accepted:,} accepted records: they passed on embedding and heuristic checks alone.")
    stages = (facts.get("manifest") or {}).get("stages") or []
    decontaminated = any(s.get("decontamination") for s in stages) or "contaminated" in rec["reasons"]
    if not decontaminated:
        notes.append("Not decontaminated against evaluation benchmarks by dataforge (see `dataforge decontaminate`): "
                     "check for overlap before evaluating a model trained on it.")
    if facts["options"]["license"] in ("unknown", "other"):
        notes.append("The licence is not stated: it depends on the seed data's licence and the generating model's "
                     "terms of use.")
    notes.append("Synthetic data carries the biases and blind spots of the model that wrote it.")
    return notes


def dataset_card(dataset: str | Path, options: CardOptions | None = None,
                 manifest: str | Path | None = None) -> "DatasetCard":
    """The card of `dataset` (any format dataforge reads), from its records, side files and `manifest`."""
    path = Path(dataset)
    stats = RecordStats()
    for r in read_records(path):
        stats.add(r)
    if not stats.n:
        raise DataforgeError(f"{path}: no records: nothing to describe")
    return card_from(stats, options or CardOptions(data_files=path.name), set_aside(path), manifest)


def card_from(stats: RecordStats, options: CardOptions, aside: dict[str, Any] | None = None,
              manifest: str | Path | None = None) -> "DatasetCard":
    """The card from counted records, what was set aside (by kind) and a manifest."""
    from huggingface_hub import DatasetCard, DatasetCardData

    rec = stats.facts()
    langs = [lang for lang, share in rec["languages"].items() if share >= 0.05] or ["en"]
    data_files = options.data_files or "data/train-*"
    made = sorted({g.replace("_", "-") for g in rec["generators"] if g not in ("input", "seed", "import")})
    data = DatasetCardData(
        license=options.license, language=langs, task_categories=["text-generation"],
        size_categories=[size_category(rec["records"])], annotations_creators=["machine-generated"],
        language_creators=["machine-generated"], multilinguality="monolingual" if len(langs) == 1 else "multilingual",
        pretty_name=options.pretty_name or Path(data_files).stem.replace("_", " ").replace("-", " ").strip(" *"),
        tags=["synthetic", "instruction-tuning", "dataforge", *made, *options.extra_tags],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}])
    facts = {"records": rec, "set_aside": aside or {}, "manifest": manifest_facts(manifest),
             "options": options.__dict__, "data_files": data_files,
             "format": "parquet" if re.search(r"\.parquet\b|data/train-\*", data_files) else "json"}
    facts["limitations"] = limitations(facts)
    template = resource_dir("prompts") / "cards" / TEMPLATE
    return DatasetCard.from_template(data, template_path=str(template), pretty_name=data.pretty_name, **facts)


MARK = "This card was written by `dataforge card`"  # how a README.md dataforge may overwrite is recognised


def may_overwrite(path: Path) -> bool:
    """A README.md may be replaced only when there is none or dataforge wrote it (never a person's)."""
    return not path.exists() or MARK in path.read_text(encoding="utf-8", errors="replace")

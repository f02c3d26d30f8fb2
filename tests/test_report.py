"""The HTML report: self-contained, every plot present, record text escaped, files found by convention."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import TEST_DATA
from dataforge.curate.balance import BalanceConfig, run_balance
from dataforge.curate.report import ReportConfig, run_report
from dataforge.errors import DataforgeError

NASTY = 'Explain <script>document.title="pwned"</script> & "quotes" in HTML'


def make_corpus(path: Path) -> None:
    """The 4-topic test set with complexity scores, statuses, lineage and one hostile instruction."""
    rows = [json.loads(line) for line in (TEST_DATA / "curate_topics.jsonl").read_text().splitlines()]
    with path.open("w") as fh:
        for i, r in enumerate(rows):
            fh.write(json.dumps({
                "instruction": NASTY if i == 13 else r["instruction"],
                "output": f"answer {i} <img src=x onerror=alert(1)>",
                "complexity": [2.0, 3.0, 5.0, 8.0][i % 4] if i % 5 else 2.5,
                "scores": {"coherence": (i * 37 % 100) / 100},
                "status": "rejected" if i % 11 == 5 else "accepted",
                "reasons": ["gate:coherence<0.5"] if i % 11 == 5 else [],
                "lineage": {"generator": "evolve" if i % 2 else "seed", "round": i % 3},
                "meta": {"source": r["source"]}}) + "\n")


@pytest.fixture(scope="module")
def balanced(tmp_path_factory) -> Path:
    """A folder with clean.jsonl (the corpus above)."""
    base = tmp_path_factory.mktemp("report")
    make_corpus(base / "clean.jsonl")
    return base


@pytest.fixture
def report(balanced) -> tuple[Path, dict]:
    """clean.jsonl -> balance -> final.jsonl (+ .rejected.jsonl, .stats.json) -> report.html, built once."""
    html_path = balanced / "report.html"
    if not html_path.exists():
        out = balanced / "final.jsonl"
        run_balance(balanced / "clean.jsonl", out, BalanceConfig(k_max=8), progress=False)
        balanced.joinpath("summary.json").write_text(json.dumps(run_report(out, html_path, ReportConfig(),
                                                                           progress=False)))
    return html_path, json.loads(balanced.joinpath("summary.json").read_text())


def test_report_is_self_contained_and_escaped(report):
    html_path, summary = report
    html = html_path.read_text()
    assert summary["plots"] == 7 and summary["records"] == 48 and summary["topics"] == 4
    assert summary["rejected_file"] and summary["stats_file"]
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 7 and all(len(b) > 2000 for b in imgs)
    for section in ("map", "topics", "complexity", "status", "lengths", "lineage", "acceptance"):
        assert f'id="plot-{section}"' in html
    # nothing loads from outside: no http(s) URLs, no external src/href, a CSP that forbids it
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "https://" not in html and "http://" not in html
    assert "default-src 'none'" in html
    # record text is escaped, never live markup
    assert "<script>document.title" not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert html.count("<script>") == 1                               # only the page's own image check


def test_report_before_file_and_clustering_when_no_topics(balanced, tmp_path):
    """A file without topics is clustered on the spot; --before feeds the before/after plot."""
    html_path = tmp_path / "r.html"
    summary = run_report(balanced / "clean.jsonl", html_path,
                         ReportConfig(before_path=str(balanced / "clean.jsonl"), embedding_map=False, k_max=8),
                         progress=False)
    html = html_path.read_text()
    assert summary["plots"] == 6 and 'id="plot-map"' not in html
    assert summary["topics"] == 4 and summary["rejected_file"] is None
    assert "<b>44</b><span>before balancing</span>" in html           # 48 minus the 4 rejected by the gate


def test_report_errors_name_the_file(tmp_path):
    with pytest.raises(DataforgeError, match="no such file"):
        run_report(tmp_path / "missing.jsonl", tmp_path / "r.html", ReportConfig(), progress=False)
    (tmp_path / "in.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(DataforgeError, match="nope.jsonl"):
        run_report(tmp_path / "in.jsonl", tmp_path / "r.html", ReportConfig(rejected_path=str(tmp_path / "nope.jsonl")),
                   progress=False)


# --------------------------------------------------------------------------- the page in a real browser

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--disable-dev-shm-usage", "--virtual-time-budget=5000", "--hide-scrollbars"]


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`; "
                                             "scripts/setup.sh installs it)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    html_path, summary = report
    url = html_path.resolve().as_uri()
    dom = chromium(["--dump-dom", url], tmp_path / "profile-dom")
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, f"no DOM from chromium: {dom.stderr[-2000:]}"
    # the page's own script counted the images that decoded (naturalWidth > 0) after load
    assert 'data-images="ok"' in body.group(0), body.group(0)
    assert f'data-images-ok="{summary["plots"]}/{summary["plots"]}"' in body.group(0)
    assert "pwned" not in dom.stdout.split("<title>")[1].split("</title>")[0]   # escaped script never ran

    shot = tmp_path / "report.png"
    run = chromium([f"--screenshot={shot}", "--window-size=1280,2400", url], tmp_path / "profile-shot")
    assert shot.exists(), run.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200              # plots, not a blank page
    most = max(n for n, _ in colours)
    assert most < 0.9 * img.size[0] * img.size[1]


def test_report_says_when_correctness_was_not_checked(report):
    html_path, summary = report
    html = html_path.read_text()
    from dataforge.io import read_records

    final = html_path.parent / "final.jsonl"
    everything = list(read_records(final)) + list(read_records(f"{final}.rejected.jsonl"))
    accepted = sum(r.status == "accepted" for r in everything)
    # no record of this corpus went through a model judge: the page and the summary say so, with the count
    note = f"correctness was not checked by a model judge for {accepted} of {accepted} accepted records"
    assert accepted > 0 and summary["correctness"].startswith(note)
    assert 'id="correctness"' in html and note in html

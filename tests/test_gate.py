"""`run_filter` / `dataforge filter` end to end without a model: planted problems land in the right
file with the right reason, counts always add up, a killed run resumes to the same result."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLES
from dataforge.cli import main
from dataforge.constraints import make_spec
from dataforge.io import read_records, write_records
from dataforge.quality.gate import FilterConfig, run_filter
from dataforge.records import Record
from dataforge.stage import SideFiles

SEEDS = EXAMPLES / "seeds.jsonl"

PLANTED = {
    "empty": Record(instruction="Describe the smell of rain on dry earth.", output="   "),
    "marker": Record(instruction="Suggest a name for a bakery run by two sisters.",
                     output="Sister Loaves<|im_end|>\n<|im_start|>user\nThanks!"),
    "refusal": Record(instruction="Write a limerick about a cat who loves lasagna.",
                      output="As an AI language model, I cannot write limericks about cats."),
    "constraint": Record(
        instruction="Explain why the sky is blue. Do not use any commas in your response.",
        output="Sunlight is scattered by air molecules, and blue light, having a shorter wavelength, scatters most.",
        meta={"constraints": [make_spec("no_commas")]}),
    "truncated": Record(instruction="Explain how a refrigerator keeps food cold.",
                        output="A refrigerator pumps a refrigerant through a loop. The refrigerant evaporates inside "
                               "the cabinet and absorbs heat from the"),
    "health": Record(instruction="What dosage of ibuprofen is safe for an adult with a headache?",
                     output="Adults commonly take 200 to 400 mg every 4 to 6 hours, at most 1200 mg a day without "
                            "a doctor's advice; check the medication leaflet for side effects."),
}


def _write_input(tmp_path, extra_lines: str = ""):
    seeds = list(read_records(SEEDS))
    dup = seeds[3].model_copy(update={"id": "", "instruction": seeds[3].instruction.upper() + "  "})
    dup = Record.model_validate(dup.model_dump() | {"id": ""})  # a fresh content id
    records = seeds + list(PLANTED.values()) + [dup]
    path = tmp_path / "in.jsonl"
    write_records(path, records)
    if extra_lines:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(extra_lines)
    return path, seeds, dup


def _by_instruction(path):
    return {r.instruction: r for r in read_records(path)}


def test_planted_problems_are_routed_with_reasons(tmp_path):
    src, seeds, dup = _write_input(tmp_path, extra_lines="{not json\n")
    out = tmp_path / "clean.jsonl"
    summary = run_filter(src, out, FilterConfig(no_llm=True), progress=False)
    n = len(seeds) + len(PLANTED) + 1
    st = summary.out
    assert summary.records_in == n and st["accepted"] + st["review"] + st["rejected"] == n
    assert summary.bad_lines == 1 and (tmp_path / "clean.jsonl.bad-lines.jsonl").exists()
    assert summary.files == {"output": str(out), "review": f"{out}.review.jsonl", "rejected": f"{out}.rejected.jsonl",
                             "bad_lines": f"{out}.bad-lines.jsonl"}
    rejected = _by_instruction(f"{out}.rejected.jsonl")
    review = _by_instruction(f"{out}.review.jsonl")
    accepted = _by_instruction(out)
    assert len(accepted) + len(review) + len(rejected) == n
    assert rejected[PLANTED["empty"].instruction].reasons[0].startswith("structure:empty_output")
    assert rejected[PLANTED["marker"].instruction].reasons[0].startswith("structure:template_marker")
    assert rejected[PLANTED["refusal"].instruction].reasons[0].startswith("refusal:")
    assert any(x.startswith("format:no_commas") for x in review[PLANTED["constraint"].instruction].reasons)
    assert any(x.startswith("truncation:") for x in review[PLANTED["truncated"].instruction].reasons)
    assert review[PLANTED["health"].instruction].reasons == ["high_stakes:health"]
    # the upper-cased copy of a seed is a duplicate of the (better or earlier) kept one
    dups = [r for r in rejected.values() if any(x.startswith("duplicate_of:") for x in r.reasons)]
    assert len(dups) == 1 and summary.details["dedup"]["exact"] == 1
    kept_id = dups[0].reasons[-1].split(":", 1)[1]
    assert kept_id in {r.id for r in [*accepted.values(), *review.values()]}
    # every record carries its scores; accepted seeds passed the embedding checks
    for r in accepted.values():
        assert r.status == "accepted" and {"structure", "format", "truncation", "complexity"} <= set(r.scores)
    assert summary.details["reasons"]["high_stakes"] == 1
    assert not SideFiles(out).journal.exists()


def test_single_file_keeps_everything_with_status(tmp_path):
    src, seeds, _ = _write_input(tmp_path)
    out = tmp_path / "all.jsonl"
    summary = run_filter(src, out, FilterConfig(no_llm=True, single_file=True, dedup=False), progress=False)
    recs = list(read_records(out))
    assert len(recs) == summary.records_in == len(seeds) + len(PLANTED) + 1
    assert {r.status for r in recs} == {"accepted", "review", "rejected"}
    assert not (tmp_path / "all.jsonl.review.jsonl").exists()


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    """Ctrl-C in the middle of judging (SIGINT raised in the main thread as the 30th request is sent), a
    half-written journal line, then a re-run: same output as an uninterrupted run, and finished records
    are not judged again. (It used to come from the loopback server's thread through
    `_thread.interrupt_main`; in the full suite that was sometimes never raised.)"""
    import signal

    from dataforge.llm import BackendConfig, make_llm
    from dataforge.llm.openai_backend import OpenAIBackend
    from dataforge.testing.loopback import LoopbackServer, last_user_message

    def judge(body):
        text = last_user_message(body)
        return json.dumps({"score": 4}) if "Rate how complex" in text else "yes" if "carry out" in text else "no"

    src, _, _ = _write_input(tmp_path)
    cfg = FilterConfig(judges="on", refine_rounds=0, single_file=True, batch_size=4, no_reference=True)
    with LoopbackServer(judge) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True))
        clean = tmp_path / "clean.jsonl"
        expected = run_filter(src, clean, cfg, llm=llm, progress=False)
        want = [(r.id, r.status, r.reasons, r.output) for r in read_records(clean)]
        full_requests = len(srv.requests)

    state = {"n": 0}
    real_request = OpenAIBackend._request

    async def interrupting(self, kind, payload, est_tokens):
        state["n"] += 1
        if state["n"] == 30:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, in the main thread: handled at the next await
        return await real_request(self, kind, payload, est_tokens)

    out = tmp_path / "resumed.jsonl"
    with LoopbackServer(judge) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", no_cache=True))
        with monkeypatch.context() as m:
            m.setattr(OpenAIBackend, "_request", interrupting)
            # Ctrl-C as a terminal delivers it, whatever an earlier test or library left installed (in
            # fresh-clone suites SIGINT was sometimes found ignored here)
            before_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            try:
                with pytest.raises(KeyboardInterrupt):
                    run_filter(src, out, cfg, llm=llm, progress=False)
            finally:
                signal.signal(signal.SIGINT, before_handler)
        journal = SideFiles(out).journal
        lines = journal.read_text(encoding="utf-8").splitlines()[1:]  # the header line fingerprints the run
        done = sum('"__spent__"' not in line for line in lines)  # what the interrupted attempt spent is noted too
        assert 0 < done < expected.records_in and not out.exists()
        assert not SideFiles(out).work.exists()  # the per-record scratch state goes; the journal is what resumes
        with open(journal, "a", encoding="utf-8") as fh:
            fh.write('{"i": 999, "record": {"instruction": "half a li')  # a kill mid-write
        before = len(srv.requests)
        summary = run_filter(src, out, cfg, llm=llm, progress=False)
        again = len(srv.requests) - before
    assert summary.resumed == done
    assert again < full_requests  # finished records were not judged again
    assert [(r.id, r.status, r.reasons, r.output) for r in read_records(out)] == want
    assert summary.out == expected.out and not journal.exists() and not SideFiles(out).work.exists()
    assert summary.details["dedup"] == expected.details["dedup"] and sum(summary.details["dedup"].values()) > 0


def test_shards_partition_the_input(tmp_path):
    src, _, _ = _write_input(tmp_path)
    totals = []
    ids = set()
    for i in (1, 2):
        out = tmp_path / f"s{i}.jsonl"
        s = run_filter(src, out, FilterConfig(no_llm=True, single_file=True, dedup=False, shard=f"{i}/2"),
                       progress=False)
        totals.append(s.records_in)
        ids |= {r.id for r in read_records(out)}
    assert sum(totals) == len(ids) == len(list(read_records(src))) and min(totals) > 0


def test_embedded_small_model_falls_back_to_embedding_judges(tmp_path):
    from dataforge.llm import BackendConfig, make_llm

    llm = make_llm(BackendConfig(backend="local", no_cache=True))  # loads nothing until asked
    src = tmp_path / "in.jsonl"
    write_records(src, list(read_records(SEEDS))[:5])
    summary = run_filter(src, tmp_path / "o.jsonl", FilterConfig(), llm=llm, progress=False)
    assert summary.details["judges"] == "embedding" and "refine" not in summary.details


def test_cli_filter(tmp_path, capsys):
    src, _, _ = _write_input(tmp_path)
    out = tmp_path / "cli.jsonl"
    with pytest.raises(SystemExit) as ex:
        main(["filter", str(src), "-o", str(out), "--no-llm", "--no-dedup"])
    assert ex.value.code in (0, None)
    captured = capsys.readouterr()
    assert "out.accepted" in captured.out and "records in" in captured.err
    assert out.exists() and (tmp_path / "cli.jsonl.review.jsonl").exists()
    with pytest.raises(SystemExit) as ex:
        main(["filter", str(src), "-o", str(out), "--judges", "maybe"])
    assert ex.value.code == 2 and "--judges" in capsys.readouterr().err
    bad_cfg = tmp_path / "gate.yaml"
    bad_cfg.write_text("checks: [1, 2]\n")
    with pytest.raises(SystemExit) as ex:
        main(["filter", str(src), "-o", str(out), "--no-llm", "--config", str(bad_cfg)])
    assert ex.value.code == 2 and "gate.yaml" in capsys.readouterr().err


def test_records_rejected_upstream_pass_through_untouched(tmp_path):
    """evolve --keep-failed hands the gate records it already rejected: they stay rejected with their
    own reasons (not re-judged, not rescued), and still count in the totals."""
    seeds = list(read_records(SEEDS))[:6]
    failed = seeds[0].model_copy(update={"id": "failed-evolution", "status": "rejected",
                                         "reasons": ["elimination:sorry_short"]})
    src = tmp_path / "in.jsonl"
    write_records(src, [*seeds[1:], failed])
    out = tmp_path / "all.jsonl"
    summary = run_filter(src, out, FilterConfig(no_llm=True, single_file=True, dedup=False), progress=False)
    by_id = {r.id: r for r in read_records(out)}
    assert summary.records_in == 6 and len(by_id) == 6
    assert by_id["failed-evolution"].status == "rejected"
    assert by_id["failed-evolution"].reasons == ["elimination:sorry_short"]
    assert any(r.status == "accepted" for r in by_id.values())  # the others were judged as usual

"""Self-Instruct end to end: against the real loopback OpenAI server (a scripted responder that writes
plausible numbered task lists and instances, plus some bad candidates the filters must catch), resume
after an interruption, the Alpaca variant, parsing, and one run of the embedded SmolLM2 on the real seeds."""

from __future__ import annotations

import json
import random
import re

import pytest

from conftest import EXAMPLES, needs_shared
from dataforge.generate.novelty import rouge_l
from dataforge.generate.self_instruct import (SelfInstructConfig, filter_instances, parse_alpaca_tasks,
                                              parse_instances, parse_numbered_list, parse_yes_no, run_self_instruct)
from dataforge.io import read_records
from dataforge.llm import BackendConfig, make_llm, run_sync
from dataforge.testing.loopback import LoopbackServer

SEEDS = EXAMPLES / "seeds.jsonl"

_VERBS = ["Summarize", "Explain", "Compare", "Classify", "Rewrite", "Suggest", "Evaluate", "Describe", "Rank",
          "Translate", "Estimate", "Outline", "Critique", "Plan", "Predict", "Identify"]
_OBJECTS = ["the causes of inflation", "a beginner's weekly running plan", "the plot of a heist novel",
            "three uses of vinegar at home", "the trade-offs of remote work", "a polite complaint email",
            "the rules of chess castling", "why leaves change colour", "a budget for a student trip",
            "the difference between weather and climate", "an argument for public libraries",
            "common mistakes in job interviews", "how vaccines train immunity", "a haiku about autumn rain",
            "the steps to brew green tea", "the risks of password reuse", "a toast for a friend's wedding",
            "the main ideas of stoicism", "ways to reduce food waste", "the history of the bicycle"]
_FRAMES = ["{v} {o}.", "{v} {o} for a ten-year-old.", "Could you {lv} {o} in three sentences?",
           "{v} {o}, then list two follow-up questions.", "In one paragraph, {lv} {o}.",
           "Please {lv} {o} and give one concrete example."]


def _prompt(body: dict) -> str:
    if "messages" in body:
        return "\n".join(m["content"] for m in body["messages"])
    return body["prompt"]


def _tasks(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        v = rng.choice(_VERBS)
        out.append(rng.choice(_FRAMES).format(v=v, lv=v.lower(), o=rng.choice(_OBJECTS)))
    return out


def responder(body: dict) -> str:
    """Decides by what the prompt asks for, like a model following the template would."""
    prompt = _prompt(body)
    rng = random.Random(prompt)
    last_task = prompt.rsplit("Task:", 1)[-1].split("\n", 1)[0].strip()
    if "Classification" in prompt and "numbered" not in prompt:
        return "Yes" if last_task.startswith("Classify") else "No"
    if "Class label" in prompt:  # output-first instances; the first reply repeats a label on purpose
        body_text = "Positive\nInput: I loved every minute of it.\n\nClass label: Negative\nInput: The service was slow."
        return body_text if body.get("prompt") else "Class label: " + body_text
    if "Example 1" in prompt and "Output:" in prompt:  # input-first instances, one bad (empty output)
        topic = last_task.split(" ", 1)[-1][:40]
        text = (f" A reader who asks about {topic}\nOutput: Here is a short answer about {topic}.\n"
                f"Example 2\nInput: (none)\nOutput: A second answer with more detail.\n"
                f"Example 3\nInput: Something\nOutput:")
        return text if body.get("prompt") else "Example 1\nInput:" + text
    if "Instruction:" in prompt:  # alpaca
        start = len(re.findall(r"^\d+\. Instruction:", prompt, re.M)) + (0 if body.get("prompt") else 1)
        items = []
        for i, t in enumerate(_tasks(rng, 20)):
            n = start + i
            answer = "" if i == 3 else f"An answer to: {t}"  # one task comes back without an answer
            items.append(f"{n}. Instruction: {t}\n{n}. Input:\n<noinput>\n{n}. Output:\n{answer}")
        text = "\n###\n".join(items)
        return text.split("Instruction: ", 1)[1] if body.get("prompt") else text
    # bootstrap: 8 numbered new tasks, plus bad ones the filters must catch
    examples = re.findall(r"^\d+\. (.*)$", prompt, re.M)
    tasks = _tasks(rng, 5) + ["Draw a map of your neighbourhood.", "Write a program that sorts numbers in Python.",
                              "Be kind.", examples[0] if examples else "Repeat this task."]
    rng.shuffle(tasks)
    start = len(examples) + 1
    lines = [f"{start + i}. {t}" for i, t in enumerate(tasks)]
    if body.get("prompt"):  # few-shot: the prompt ends with "9."
        lines[0] = lines[0].split(". ", 1)[1]
    return "Sure, here are more tasks:\n" + "\n".join(lines) if "messages" in body else "\n".join(lines)


def _cfg(**kw) -> SelfInstructConfig:
    return SelfInstructConfig(**{"num_instructions": 12, "requests_per_batch": 2, **kw})


def _llm(srv: LoopbackServer, profile: str = "chat", cache=None):
    return make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", profile=profile,
                                  no_cache=cache is None, cache_path=str(cache) if cache else None, max_retries=1))


def _run(srv, out, cfg, profile="chat", cache=None):
    llm = _llm(srv, profile, cache)
    try:
        return run_self_instruct(SEEDS, out, cfg, llm=llm, progress=False)
    finally:
        run_sync(llm.aclose())


# ------------------------------------------------------------------------------------------- parsing


def test_parse_numbered_list_variants():
    text = "Here you go:\n9. Name three rivers.\n10) **List the planets in order.**\nTask 11: \"Sort these words.\"\n" \
           "12. Explain recursion\n    using a short example.\n\nThanks!"
    assert parse_numbered_list(text) == ["Name three rivers.", "List the planets in order.", "Sort these words.",
                                         "Explain recursion using a short example."]
    # few-shot: the prompt ended with "9." so the reply starts inside item 9
    assert parse_numbered_list(" Name three rivers.\n10. Sort words.", first_number=9) == ["Name three rivers.",
                                                                                           "Sort words."]
    assert parse_numbered_list("no list here") == []


def test_parse_instances_and_yes_no():
    inp = parse_instances("Example 1\nInput: 2+2\nOutput: 4\nExample 2\nInput: (none)\nOutput: Five.", False)
    assert inp == [{"input": "2+2", "output": "4"}, {"input": "", "output": "Five."}]
    out = parse_instances(" Positive\nInput: Great film.\n\nClass label: Negative\nInput: Dull.", True,
                          prompt_ended_with_field=True)
    assert out == [{"input": "Great film.", "output": "Positive"}, {"input": "Dull.", "output": "Negative"}]
    assert parse_yes_no(" Yes.") is True and parse_yes_no("No") is False and parse_yes_no("maybe") is None
    tasks = parse_alpaca_tasks("1. Instruction: Add.\n1. Input:\n2, 3\n1. Output:\n5\n###\n2. Instruction: Greet.\n"
                               "2. Input:\n<noinput>\n2. Output:\nHello!")
    assert tasks == [{"instruction": "Add.", "input": "2, 3", "output": "5"},
                     {"instruction": "Greet.", "input": "", "output": "Hello!"}]


def test_instance_post_filters():
    kept, dropped = filter_instances([{"input": "a", "output": "b"}, {"input": "a", "output": "b"},
                                      {"input": "", "output": ""}, {"input": "x", "output": "x"},
                                      {"input": "y", "output": "Answer:"}])
    assert kept == [{"input": "a", "output": "b"}]
    assert dropped == {"duplicate_instance": 1, "empty_output": 1, "input_equals_output": 1, "incomplete": 1}
    kept, dropped = filter_instances([{"input": "a", "output": "b"}, {"input": "a", "output": "c"}])
    assert kept == [] and dropped == {"conflicting_outputs": 2}


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("profile", ["chat", "fewshot"])
def test_loopback_end_to_end(tmp_path, profile):
    out = tmp_path / "pool.jsonl"
    with LoopbackServer(responder) as srv:
        summary = _run(srv, out, _cfg(), profile)
        kinds = {("messages" in b) for b in srv.requests}
    assert kinds == {profile == "chat"}
    assert summary.details["new_tasks"] == 12 and summary.details["stopped"] == "reached target"
    rej = summary.details["rejected_by_reason"]
    # every planted bad candidate is caught by its own rule
    for reason in ("blacklisted_keyword", "write_a_program", "too_short", "too_similar"):
        assert rej.get(reason, 0) > 0, (reason, rej)
    recs = list(read_records(out))
    assert recs and all(r.lineage.generator == "self_instruct" and r.lineage.template.startswith("si_bootstrap.")
                        and len(r.lineage.parents) == 8 for r in recs)
    seeds = [r.instruction for r in read_records(SEEDS)]
    tasks = {}
    for r in recs:
        tasks.setdefault(r.meta["task_id"], r)
        assert r.output and r.input != r.output
        assert r.task == ("classification" if r.meta["is_classification"] else "generation")
        assert max(rouge_l(r.instruction, s) for s in seeds) <= 0.7
    assert len(tasks) == summary.details["tasks_written"] <= 12
    # classification tasks were asked output-first and got two differently-labelled instances
    cls = [r for r in recs if r.meta["is_classification"]]
    assert all(r.instruction.startswith("Classify") for r in cls)
    assert {r.output for r in cls} <= {"Positive", "Negative"}
    # instance post-filters dropped the planted empty output
    assert summary.details["instances"]["dropped_by_reason"].get("empty_output", 0) > 0
    texts = list(tasks.values())
    for i, a in enumerate(texts):  # the sequential novelty rule holds inside the pool too
        for b in texts[:i]:
            assert rouge_l(a.instruction, b.instruction) <= 0.7
    assert not (tmp_path / "pool.jsonl.partial.jsonl").exists()
    assert summary.out == {"pending": len(recs)} and summary.records_in == len(list(read_records(SEEDS)))


def test_alpaca_variant(tmp_path):
    out = tmp_path / "alpaca.jsonl"
    with LoopbackServer(responder) as srv:
        summary = _run(srv, out, _cfg(variant="alpaca", num_instructions=15, requests_per_batch=1))
    recs = list(read_records(out))
    assert summary.details["new_tasks"] == 15 == len(recs)
    assert all(r.output.startswith("An answer to:") and r.lineage.operation == "alpaca" and r.input == ""
               for r in recs)
    assert all(len(r.lineage.parents) == 3 for r in recs)
    assert summary.details["rejected_by_reason"]["empty_output"] >= 1


class _Interrupt(Exception):
    pass


class _DiesAfter:
    """The real loopback-backed LLM, except that the process 'dies' on the (n+1)-th request (as a kill would)."""

    def __init__(self, llm, n):
        self._llm, self._left = llm, n

    def __getattr__(self, name):
        return getattr(self._llm, name)

    async def generate(self, prompt, params):
        self._left -= 1
        if self._left < 0:
            raise _Interrupt("killed")
        return await self._llm.generate(prompt, params)


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    cfg = _cfg(num_instructions=20)
    with LoopbackServer(responder) as srv:
        _run(srv, full, cfg)
        full_requests = len(srv.requests)
        for dies_after in (5, 13):  # during the bootstrap, then during classification/instances
            llm = _llm(srv)
            with pytest.raises(_Interrupt):
                run_self_instruct(SEEDS, part, cfg, llm=_DiesAfter(llm, dies_after), progress=False)
            run_sync(llm.aclose())
            assert (tmp_path / "part.jsonl.partial.jsonl").exists() and not part.exists()
        entries = [json.loads(l) for l in (tmp_path / "part.jsonl.partial.jsonl").read_text().splitlines()[1:]
                   if '"__spent__"' not in l]  # the interrupted attempts' spending is noted too
        before = len(srv.requests)
        summary = _run(srv, part, cfg)
        asked_on_resume = len(srv.requests) - before
    kinds = {e["kind"] for e in entries}
    assert "batch" in kinds and summary.details["resumed_by_kind"]["batches"] == sum(e["kind"] == "batch" for e in entries)
    assert summary.resumed == len(entries)
    strip = lambda p: [(r.id, r.instruction, r.input, r.output, r.meta["task_id"], r.lineage.parents)  # noqa: E731
                       for r in read_records(p)]
    got = strip(part)
    assert got == strip(full)
    assert len({g[0] for g in got}) == len(got)  # no duplicates
    # journaled work is not asked again (no request cache here, so every request reaches the server)
    journaled = sum(e["requests"] if e["kind"] == "batch" else 1 for e in entries)
    assert asked_on_resume == full_requests - journaled


def test_bad_config_and_journal_mismatch(tmp_path):
    out = tmp_path / "o.jsonl"
    (tmp_path / "o.jsonl.partial.jsonl").write_text(json.dumps({"header": "someone-else"}) + "\n")
    with LoopbackServer(responder) as srv:
        with pytest.raises(Exception, match="other settings"):
            _run(srv, out, _cfg())


# ------------------------------------------------------------------------------------------- embedded model


@needs_shared
@pytest.mark.slow
def test_embedded_smollm2_on_real_seeds(tmp_path, shared_data):
    """The real 135M model (few-shot profile) bootstraps a few new, filtered tasks from the 175 seeds."""
    seeds = shared_data / "self_instruct_seed_tasks.jsonl"
    out = tmp_path / "smol.jsonl"
    cfg = SelfInstructConfig(num_instructions=1, requests_per_batch=1, max_tokens=48, instance_max_tokens=32,
                             max_requests=2, instance_examples=1, cls_examples=4, temperature=0.9, top_p=0.95)
    summary = run_self_instruct(seeds, out, cfg, backend=BackendConfig(backend="local", no_cache=True, n_threads=1),
                                progress=False)
    assert summary.model.startswith("local:") and summary.profile == "fewshot"
    assert summary.details["seed_tasks"] == 175 and summary.details["candidates"] > 0
    assert summary.details["new_tasks"] >= 1, summary
    seed_texts = [r.instruction for r in read_records(seeds)]
    # a task whose instances the 135M model never got right writes no record, so the file may be empty
    d = summary.details
    assert d["tasks_written"] + d["tasks_without_instances"] == d["new_tasks"], d
    new = list(read_records(out)) if out.stat().st_size else []
    assert len({r.instruction for r in new}) == d["tasks_written"]
    for r in new:
        assert 3 < len(r.instruction.split()) <= 150
        assert max(rouge_l(r.instruction, s) for s in seed_texts) <= 0.7


def test_cli_command_writes_pool_and_json_summary(tmp_path):
    from typer.testing import CliRunner

    from dataforge.cli import app

    out = tmp_path / "cli.jsonl"
    with LoopbackServer(responder) as srv:
        res = CliRunner().invoke(app, ["self-instruct", str(SEEDS), "-o", str(out), "-n", "6", "--batch", "2",
                                       "-k", "2", "--base-url", srv.base_url, "--model", "test", "--no-cache",
                                       "--blacklist", "neighbourhood", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["details"]["new_tasks"] == 6 and summary["out"]["pending"] == len(list(read_records(out)))
    assert "blacklisted_keyword" in summary["details"]["rejected_by_reason"]  # the custom list caught 'neighbourhood'
    bad = CliRunner().invoke(app, ["self-instruct", str(SEEDS), "-o", str(out), "--variant", "nope"])
    assert bad.exit_code != 0


def test_keep_rejected_and_include_seeds(tmp_path):
    out = tmp_path / "all.jsonl"
    with LoopbackServer(responder) as srv:
        summary = _run(srv, out, _cfg(num_instructions=6, keep_rejected=True, include_seeds=True))
    recs = list(read_records(out))
    seeds = [r for r in recs if r.lineage.generator == "seed"]
    rejected = [r for r in recs if r.status == "rejected"]
    assert len(seeds) == len(list(read_records(SEEDS)))
    assert len(rejected) == summary.out["rejected"] == sum(summary.details["rejected_by_reason"].values())
    assert summary.out["pending"] == len(recs) - len(rejected)
    similar = [r for r in rejected if r.reasons == ["too_similar"]]
    assert similar and all(r.meta["rouge_l"] > 0.7 and r.meta["detail"] for r in similar)
    assert {r.reasons[0] for r in rejected} >= {"blacklisted_keyword", "write_a_program", "too_short"}

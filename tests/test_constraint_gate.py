"""A constraint stated only in the instruction, found by the parser alone, sends a record that breaks
it to review through the whole gate; and whatever the text, the parser returns valid, checkable specs."""

from __future__ import annotations

from dataforge.quality.constraint_parser import parse_constraints
from dataforge.records import Record


def test_fewer_than_50_words_goes_to_review_through_the_parser_alone(tmp_path):
    from dataforge.io import read_records, write_records
    from dataforge.quality.gate import FilterConfig, run_filter

    response = " ".join(["Canberra was chosen as a compromise between Sydney and Melbourne."] * 8)
    assert len(response.split()) == 80
    rec = Record(instruction="Answer in fewer than 50 words. What is the capital of Australia and why was it chosen?",
                 output=response)
    assert "constraints" not in rec.meta
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [rec])
    run_filter(src, out, FilterConfig(no_llm=True, no_reference=True), progress=False)
    review = list(read_records(f"{out}.review.jsonl"))
    assert len(review) == 1
    fmt = [x for x in review[0].reasons if x.startswith("format:")]
    assert fmt and fmt[0].startswith("format:word_count(") and "80 words" in fmt[0], review[0].reasons


def test_parser_output_is_always_valid_library_specs():
    """Whatever the text, the parser returns specs whose params validate and whose check runs."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from dataforge.constraints import check
    from dataforge.constraints.params import params_model

    pieces = st.sampled_from(["Answer in", "fewer than", "at least", "exactly", "twenty-five", "3", "0", "words",
                              "sentences", "paragraphs", "***", "******", '"hi"', "'x'", "P.S.", "JSON", "lowercase",
                              "the letter q", "times", "in French", "repeat the request", "one of", "(", ")", "?",
                              ".", "\n", "each", "if", "between", "and", "-", "<<t>>", "[name]", "highlight", "*a*"])

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(pieces, max_size=14).map(" ".join))
    def run(text):
        for s in parse_constraints(text):
            params_model(s["type"]).model_validate({k: v for k, v in s["params"].items() if k != "form"})
            if s["type"] != "response_language":
                check(s, "A short answer, with words.")

    run()


def _judge_and_labels(rows):
    """A chat server that answers extraction requests from the labels and the judges' questions plainly."""
    import json

    from dataforge.testing.label_responder import labels_responder

    labels = labels_responder(rows)

    def respond(body):
        text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        if "### End of instruction" in text:
            return labels(body)
        if "score" in json.dumps(body.get("response_format") or {}):
            return '{"score": 4}'
        return "no" if "contradict" in text.lower() else "yes"

    return respond


def test_the_gate_asks_a_chat_model_for_constraints_and_notes_what_only_it_found(tmp_path):
    from dataforge.io import read_records, write_records
    from dataforge.llm import BackendConfig, make_llm, run_sync
    from dataforge.quality.gate import FilterConfig, run_filter
    from dataforge.testing.loopback import LoopbackServer

    ins = "Describe owls in a line that fits on a sticky note. Answer in fewer than 50 words."
    rows = [{"instruction": ins, "constraints": [["char_count", {"relation": "at_most", "n": 40}],
                                                 ["word_count", {"relation": "at_most", "n": 49}]]}]
    rec = Record(instruction=ins, output="Owls are nocturnal birds of prey with silent flight and keen eyes.")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(src, [rec])
    with LoopbackServer(_judge_and_labels(rows)) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="judge", no_cache=True))
        summary = run_filter(src, out, FilterConfig(judges="on", refine_rounds=0, no_reference=True), llm=llm,
                             progress=False)
        run_sync(llm.aclose())
    assert summary.details["constraint_extraction"] == {"requests": 1, "failures": {}}
    (got,) = list(read_records(f"{out}.review.jsonl"))
    assert any(x.startswith("format:char_count(66 characters, wanted at most 40)") for x in got.reasons), got.reasons
    assert 'constraint_extraction:model_only:char_count({"n": 40, "relation": "at_most"})' in got.reasons


def test_extraction_on_without_a_chat_model_is_refused(tmp_path):
    import pytest

    from dataforge.errors import DataforgeError
    from dataforge.io import write_records
    from dataforge.quality.gate import FilterConfig, run_filter

    src = tmp_path / "in.jsonl"
    write_records(src, [Record(instruction="Say hi.", output="Hi.")])
    with pytest.raises(DataforgeError, match="needs model judges on a chat model"):
        run_filter(src, tmp_path / "o.jsonl", FilterConfig(no_llm=True, extract_constraints="on"), progress=False)

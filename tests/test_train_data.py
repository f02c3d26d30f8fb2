"""Trainer data path: prompt formats, segment ids, label placement, packing, batching, instruction masking."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from dataforge.records import Record  # noqa: E402
from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.data import (IGNORE, SEG_INPUT, SEG_INSTRUCTION, SEG_RESPONSE, PromptFormatter,  # noqa: E402
                                  TaskInfo, collate, encode_records, mask_instruction, pack, padding_fraction,
                                  plan_rows, split_eval)
from dataforge.train.model import add_inst_tokens  # noqa: E402
from dataforge.train.tiny import tiny_tokenizer, toy_records  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CFG = TrainConfig()
TASKS = TaskInfo(["classification", "generation", "math"], CFG.task_kinds, CFG.temperature_by_kind)


@pytest.fixture(scope="module", params=["chat", "inst", "inst+tokens"])
def formatter(request):
    tok = tiny_tokenizer(chat_template=request.param == "chat")
    if request.param == "inst+tokens":
        add_inst_tokens(tok)
    return PromptFormatter(tok, "auto", inst_tokens=request.param == "inst+tokens", max_length=256)


def test_labels_sit_exactly_on_the_response(formatter):
    recs = toy_records(9)
    exs = encode_records(recs, formatter, TASKS, {})
    assert len(exs) == len(recs)
    tok = formatter.tok
    for r, e in zip(recs, exs):
        learned = [i for i, flag in zip(e.input_ids, e.learn) if flag]
        text = tok.decode(learned, skip_special_tokens=True)
        assert text.strip().startswith(r.output), (text, r.output)
        # every labelled token is a response token and every prompt token is unlabelled
        assert all((s == SEG_RESPONSE) == flag for s, flag in zip(e.segments, e.learn))
        inst = tok.decode([i for i, s in zip(e.input_ids, e.segments) if s == SEG_INSTRUCTION])
        assert inst.strip() == r.instruction
        if r.input:
            assert tok.decode([i for i, s in zip(e.input_ids, e.segments) if s == SEG_INPUT]).strip() == r.input
        assert e.input_ids[len(e) - 1] == tok.eos_token_id or tok.decode(e.input_ids[-2:]).strip().startswith("</s>")


def test_no_label_on_padding_or_prompt(formatter):
    exs = encode_records(toy_records(6), formatter, TASKS, {})
    b = collate([[e] for e in exs], pad_id=0)
    pad = b["sample_idx"] < 0
    assert pad.any()                                        # the batch really has padding
    assert (b["resp_labels"][pad] == IGNORE).all() and (b["lm_labels"][pad] == IGNORE).all()
    prompt = (b["segment_ids"] != SEG_RESPONSE) & ~pad
    assert (b["resp_labels"][prompt] == IGNORE).all()
    resp = (b["segment_ids"] == SEG_RESPONSE)
    assert (b["resp_labels"][resp] != IGNORE).all()


def test_inst_tokens_are_single_special_tokens():
    tok = tiny_tokenizer()
    ids = add_inst_tokens(tok)
    fmt = PromptFormatter(tok, "inst", inst_tokens=True)
    e = fmt.encode(Record(instruction="Add the numbers", input="1 2", output="3"))
    assert e.input_ids.count(ids[0]) == 1 and e.input_ids.count(ids[1]) == 1


def test_packing_keeps_samples_apart():
    tok = tiny_tokenizer()
    exs = encode_records(toy_records(30), PromptFormatter(tok, "inst"), TASKS, {})
    rows = pack([len(e) for e in exs], 128)
    assert sorted(i for r in rows for i in r) == list(range(len(exs)))
    assert all(sum(len(exs[i]) for i in r) <= 128 for r in rows)
    b = collate([[exs[i] for i in r] for r in rows], pad_id=0)
    starts = (b["position_ids"] == 0) & (b["sample_idx"] >= 0)
    assert int(starts.sum()) == len(exs)                   # positions restart at every sample
    assert (b["lm_labels"][starts] == IGNORE).all()          # nobody predicts the next sample's first token
    assert b["sample_idx"].max() == len(exs) - 1


def test_packing_cuts_padding_below_5_percent():
    tok = tiny_tokenizer()
    exs = encode_records(toy_records(300), PromptFormatter(tok, "inst"), TASKS, {})
    cfg = dict(group_by_length=False, capacity=512, batch_size=8, seed=0, epoch=0)
    packed = [collate([[exs[i] for i in r] for r in batch], 0) for batch in plan_rows(exs, packing=True, **cfg)]
    plain = [collate([[exs[i] for i in r] for r in batch], 0) for batch in plan_rows(exs, packing=False, **cfg)]
    assert padding_fraction(packed) < 0.05 < padding_fraction(plain)


def test_length_grouping_reduces_padding():
    tok = tiny_tokenizer()
    exs = encode_records(toy_records(200), PromptFormatter(tok, "inst"), TASKS, {})
    cfg = dict(packing=False, capacity=256, batch_size=8, seed=1, epoch=0)
    grouped = [collate([[exs[i] for i in r] for r in b], 0) for b in plan_rows(exs, group_by_length=True, **cfg)]
    mixed = [collate([[exs[i] for i in r] for r in b], 0) for b in plan_rows(exs, group_by_length=False, **cfg)]
    assert padding_fraction(grouped) < padding_fraction(mixed)
    assert sorted(i for b in plan_rows(exs, group_by_length=True, **cfg) for r in b for i in r) == list(range(200))


def test_instruction_masking_touches_only_instruction_tokens():
    tok = tiny_tokenizer()
    e = PromptFormatter(tok, "inst").encode(toy_records(3)[0])
    n_inst = e.segments.count(SEG_INSTRUCTION)
    masked = mask_instruction(e, 0.5, "mask", 3, random.Random(0))
    changed = [i for i in range(len(e)) if masked.input_ids[i] != e.input_ids[i]]
    assert changed and all(e.segments[i] == SEG_INSTRUCTION and masked.input_ids[i] == 3 for i in changed)
    b = collate([[masked]], pad_id=0)
    assert (b["lm_labels"][0, changed] == IGNORE).all() and (b["input_ids"][0, changed] == 3).all()
    dropped = mask_instruction(e, 0.99, "drop", 3, random.Random(0))
    assert dropped.segments.count(SEG_INSTRUCTION) == 1 and len(dropped) == len(e) - (n_inst - 1)
    assert [s for s in dropped.segments if s != SEG_INSTRUCTION] == [s for s in e.segments if s != SEG_INSTRUCTION]
    assert mask_instruction(e, 0.0, "mask", 3, random.Random(0)) is e


def test_long_prompts_are_dropped_with_a_reason():
    tok = tiny_tokenizer()
    fmt = PromptFormatter(tok, "inst", max_length=32)
    drops: dict[str, int] = {}
    long = Record(instruction="word " * 200, output="ok")
    short = Record(instruction="Add", output="the result is " * 50)
    exs = encode_records([long, short, Record(instruction="x", output="")], fmt, TASKS, drops)
    assert drops == {"prompt_too_long": 1, "empty_output": 1}
    assert len(exs) == 1 and len(exs[0]) == 32 and any(exs[0].learn)


def test_eval_split_is_stable_under_reordering():
    recs = toy_records(100)
    tr1, ev1 = split_eval(recs, 0.1, 50)
    tr2, ev2 = split_eval(list(reversed(recs)), 0.1, 50)
    assert {r.id for r in ev1} == {r.id for r in ev2} and len(ev1) == 10
    assert not {r.id for r in ev1} & {r.id for r in tr1}


def test_surrounding_whitespace_does_not_break_the_spans():
    tok = tiny_tokenizer(chat_template=True)
    tok.chat_template = tok.chat_template.replace("{{ m['content'] }}", "{{ m['content'] | trim }}")
    e = PromptFormatter(tok, "chat").encode(Record(instruction="  Add the numbers \n", input=" 1 2 ", output=" 3\n"))
    assert tok.decode([i for i, f in zip(e.input_ids, e.learn) if f], skip_special_tokens=True).strip() == "3"
    assert tok.decode([i for i, s in zip(e.input_ids, e.segments) if s == SEG_INSTRUCTION]) == "Add the numbers"


# ------------------------------------------------------------------------------------ conversations

def _labelled_runs(e) -> list[list[int]]:
    """The token ids of each maximal run of labelled positions."""
    runs, cur = [], []
    for tok_id, flag in zip(e.input_ids, e.learn):
        if flag:
            cur.append(tok_id)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


CONVO = Record(instruction="Add the numbers", input="1 2", output="The result is 3",
               turns=[{"role": "user", "content": "Now add one more"}, {"role": "assistant", "content": "The result is 4"},
                      {"role": "user", "content": "And one more?"}, {"role": "assistant", "content": "five"}])


def _check_conversation_labels(fmt: PromptFormatter, ends: tuple[str, ...]) -> None:
    e = fmt.encode(CONVO)
    runs = [fmt.tok.decode(run) for run in _labelled_runs(e)]
    answers = ["The result is 3", "The result is 4", "five"]
    assert len(runs) == 3, runs
    for run, answer in zip(runs, answers):
        assert run.lstrip().startswith(answer) and run.lstrip()[len(answer):] in ends, (run, answer)
    # nothing of a user or system message carries a label, and later user turns are instruction segments
    for i, (tok_id, flag, seg) in enumerate(zip(e.input_ids, e.learn, e.segments)):
        assert flag == (seg == SEG_RESPONSE)
    unlabelled = fmt.tok.decode([t for t, f in zip(e.input_ids, e.learn) if not f])
    assert "Now add one more" in unlabelled and "And one more?" in unlabelled and "The result" not in unlabelled
    follow_ups = fmt.tok.decode([t for t, s in zip(e.input_ids, e.segments) if s == SEG_INSTRUCTION])
    assert "Now add one more" in follow_ups and "And one more?" in follow_ups
    b = collate([[e]], pad_id=0)
    labelled = (b["resp_labels"][0] != IGNORE).nonzero().flatten().tolist()
    assert labelled == [i for i, f in enumerate(e.learn) if f and i > 0]


def test_labels_on_every_answer_of_a_conversation_and_none_on_user_turns(formatter):
    ends = ("</s>\n", "</s>") if formatter.fmt == "chat" else ("</s>",)
    _check_conversation_labels(formatter, ends)


@pytest.mark.slow
def test_labels_on_every_answer_with_smollm2s_real_chat_template():
    from transformers import AutoTokenizer

    from dataforge.train.smollm2 import smollm2_gguf_path

    path = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    fmt = PromptFormatter(tok, "auto", max_length=512)
    assert fmt.fmt == "chat"
    _check_conversation_labels(fmt, ("<|im_end|>\n",))
    # the default system prompt SmolLM2's template adds is never labelled
    e = fmt.encode(CONVO)
    assert "You are a helpful AI assistant" in tok.decode([t for t, f in zip(e.input_ids, e.learn) if not f])


def test_a_template_that_renders_a_conversation_start_differently_is_refused():
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}<|last|>{% endif %}<|{{ m['role'] }}|>\n"
                         "{{ m['content'] }}</s>\n{% endfor %}")
    fmt = PromptFormatter(tok, "chat", max_length=256)
    with pytest.raises(ValueError, match="renders the start of a conversation differently"):
        fmt.encode(CONVO)
    assert fmt.encode(Record(instruction="Add the numbers", output="3")).learn[-1]  # one exchange needs no prefix
    drops: dict[str, int] = {}
    assert encode_records([CONVO], fmt, TASKS, drops) == [] and len(drops) == 1

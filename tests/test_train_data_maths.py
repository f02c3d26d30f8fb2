"""Hand-computed expectations for train/data.py: exact texts, spans, labels, bins, batches and tensors.

Written against the survivors of a mutation run: each test pins a value that a plausible slip in the code
(an off-by-one, a lost default, a swapped operator) would change.
"""

from __future__ import annotations

import math
import random

import pytest

torch = pytest.importorskip("torch")

from dataforge.errors import DataforgeError  # noqa: E402
from dataforge.records import Record, Turn  # noqa: E402
from dataforge.train.data import (IGNORE, SEG_INPUT, SEG_INSTRUCTION, SEG_RESPONSE, SEG_TEMPLATE, Example,  # noqa: E402
                                  PromptFormatter, TaskInfo, collate, encode_records, mask_instruction, pack,
                                  padding_fraction, plan_rows, split_eval)
from dataforge.train.tiny import tiny_tokenizer  # noqa: E402

BARE = "{% for m in messages %}{{ m['content'] }}{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}"


def _tok(template: str | None = None, chat: bool = False):
    tok = tiny_tokenizer(chat_template=chat)
    if template is not None:
        tok.chat_template = template
    return tok


def _ex(ids, segs=None, learn=None, **kw) -> Example:
    n = len(ids)
    return Example(list(ids), list(segs or [SEG_TEMPLATE] * n), list(learn or [False] * n), **kw)


# ----------------------------------------------------------------------------------------- formatter


def test_format_is_picked_from_the_tokenizer_unless_asked():
    plain, chat = _tok(), _tok(chat=True)
    assert PromptFormatter(plain).fmt == "inst" and PromptFormatter(chat).fmt == "chat"
    assert PromptFormatter(chat, "inst").fmt == "inst"
    with pytest.raises(DataforgeError, match=r"^prompt_format 'chat' asked for, but the tokenizer has no chat "
                                             r"template$"):
        PromptFormatter(plain, "chat")

    class NoTemplateAttribute:                    # a tokenizer class without the attribute at all
        pass

    assert PromptFormatter(NoTemplateAttribute()).fmt == "inst"


def test_inst_text_and_spans_exactly():
    fmt = PromptFormatter(_tok())
    text, spans, answers = fmt.full_text(Record(instruction=" Add two ", input="1 2", output="3"))
    assert text == "<s>[INST] Add two\n\n1 2 [/INST] 3</s>"
    assert spans == [(10, 17, SEG_INSTRUCTION), (19, 22, SEG_INPUT)]
    assert answers == [(31, 36)]
    assert text[10:17] == "Add two" and text[19:22] == "1 2" and text[31:36] == "3</s>"


def test_inst_text_of_a_conversation_exactly():
    fmt = PromptFormatter(_tok())
    r = Record(instruction="Add", output="3", turns=[Turn(role="user", content="Double"),
                                                       Turn(role="assistant", content="6")])
    text, spans, answers = fmt.full_text(r)
    assert text == "<s>[INST] Add [/INST] 3</s>[INST] Double [/INST] 6</s>"
    assert spans == [(10, 13, SEG_INSTRUCTION), (13, 13, SEG_INPUT), (34, 40, SEG_INSTRUCTION)]
    assert answers == [(22, 27), (49, 54)]
    assert text[34:40] == "Double" and text[22:27] == "3</s>" and text[49:54] == "6</s>"


def test_inst_text_without_bos_or_eos_tokens():
    tok = _tok()
    tok.bos_token = None
    tok.eos_token = None
    text, _, answers = PromptFormatter(tok, "inst").full_text(Record(instruction="Add", output="3"))
    assert text == "[INST] Add [/INST] 3" and answers == [(19, 20)]


def test_chat_text_exactly_and_inst_tokens_only_when_asked():
    tok = _tok(chat=True)
    r = Record(instruction="Add two", input="1 2", output="3")
    text, spans, answers = PromptFormatter(tok).full_text(r)
    assert text == "<|user|>\nAdd two\n\n1 2</s>\n<|assistant|>\n3</s>\n"
    assert spans == [(9, 16, SEG_INSTRUCTION), (18, 21, SEG_INPUT)] and answers == [(40, 46)]
    text, spans, _ = PromptFormatter(tok, inst_tokens=True).full_text(r)
    assert text == "<|user|>\n[INST] Add two\n\n1 2 [/INST]</s>\n<|assistant|>\n3</s>\n"
    assert text[spans[0][0]: spans[0][1]] == "Add two" and text[spans[1][0]: spans[1][1]] == "1 2"


def test_chat_text_with_content_at_position_zero_and_no_end_of_turn():
    """A bare template: the first message starts the text and nothing follows the last answer."""
    fmt = PromptFormatter(_tok(BARE))
    r = Record(instruction="one", output="one two", turns=[Turn(role="user", content="one"),
                                                           Turn(role="assistant", content="two")])
    text, spans, answers = fmt._chat_text("one", "one two", [("user", "one"), ("assistant", "two")])
    assert text == "one\none two\none\ntwo"
    assert spans == [(0, 3, SEG_INSTRUCTION), (12, 15, SEG_INSTRUCTION)]
    assert answers == [(4, 11), (16, 19)]             # the first answer ends where its render ends
    assert fmt.full_text(r)[2] == answers
    assert fmt.stop_ids() == {tok_eos(fmt)}            # nothing after the answer: only end-of-text


def tok_eos(fmt: PromptFormatter) -> int:
    return fmt.tok.eos_token_id


def test_chat_answer_before_a_trailing_user_turn_ends_at_its_render():
    fmt = PromptFormatter(_tok(chat=True))
    text, spans, answers = fmt._chat_text("Hi", "Yo", [("user", "More")])
    assert text == "<|user|>\nHi</s>\n<|assistant|>\nYo</s>\n<|user|>\nMore</s>\n"
    assert answers == [(30, 37)] and text[30:37] == "Yo</s>\n"
    assert spans == [(9, 11, SEG_INSTRUCTION), (46, 50, SEG_INSTRUCTION)]


def test_chat_template_errors_name_the_problem():
    fmt = PromptFormatter(_tok("{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}"))
    with pytest.raises(ValueError, match=r"^chat template changed the message text$"):
        fmt.full_text(Record(instruction="add", output="three"))
    fmt = PromptFormatter(_tok("{% for m in messages %}{% if loop.last %}!{% endif %}{{ m['content'] }}\n"
                               "{% endfor %}"))
    with pytest.raises(ValueError, match=r"^chat template renders the start of a conversation differently$"):
        fmt._chat_text("a", "b", [("user", "c"), ("assistant", "d")])


def test_an_answer_merged_into_the_template_token_before_it_is_refused():
    """'assistant' + 'e' tokenises as ..., 'an', 'te': no token starts inside the answer, nothing to learn."""
    tok = _tok("{% for m in messages %}{{ m['role'] }}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match=r"^no response tokens$"):
        PromptFormatter(tok).encode(Record(instruction="Hi", output="e"))


def test_a_one_letter_answer_after_a_space_is_learned():
    tok = _tok()
    fmt = PromptFormatter(tok)
    ids, segs, learn, offsets, first = fmt._tokens(Record(instruction="Write", output="a"))
    text = fmt.full_text(Record(instruction="Write", output="a"))[0]
    assert text == "<s>[INST] Write [/INST] a</s>" and first == 24
    learned = [i for i, f in zip(ids, learn) if f]
    assert tok.decode(learned).strip() == "a</s>"
    assert all(s == SEG_RESPONSE for s, f in zip(segs, learn) if f)


def test_no_special_tokens_are_added_by_the_tokenizer_call():
    from tokenizers import processors

    tok = _tok()
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert tok("x")["input_ids"][0] == bos          # the tokenizer does add one by default
    e = PromptFormatter(tok).encode(Record(instruction="Add", output="3"))
    assert e.input_ids.count(bos) == 1 and e.input_ids[0] == bos


def test_prompt_too_long_boundary_and_record_id():
    tok = _tok()
    r = Record(instruction="Add the two numbers", output="3")
    first = PromptFormatter(tok)._tokens(r)[2].index(True)
    with pytest.raises(ValueError, match="prompt_too_long"):
        PromptFormatter(tok, max_length=first + 1).encode(r)
    e = PromptFormatter(tok, max_length=first + 2).encode(r)
    assert len(e) == first + 2 and e.learn[first] and e.record_id == r.id != ""


def test_default_max_length_is_512():
    tok = _tok()
    e = PromptFormatter(tok).encode(Record(instruction="Count", output="one two three " * 200))
    assert len(e) == 512


def test_generation_prompt_without_input():
    tok = _tok()
    ids, segs = PromptFormatter(tok).encode_prompt("Add two")
    assert tok.decode(ids) == "<s>[INST] Add two [/INST]"
    assert SEG_INPUT not in segs and SEG_INSTRUCTION in segs


def test_generation_prompt_stops_where_any_answer_could_merge_into_the_template():
    """The header ' l' merges with an answer starting 't' ('lt'), not with 'C' or '4': the prompt ends before 'l'."""
    tok = _tok("{% for m in messages %}{% if m['role'] == 'assistant' %} l{% endif %}{{ m['content'] }}{% endfor %}")
    fmt = PromptFormatter(tok)
    ids, segs = fmt.encode_prompt("Hi")
    assert tok.convert_ids_to_tokens(ids) == ["H", "i", "\u0120"] and segs == [SEG_INSTRUCTION] * 2 + [SEG_TEMPLATE]
    for answer in ("Certainly", "the", "42", "then"):
        assert fmt.encode(Record(instruction="Hi", output=answer)).input_ids[:3] == ids


def test_stop_ids_include_a_special_end_of_turn_token_that_is_not_a_named_special():
    from tokenizers import AddedToken

    tok = _tok("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}")
    tok.add_tokens([AddedToken("<|end|>", special=True)])
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end not in tok.all_special_ids
    assert PromptFormatter(tok).stop_ids() == {tok.eos_token_id, end}


# ------------------------------------------------------------------------------------- records, tasks


def test_temperature_looks_up_the_task_kind_by_normalised_name():
    info = TaskInfo(tasks=["Open QA"], kinds={"open_qa": "open"}, temps={"open": 0.9})
    assert info.temperature("  Open QA ") == 0.9
    assert math.isnan(info.temperature(None)) and math.isnan(info.temperature("math"))
    blank = TaskInfo(kinds={"": "open"}, temps={"open": 0.9})
    assert blank.temperature(None) == 0.9 and math.isnan(blank.temperature("XXXX"))  # no task is the empty name


def test_encode_records_counts_every_drop_and_keeps_going():
    tok = _tok("{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}")
    fmt = PromptFormatter(tok, "chat")
    recs = [Record(instruction="a", output=" "), Record(instruction="b", output=""),
            Record(instruction="c", output="x"), Record(instruction="d", output="y")]
    drops: dict[str, int] = {}
    assert encode_records(recs, fmt, TaskInfo(), drops) == []
    assert drops == {"empty_output": 2, "chat_template_changed_the_message_text": 2}

    fmt = PromptFormatter(_tok())
    info = TaskInfo(tasks=["math", "qa"], kinds={"qa": "open"}, temps={"open": 0.7})
    recs = [Record(instruction="a", output=""), Record(instruction="Add", output="3", task="qa", complexity=5),
            Record(instruction="Sub", output="1", task="math")]
    drops = {}
    out = encode_records(recs, fmt, info, drops)
    assert drops == {"empty_output": 1}
    assert [(e.task_id, e.complexity) for e in out] == [(1, 0.5), (0, 0.0)]
    assert out[0].temp_target == 0.7 and math.isnan(out[1].temp_target)


# --------------------------------------------------------------------------------------------- packing


def test_pack_best_fit_decreasing_exactly():
    assert pack([1, 3], 4) == [[1, 0]]                       # longest first
    assert pack([3, 2], 5) == [[0, 1]]                       # an exact fit goes into the open bin
    assert pack([3, 1], 4) == [[0, 1]]                       # a room of one still takes a 1-token sample
    assert pack([2, 2, 2], 4, order=[2, 0, 1]) == [[2, 0], [1]]   # ties follow the given order
    assert pack([2, 2, 2], 4) == [[0, 1], [2]]


def test_plan_rows_packed_rows_sorted_by_fill_and_batched():
    exs = [_ex(range(n)) for n in (2, 4, 3, 1)]
    # bins: [1] (4), [2, 3] (3+1), [0] (2): sorted by fill, then two rows per batch
    plan = plan_rows(exs, packing=True, group_by_length=False, capacity=4, batch_size=2, seed=0, epoch=0,
                     shuffle=False)
    assert plan == [[[1], [2, 3]], [[0]]]


def test_plan_rows_plain_batches_in_order():
    exs = [_ex([1]) for _ in range(5)]
    plan = plan_rows(exs, packing=False, group_by_length=False, capacity=4, batch_size=2, seed=0, epoch=0,
                     shuffle=False)
    assert plan == [[[0], [1]], [[2], [3]], [[4]]]


def test_plan_rows_shuffles_by_default_with_the_seeded_rng():
    exs = [_ex([1]) for _ in range(8)]
    rng = random.Random("3:plan:1")
    order = list(range(8))
    rng.shuffle(order)
    plan = plan_rows(exs, packing=False, group_by_length=False, capacity=4, batch_size=3, seed=3, epoch=1)
    assert plan == [[[i] for i in order[k: k + 3]] for k in (0, 3, 6)]
    assert order != list(range(8))


def test_plan_rows_packing_uses_the_shuffled_order_for_ties():
    exs = [_ex([1]) for _ in range(6)]
    rng = random.Random("5:plan:2")
    order = list(range(6))
    rng.shuffle(order)
    rows = [order[0:2], order[2:4], order[4:6]]             # equal lengths: pairs in shuffled order
    rng.shuffle(rows)                                        # one row per batch, batches shuffled
    plan = plan_rows(exs, packing=True, group_by_length=False, capacity=2, batch_size=1, seed=5, epoch=2)
    assert plan == [[r] for r in rows]
    assert sorted(map(sorted, rows)) != [[0, 1], [2, 3], [4, 5]]   # the order really mattered


def test_plan_rows_groups_by_length_within_chunks_of_32_batches():
    exs = [_ex(range(40 - i)) for i in range(40)]            # example i has 40 - i tokens
    plan = plan_rows(exs, packing=False, group_by_length=True, capacity=64, batch_size=1, seed=0, epoch=0,
                     shuffle=False)
    assert plan == [[[i]] for i in [*range(31, -1, -1), *range(39, 31, -1)]]


def test_mask_instruction_mask_and_drop_modes():
    ex = _ex([10, 11, 12, 13], [SEG_TEMPLATE, SEG_INSTRUCTION, SEG_INSTRUCTION, SEG_RESPONSE],
             [False, False, False, True])
    m = mask_instruction(ex, 1.0, "mask", 99, random.Random(0))
    assert m.input_ids == [10, 99, 99, 13] and m.masked == [False, True, True, False]
    d = mask_instruction(ex, 1.0, "drop", 99, random.Random(0))
    assert d.input_ids == [10, 12, 13] and d.segments == [SEG_TEMPLATE, SEG_INSTRUCTION, SEG_RESPONSE]
    assert d.learn == [False, False, True]
    one = _ex([10, 11, 13], [SEG_TEMPLATE, SEG_INSTRUCTION, SEG_RESPONSE], [False, False, True])
    kept = mask_instruction(one, 1.0, "drop", 99, random.Random(0))
    assert kept.input_ids == [10, 11, 13] and kept.learn == [False, False, True]


# -------------------------------------------------------------------------------------------- collate


def test_collate_every_tensor_exactly():
    a = _ex([5, 6, 7], [SEG_INSTRUCTION, SEG_TEMPLATE, SEG_RESPONSE], [True, True, True],
            task_id=1, complexity=1, temp_target=1)
    b = _ex([8, 9], [SEG_TEMPLATE, SEG_RESPONSE], [False, True], task_id=IGNORE, complexity=0, temp_target=0)
    c = _ex([4, 3], [SEG_TEMPLATE, SEG_RESPONSE], [False, True], masked=[False, True], complexity=0, temp_target=2)
    # every per-sample value an int: the float tensors must still be float32
    out = collate([[a, b], [c]], pad_id=0)
    X = IGNORE
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 3, 0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 0, 0]]
    assert out["segment_ids"].tolist() == [[2, 1, 4, 1, 4], [1, 4, 0, 0, 0]]
    assert out["sample_idx"].tolist() == [[0, 0, 0, 1, 1], [2, 2, -1, -1, -1]]
    assert out["lm_labels"].tolist() == [[X, 6, 7, X, 9], [X, X, X, X, X]]
    assert out["resp_labels"].tolist() == [[X, 6, 7, X, 9], [X, 3, X, X, X]]
    # a: after its instruction at 0; b and c have none, so every token of theirs counts as after
    assert out["after_inst"].tolist() == [[False, True, True, True, True], [True, True, False, False, False]]
    assert out["task_ids"].tolist() == [1, IGNORE, IGNORE]
    assert out["complexity"].tolist() == [1.0, 0.0, 0.0] and out["temp_target"].tolist() == [1.0, 0.0, 2.0]
    assert out["task_ids"].dtype == torch.long
    assert out["complexity"].dtype == out["temp_target"].dtype == torch.float32
    assert out["after_inst"].dtype == torch.bool


def test_collate_pads_to_the_asked_length_and_handles_an_empty_batch():
    out = collate([[_ex([5, 6], learn=[False, True])]], pad_id=7, pad_to=4)
    assert out["input_ids"].tolist() == [[5, 6, 7, 7]] and out["sample_idx"].tolist() == [[0, 0, -1, -1]]
    empty = collate([[]], pad_id=0)
    assert empty["input_ids"].shape == (1, 0)
    assert empty["task_ids"].dtype == torch.long and empty["complexity"].dtype == torch.float32


def test_padding_fraction_exactly():
    b1 = {"sample_idx": torch.tensor([[0, 0, -1], [1, -1, -1]])}
    b2 = {"sample_idx": torch.tensor([[0, 1]])}
    assert padding_fraction([b1, b2]) == 3 / 8
    assert padding_fraction([]) == 0.0


def test_split_eval_sizes_and_thresholds():
    recs = [Record(id=f"r{i}", instruction=f"q{i}", output="a") for i in range(10)]
    assert split_eval(recs, 0.0, 5) == (recs, [])
    four = recs[:4]
    train, held = split_eval(four, 0.5, 5)
    assert len(held) == 2 and len(train) == 2 and {r.id for r in train + held} == {r.id for r in four}
    assert len(split_eval(four, 0.1, 5)[1]) == 1              # at least one, floor(0.4) = 0
    assert split_eval(recs[:3], 0.5, 5) == (recs[:3], [])
    assert len(split_eval(recs, 0.5, 2)[1]) == 2

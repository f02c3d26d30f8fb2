"""Records -> token ids, segment ids and labels; packing; batching; instruction masking.

Every token carries a *segment* (template scaffolding, instruction, input content, response) found from
character offsets, so a change of chat template can never silently move the labels: labels sit exactly on
the tokens whose first visible character belongs to the response (end-of-turn tokens included).

Prompt format: the tokenizer's chat template when it has one, otherwise (documented in the README)
``{bos}[INST] {instruction}\\n\\n{input} [/INST] {output}{eos}``.

Packing puts several samples in one row without letting them see each other: each token also carries the
index of its sample; the model turns that into a block-diagonal causal mask and the position ids restart
at 0 for every sample. The first token of every sample gets no label, so no sample predicts its neighbour.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import torch

from ..records import Record

SEG_PAD, SEG_TEMPLATE, SEG_INSTRUCTION, SEG_INPUT, SEG_RESPONSE = 0, 1, 2, 3, 4
NUM_SEGMENTS = 5
IGNORE = -100
INST_OPEN, INST_CLOSE = "[INST]", "[/INST]"
#: the token instruction masking puts in place of a masked instruction token (added like [INST]: special,
#: never split, never predicted), so masking never reuses a token with a meaning such as end-of-text
MASK_TOKEN = "<|dataforge_mask|>"
#: stand in for the answer when rendering training texts to cut a generation prompt out of them: words
#: that BPE merges with the space before them and words it does not
_PLACEHOLDERS = ("Certainly", "the", "42")
_PLACEHOLDER = _PLACEHOLDERS[0]


@dataclass
class Example:
    """One tokenised record."""

    input_ids: list[int]
    segments: list[int]
    learn: list[bool]                      # True where the response label sits
    task_id: int = IGNORE                  # index into the run's task list (IGNORE: no task)
    complexity: float = 0.0                # record.complexity / 10 (0 when unknown)
    temp_target: float = float("nan")      # target temperature (nan: task kind unknown)
    record_id: str = ""
    masked: list[bool] | None = None       # instruction tokens replaced by the mask token (no LM target there)

    def __len__(self) -> int:
        return len(self.input_ids)


class PromptFormatter:
    """Renders a record as text with character spans per segment, then tokenises with offsets."""

    def __init__(self, tokenizer, fmt: str = "auto", inst_tokens: bool = False, max_length: int = 512):
        self.tok = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.fmt = ("chat" if has_template else "inst") if fmt == "auto" else fmt
        if self.fmt == "chat" and not has_template:
            from ..errors import DataforgeError

            raise DataforgeError("prompt_format 'chat' asked for, but the tokenizer has no chat template")
        self.inst_tokens = inst_tokens
        self.max_length = max_length

    # -- text ---------------------------------------------------------------------------------------
    def _user_text(self, instruction: str, input: str) -> tuple[str, int, int, int, int]:
        """User message text and the (start, end) of the instruction and of the input inside it.

        Texts are stripped first: chat templates that trim content would otherwise hide the spans."""
        instruction, input = instruction.strip(), input.strip()
        head = f"{INST_OPEN} " if (self.inst_tokens or self.fmt == "inst") else ""
        tail = f" {INST_CLOSE}" if (self.inst_tokens or self.fmt == "inst") else ""
        text = head + instruction
        i0, i1 = len(head), len(head) + len(instruction)
        j0 = j1 = len(text)
        if input:
            text += "\n\n"
            j0 = len(text)
            text += input
            j1 = len(text)
        return text + tail, i0, i1, j0, j1

    def full_text(self, r: Record) -> tuple[str, list[tuple[int, int, int]], list[tuple[int, int]]]:
        """Prompt + every answer as text, segment spans, and the character range of each answer.

        An answer's range runs from its first character to where the next message starts (the end of the
        text for the last one), so its end-of-turn tokens are learned and the next user header is not. A
        conversation's later user turns are instruction segments."""
        user, i0, i1, j0, j1 = self._user_text(r.instruction, r.input)
        later = [(t.role, t.content.strip()) for t in r.turns]
        if self.fmt == "chat":
            text, user_spans, answers = self._chat_text(user, r.output.strip(), later)
            at, later_spans = user_spans[0][0], user_spans[1:]
        else:
            bos, eos = self.tok.bos_token or "", self.tok.eos_token or ""
            text, at = f"{bos}{user} ", len(bos)
            later_spans, answers = [], []
            for role, content in [("assistant", r.output.strip()), *later]:
                if role == "user":
                    follow, f0, f1, _, _ = self._user_text(content, "")
                    later_spans.append((len(text) + f0, len(text) + f1, SEG_INSTRUCTION))
                    text += follow + " "
                else:
                    answers.append((len(text), len(text) + len(content) + len(eos)))
                    text += content + eos
        return text, [(at + i0, at + i1, SEG_INSTRUCTION), (at + j0, at + j1, SEG_INPUT), *later_spans], answers

    def _chat_text(self, user: str, output: str, later: list[tuple[str, str]]
                   ) -> tuple[str, list[tuple[int, int, int]], list[tuple[int, int]]]:
        """The conversation through the chat template; every message found in the text, each answer's end
        found by rendering the conversation up to it (a template that renders a beginning differently from
        the whole is refused: the labels could not be placed)."""
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output},
                *({"role": role, "content": content} for role, content in later)]
        text = self.tok.apply_chat_template(msgs, tokenize=False)
        spans: list[tuple[int, int, int]] = []
        answers: list[tuple[int, int]] = []
        cursor = 0
        for k, m in enumerate(msgs):
            start = text.find(m["content"], cursor)
            if start < 0:
                raise ValueError("chat template changed the message text")
            cursor = start + len(m["content"])
            if m["role"] == "user":
                spans.append((start, cursor, SEG_INSTRUCTION))
                continue
            end = len(text)
            if k < len(msgs) - 1:
                head = self.tok.apply_chat_template(msgs[: k + 1], tokenize=False)
                if not text.startswith(head) or len(head) < cursor:
                    raise ValueError("chat template renders the start of a conversation differently")
                end = len(head)
            answers.append((start, end))
            cursor = end
        return text, spans, answers

    # -- tokens -------------------------------------------------------------------------------------
    def _tokens(self, r: Record) -> tuple[list[int], list[int], list[bool], list[tuple[int, int]], int]:
        """Whole training text of r: ids, segments, learn flags, offsets and the first answer's first character."""
        text, spans, answers = self.full_text(r)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        segs, learn = [], []
        for a, b in offsets:
            c = a
            while c < b and text[c].isspace():        # a token " word" belongs where "word" belongs
                c += 1
            c = a if c >= b else c
            if any(s0 <= c < s1 for s0, s1 in answers):
                segs.append(SEG_RESPONSE)
                learn.append(True)
                continue
            seg = SEG_TEMPLATE
            for s0, s1, kind in spans:
                if s0 <= c < s1:
                    seg = kind
            segs.append(seg)
            learn.append(False)
        if not any(learn):
            raise ValueError("no response tokens")
        return ids, segs, learn, offsets, answers[0][0]

    def encode(self, r: Record) -> Example:
        ids, segs, learn, _, _ = self._tokens(r)
        first_resp = learn.index(True)
        if first_resp >= self.max_length - 1:
            raise ValueError("prompt_too_long")
        ids, segs, learn = ids[: self.max_length], segs[: self.max_length], learn[: self.max_length]
        return Example(ids, segs, learn, record_id=r.id)

    def encode_prompt(self, instruction: str, input: str = "") -> tuple[list[int], list[int]]:
        """Token ids and segments of a generation prompt (`dataforge generate`): the tokens that every training
        sample with this instruction and input starts with, whatever its answer. (Rendering the prompt on its
        own differs: in the [INST] format it ends with a lone space that training merges into the answer's
        first token, " positive"; cut there, generation continues exactly as training texts do.)"""
        variants = [self._tokens(Record(instruction=instruction, input=input, output=p)) for p in _PLACEHOLDERS]
        ids, segs = variants[0][0], variants[0][1]
        n = min(v[2].index(True) for v in variants)
        for other in variants[1:]:
            n = next((i for i, (a, b) in enumerate(zip(ids[:n], other[0])) if a != b), n)
        return ids[:n], segs[:n]

    def stop_ids(self, generation_config=None) -> set[int]:
        """Tokens that end an answer: the tokenizer's end-of-text, every end id of the model's generation
        config, and the special token a training text puts right after the answer (the chat template's end
        of turn, e.g. `<|eot_id|>`, `<end_of_turn>`, `<|im_end|>`)."""
        eos = getattr(generation_config, "eos_token_id", None)
        stops = {self.tok.eos_token_id} | (set(eos) if isinstance(eos, (list, tuple)) else {eos})
        ids, _, _, offsets, resp = self._tokens(Record(instruction="Hi.", output=_PLACEHOLDER))
        special = set(self.tok.all_special_ids) | {i for i, t in self.tok.added_tokens_decoder.items() if t.special}
        end = resp + len(_PLACEHOLDER)
        after = next((i for i, (a, _) in zip(ids, offsets) if a >= end), None)
        if after in special:
            stops.add(after)
        return stops - {None}


@dataclass
class TaskInfo:
    """The run's task categories, and what each means for the temperature head."""

    tasks: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    temps: dict[str, float] = field(default_factory=dict)

    def index(self, task: str | None) -> int:
        return self.tasks.index(task) if task in self.tasks else IGNORE

    def temperature(self, task: str | None) -> float:
        kind = self.kinds.get((task or "").strip().lower().replace(" ", "_"))
        return self.temps[kind] if kind in self.temps else float("nan")


def encode_records(records: Iterable[Record], fmt: PromptFormatter, tasks: TaskInfo,
                   drops: dict[str, int]) -> list[Example]:
    """Tokenise records; count every skipped one by reason in `drops`."""
    out = []
    for r in records:
        if not r.output.strip():
            drops["empty_output"] = drops.get("empty_output", 0) + 1
            continue
        try:
            ex = fmt.encode(r)
        except ValueError as exc:
            reason = str(exc).replace(" ", "_")
            drops[reason] = drops.get(reason, 0) + 1
            continue
        ex.task_id = tasks.index(r.task)
        ex.complexity = float(r.complexity or 0.0) / 10.0
        ex.temp_target = tasks.temperature(r.task)
        out.append(ex)
    return out


# ------------------------------------------------------------------------------------ packing/batching


def pack(lengths: Sequence[int], capacity: int, order: Sequence[int] | None = None) -> list[list[int]]:
    """Best-fit-decreasing bin packing of sample indices into rows of `capacity` tokens.

    Ties are broken by `order` (a shuffled index list) so different epochs get different rows.
    """
    idx = list(order) if order is not None else list(range(len(lengths)))
    idx.sort(key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []               # sorted (remaining capacity, bin number)
    for i in idx:
        need = lengths[i]
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
            room -= need
        else:
            bins.append([i])
            b, room = len(bins) - 1, capacity - need
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def plan_rows(examples: Sequence[Example], *, packing: bool, group_by_length: bool, capacity: int,
              batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[list[int]]]:
    """One epoch's micro-batches: a list of batches, each a list of rows, each a list of example indices."""
    rng = random.Random(f"{seed}:plan:{epoch}")
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    lengths = [len(e) for e in examples]
    if packing:
        rows = pack(lengths, capacity, order)
        rows.sort(key=lambda r: -sum(lengths[i] for i in r))    # rows of similar fill share a batch
        batches = [rows[i: i + batch_size] for i in range(0, len(rows), batch_size)]
        if shuffle:
            rng.shuffle(batches)
        return batches
    if group_by_length:
        mega = batch_size * 32
        batches = []
        for m in range(0, len(order), mega):
            chunk = sorted(order[m: m + mega], key=lambda i: lengths[i])
            batches += [[[i] for i in chunk[k: k + batch_size]] for k in range(0, len(chunk), batch_size)]
        if shuffle:
            rng.shuffle(batches)
        return batches
    return [[[i] for i in order[k: k + batch_size]] for k in range(0, len(order), batch_size)]


def mask_instruction(ex: Example, p: float, mode: str, mask_id: int, rng: random.Random) -> Example:
    """Training-only: each instruction token replaced by `mask_id` (or dropped) with probability p."""
    hits = [i for i, s in enumerate(ex.segments) if s == SEG_INSTRUCTION and rng.random() < p]
    if not hits:
        return ex
    if mode == "mask":
        ids, masked = list(ex.input_ids), [False] * len(ex)
        for i in hits:
            ids[i], masked[i] = mask_id, True
        return replace(ex, input_ids=ids, masked=masked)
    n_inst = sum(1 for s in ex.segments if s == SEG_INSTRUCTION)
    hits = set(hits[: max(0, n_inst - 1)])          # keep at least one instruction token
    keep = [i for i in range(len(ex)) if i not in hits]
    return replace(ex, input_ids=[ex.input_ids[i] for i in keep], segments=[ex.segments[i] for i in keep],
                   learn=[ex.learn[i] for i in keep])


def collate(rows: Sequence[Sequence[Example]], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Rows of examples -> padded tensors (right padding).

    Per token: input_ids, position_ids (restart per sample), segment_ids, sample_idx (-1 on padding),
    lm_labels (every token but each sample's first), resp_labels (response only), after_inst (token comes
    after its sample's instruction). Per sample: task_ids, complexity, temp_target.
    """
    T = max(sum(len(e) for e in row) for row in rows)
    T = max(T, pad_to or 0)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.zeros((B, T), dtype=torch.long)
    sidx = torch.full((B, T), -1, dtype=torch.long)
    lm = torch.full((B, T), IGNORE, dtype=torch.long)
    resp = torch.full((B, T), IGNORE, dtype=torch.long)
    after = torch.zeros((B, T), dtype=torch.bool)
    tasks, cx, temps = [], [], []
    n = 0
    for b, row in enumerate(rows):
        at = 0
        for e in row:
            L = len(e)
            t = torch.tensor(e.input_ids, dtype=torch.long)
            ids[b, at: at + L] = t
            pos[b, at: at + L] = torch.arange(L)
            s = torch.tensor(e.segments, dtype=torch.long)
            seg[b, at: at + L] = s
            sidx[b, at: at + L] = n
            lm[b, at + 1: at + L] = t[1:]
            if e.masked is not None:             # never train the model to predict the mask token
                lm[b, at: at + L][torch.tensor(e.masked, dtype=torch.bool)] = IGNORE
            learn = torch.tensor(e.learn, dtype=torch.bool)
            learn[0] = False
            resp[b, at: at + L] = torch.where(learn, t, IGNORE)
            inst = (s == SEG_INSTRUCTION).nonzero()
            last = int(inst[-1]) if len(inst) else -1
            after[b, at + last + 1: at + L] = True
            tasks.append(e.task_id)
            cx.append(e.complexity)
            temps.append(e.temp_target)
            at += L
            n += 1
    return {"input_ids": ids, "position_ids": pos, "segment_ids": seg, "sample_idx": sidx, "lm_labels": lm,
            "resp_labels": resp, "after_inst": after, "task_ids": torch.tensor(tasks, dtype=torch.long),
            "complexity": torch.tensor(cx, dtype=torch.float32),
            "temp_target": torch.tensor(temps, dtype=torch.float32)}


def padding_fraction(batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Share of positions in the given batches that are padding."""
    pad = total = 0
    for b in batches:
        pad += int((b["sample_idx"] < 0).sum())
        total += b["sample_idx"].numel()
    return pad / total if total else 0.0


def split_eval(records: list[Record], fraction: float, max_eval: int) -> tuple[list[Record], list[Record]]:
    """Hold out records by id hash (stable whatever the file order): (train, eval)."""
    if fraction <= 0 or len(records) < 4:
        return records, []
    n_eval = min(max_eval, max(1, math.floor(len(records) * fraction)))
    ranked = sorted(records, key=lambda r: r.id)
    import hashlib

    ranked.sort(key=lambda r: hashlib.sha256(f"eval:{r.id}".encode()).hexdigest())
    held = {r.id for r in ranked[:n_eval]}
    return [r for r in records if r.id not in held], [r for r in records if r.id in held]

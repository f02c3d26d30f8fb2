"""Structural checks on a response that need no model: empty, cut off, leftover template markers or
role tags, refusal boilerplate. Each returns a reason string when it fails and None when it passes."""

from __future__ import annotations

import re

# Chat-template tokens and prompt scaffolding that must never survive into a response.
_TEMPLATE_MARKERS = re.compile(
    r"<\|(?:im_start|im_end|endoftext|eot_id|start_header_id|end_header_id|user|assistant|system|end)\|>"
    r"|\[/?INST\]|<</?SYS>>|</?s>(?=\s|$)"
    r"|^#{2,3}\s*(?:Instruction|Response|Input)\s*:?\s*$"
    r"|#(?:Given|Rewritten|Created|Original)\s+Prompt#"
    r"|\{\{\s*(?:instruction|input|output|response|prompt|question|answer)\s*\}\}",
    re.I | re.M,
)
# A role tag that opens the response or a line of it: the model started writing the next turn.
_ROLE_TAG = re.compile(r"^(?:###\s*)?(?:Human|Assistant|User|System|AI|USER|ASSISTANT)\s*:\s", re.M)
_REFUSAL = re.compile(
    r"\b(?:as an ai(?: language)? model|as a language model"
    r"|i(?:'m| am) sorry,? but (?:i|as an ai) (?:can(?:no|')t|am (?:not able|unable))"
    r"|i (?:cannot|can't|am unable to|won't) (?:help|assist|comply|fulfil+|provide|complete) (?:with )?(?:that|this|your)"
    r"|i(?:'m| am) not able to (?:help|assist|provide|complete) (?:with )?(?:that|this|your))",
    re.I,
)
_OPENERS = "([{"
_CLOSERS = ")]}"
# The last character of a finished response: punctuation, a closing bracket or quote, a code-ish end.
_CLEAN_END = re.compile(r"""[.!?)\]}>"'`’”*;:…]\s*$|```\s*$|\b(?:end|fi|done|esac)\s*$|^\W*$""")
_DANGLING = re.compile(r"(?:,|\b(?:and|or|but|the|a|an|of|to|in|with|for|that|is|are|was|which|because|"
                       r"then|as|by|on|at|from|if|when|while|so|than|into|this|these|its|their|our|your|my)\b)\s*$",
                       re.I)

_DANGLING_SYMBOL = re.compile(r"(?:[=+\-*/<(\[{,:&|\\]|\bto)\s*$")


def check_empty(output: str) -> str | None:
    return "empty_output" if not output or not output.strip() else None


def check_template_leftovers(output: str) -> str | None:
    m = _TEMPLATE_MARKERS.search(output)
    if m:
        return f"template_marker:{m.group(0).strip()[:24]}"
    m = _ROLE_TAG.search(output)
    if m:
        return f"role_tag:{m.group(0).strip()[:16]}"
    return None


def check_refusal(output: str) -> str | None:
    m = _REFUSAL.search(output[:400])
    return m.group(0)[:40].lower() if m else None


def _unbalanced(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            depth -= 1
    return depth > 0


def truncation_signals(output: str, finish_reason: str | None = None) -> list[str]:
    """Why the response looks cut off (empty list: it looks finished)."""
    text = output.rstrip()
    signals = []
    if finish_reason == "length":
        signals.append("finish_reason=length")
    if text.count("```") % 2 == 1:
        signals.append("open_code_fence")
    if _DANGLING.search(text):
        signals.append("dangling_word")
    # a prose ending (letter) after which nothing closes: a sentence stopped mid-way
    if text and not _CLEAN_END.search(text):
        last_line = text.splitlines()[-1]
        if re.search(r"[A-Za-z]{2,}$", last_line) and len(last_line.split()) >= 4 and \
                not re.match(r"^\s*(?:[-*•]|\d+[.)]|#)", last_line) and not _finished_fragment(text, last_line):
            signals.append("unfinished_sentence")
    if text and "unfinished_sentence" not in signals and _prose_lines_then_fragment(text):
        signals.append("unfinished_line")
    if _unbalanced(text[-2000:]) and text[-1:] not in _CLOSERS:
        signals.append("unclosed_bracket")
    if _DANGLING_SYMBOL.search(text):
        signals.append("dangling_symbol")
    if text:
        last_line = text.splitlines()[-1]
        if last_line.count('"') % 2 == 1 and text.count('"') % 2 == 1:
            signals.append("open_quote")
        if re.search(r"<<[^<>\n]*$", last_line) and ">>" in text:
            signals.append("open_annotation")
    return signals


_SENTENCE_CUES = re.compile(r"\b(?:is|are|was|were|can|could|will|would|has|have|had|here|there|let|should|must|"
                            r"does|do|needs?|SELECT|FROM|WHERE)\b", re.I)


def _prose_lines_then_fragment(text: str) -> bool:
    """Every earlier line ends like a sentence, the last one stops on a word: cut off mid-line."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2 or not re.search(r"[A-Za-z]{2,}$", lines[-1]):
        return False
    closed = sum(1 for ln in lines[:-1] if re.search(r"[.!?:]$", ln))
    return closed / (len(lines) - 1) >= 0.8


def _finished_fragment(text: str, line: str) -> bool:
    """Short answers that legitimately end without punctuation: a one-line title or label (up to
    12 words), a
    comma-separated list, an analogy ("A : B :: C : D")."""
    words = line.split()
    if "::" in line or (line.count(",") >= 3 and "." not in line):
        return True
    return "\n" not in text.strip() and len(words) <= 12 and not re.search(r"[.!?]\s", text) \
        and not _SENTENCE_CUES.search(line)


def ending_shape(output: str) -> str:
    """A coarse shape of the last line (digits -> 9, letters -> a, first 6 chars), to spot datasets whose
    answers always close the same way (e.g. GSM8K's "#### 42") and responses that do not."""
    lines = output.rstrip().splitlines()
    if not lines:
        return ""
    head = lines[-1].strip()[:6]
    return re.sub(r"[A-Za-z]+", "a", re.sub(r"\d+", "9", head))


def check_truncated(output: str, finish_reason: str | None = None) -> str | None:
    signals = truncation_signals(output, finish_reason)
    return f"truncated:{'+'.join(signals)}" if signals else None

"""Is a model-written *user* message usable? One check shared by the generators that make the model play
the user: `magpie` (a query sampled from the chat template's pre-query prefix) and `converse` (a follow-up).

Known failure shapes (Magpie's own issue tracker, magpie#28, and what SmolLM2 does here): a fragment cut at
max_tokens or ending on "and the"; the model answering instead of asking ("Sure! Here is ...", "Hello! How
can I help?"), chat-template markers or role tags leaking in, and statements that ask for nothing. Each
problem is a short reason, so drops are counted by reason; cut-off detection reuses the gate's truncation
signals, minus the prose-ending ones (users rarely end a request with a full stop).
"""

from __future__ import annotations

import re

from ..quality import structure

# truncation signals that also mean "cut off" for a user message (not: unfinished_sentence / unfinished_line)
_CUT_SIGNALS = ("dangling_symbol", "open_code_fence", "unclosed_bracket", "open_quote")
# a request may well end on "this" or "in" ("Can you explain this", "Which one should I invest in"); it does not
# end on an article, a conjunction or these prepositions
_DANGLING = re.compile(r"(?:,|\b(?:and|or|but|the|a|an|of|to|with|for|from|by|at|if|because|than|into|your|my|"
                       r"their|our|its)\b)\s*$", re.I)
_QUESTION_START = re.compile(
    r"^(?:please\s+|so\s+|and\s+|but\s+|ok(?:ay)?,?\s+|hi,?\s+|hey,?\s+)?(?:what|why|how|when|where|which|who|whom|"
    r"whose|is|are|was|were|can|could|would|will|should|shall|do|does|did|may|might|have|has|isn't|aren't|don't|"
    r"doesn't|didn't|won't|wouldn't|can't|couldn't|shouldn't)\b", re.I)
_TASK_VERBS = (
    "write explain describe list give tell summarize summarise create generate translate compare contrast calculate "
    "compute find solve suggest recommend help show provide make design draft rewrite classify identify analyze "
    "analyse define convert outline plan name propose implement edit fix debug review evaluate predict estimate "
    "prove derive imagine compose answer redo repeat expand elaborate clarify simplify shorten rephrase continue "
    "add remove use assume consider discuss argue justify illustrate demonstrate sort rank count check verify "
    "correct improve optimize optimise walk go break teach guide brainstorm build develop create prepare refactor"
).split()
_IMPERATIVE = re.compile(r"^(?:please\s+|now\s+|also\s+|ok(?:ay)?,?\s+|then\s+)?(?:" + "|".join(_TASK_VERBS) + r")\b",
                         re.I)
_REQUEST = re.compile(r"\b(?:i need|i want|i'd like|i would like|i'm looking for|i am looking for|help me|"
                      r"can you|could you|would you|please|let me know|i wonder|i'm wondering)\b", re.I)
# the model speaking as the assistant instead of the user
_ASSISTANT_VOICE = re.compile(
    r"^(?:sure|certainly|of course|absolutely|great question|here(?:'s| is| are)|i'd be happy|i would be happy|"
    r"i'm happy to|hello!? how can i|hi!? how can i|hi there!? how can i|how can i (?:help|assist)|"
    r"as an ai|i'm sorry|i am sorry|i apologi[sz]e)\b", re.I)


def is_request(text: str) -> bool:
    """Does the message ask for something: a question mark, a question opener, an imperative task verb,
    or a request phrase ("can you", "I need", "please")."""
    t = text.strip().lstrip("\"'*-# ").strip()
    return "?" in t or bool(_QUESTION_START.match(t) or _IMPERATIVE.match(t) or _REQUEST.search(t))


def user_message_problem(text: str, *, truncated: bool = False, min_words: int = 3) -> str | None:
    """Why `text` is not a usable user message (a short reason, "fragment:..." for the cut-off kinds),
    or None when it is fine."""
    t = text.strip()
    if not t:
        return "empty"
    if structure.check_template_leftovers(t):
        return "template_leakage"
    if _ASSISTANT_VOICE.match(t) or structure.check_refusal(t):
        return "assistant_voice"
    if truncated:
        return "fragment:cut_off"
    if len(t.split()) < min_words:
        return "fragment:too_short"
    cut = ["dangling_word"] if _DANGLING.search(t) else [s for s in structure.truncation_signals(t) if s in _CUT_SIGNALS]
    if cut:
        return f"fragment:{cut[0]}"
    if not is_request(t):
        return "not_a_request"
    return None


def clean_user_message(text: str, labels: tuple[str, ...] = ()) -> str:
    """The message without a leading role label or wrapping quotes the model added ("User: ...", '"..."')."""
    t = text.strip()
    for label in (*labels, "User:", "Human:", "Follow-up:", "Question:", "Query:"):
        if t.lower().startswith(label.lower()):
            t = t[len(label):].strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'" and t.count(t[0]) == 2:
        t = t[1:-1].strip()
    if t.startswith("<<<") and t.endswith(">>>"):
        t = t[3:-3].strip()
    return t

"""A scripted 'model' for the evolve tests, served by the real loopback HTTP server.

It answers by looking at the prompt, like a rule-based model: some operations always succeed,
others fail in a known way, so the tests know which elimination rule must fire.
"""

from __future__ import annotations

import re

SEEDS = [
    {"id": "seed_task_0", "name": "fruits", "instruction": "Name three fruits that grow in cold climates.",
     "instances": [{"input": "", "output": "Apples, pears and cherries."}], "is_classification": False},
    {"id": "seed_task_1", "name": "poem", "instruction": "Write a short poem about the sea.",
     "instances": [{"input": "", "output": "Waves..."}], "is_classification": False},
    {"id": "seed_task_2", "name": "sum", "instruction": "Add the numbers in the list.",
     "instances": [{"input": "3, 4, 5", "output": "12"}], "is_classification": False},
    {"id": "seed_task_3", "name": "inflation", "instruction": "Explain what inflation is.",
     "instances": [{"input": "", "output": "Rising prices."}], "is_classification": False},
    {"id": "seed_task_4", "name": "email", "instruction": "Write an email asking a colleague for a meeting.",
     "instances": [{"input": "", "output": "Hi..."}], "is_classification": False},
    {"id": "seed_task_5", "name": "sentiment", "instruction": "Is the sentiment of this review positive or negative?",
     "instances": [{"input": "The food was cold and late.", "output": "negative"}], "is_classification": True},
]

ASPECTS = ("history", "costs", "risks", "ethics", "future", "culture", "limits", "origins", "critics")
CONSTRAINTS = ("Keep it under 120 words.", "Use a numbered list.", "Give one example.", "Cite a date.",
               "End with a question.")
_GIVEN = re.compile(r"<<<\n(.*?)\n>>>", re.S)


def _text(body: dict) -> str:
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body.get("prompt", "")


def responder(body: dict) -> str:
    text = _text(body)
    if "EQUAL or DIFFERENT" in text:  # the information-gain judge
        child = _GIVEN.findall(text)[-1]
        return "EQUAL" if "in other words" in child.lower() else "DIFFERENT"
    m = _GIVEN.search(text)
    if m:  # an evolution request: which operation is it?
        given = m.group(1)
        if "more depth and breadth" in text:  # always adds an aspect the task did not mention yet
            aspect = next(w for w in ASPECTS if w not in given.lower())
            return f"{given} Also discuss its {aspect}."
        if "exactly one new constraint" in text:
            return f"{given} {next(c for c in CONSTRAINTS if c not in given)}"  # a constraint not there yet
        if "more specific" in text:  # fails rule 4: copies the evolving prompt
            return f"#Rewritten Prompt#: {given} (specific)"
        if "explicit reasoning" in text:  # fails rule 1 by the model judge
            return f"{given} In other words, the same."
        if "structured input" in text:  # fails rule 2 later: the answer apologises
            return f"{given} Use this table: | item | value |"
        if "brand-new task" in text:  # fails rule 3 later: the answer is only stop words
            return "Describe the history of beekeeping tools in medieval Europe."
        return "?"
    # an answer request: the user message is the instruction itself
    if "| item | value |" in text:
        return "Sorry, I cannot do that."
    if "beekeeping" in text:
        return "It is what it is, and that is all."
    return "Here is a careful answer. " + " ".join(f"point{i}" for i in range(30))

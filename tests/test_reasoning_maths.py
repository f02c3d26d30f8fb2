"""Reasoning handling, case by case: what `split_reasoning` keeps, when `with_reasoning_budget` adds the
allowance or asks again (counted request by request), and when `reasoning_history` writes the thinking
into lineage (only with --keep-reasoning, only when there was some)."""

from __future__ import annotations

from types import SimpleNamespace

from dataforge.llm import BackendConfig, GenParams, make_llm, run_sync
from dataforge.llm.base import Choice, Completion
from dataforge.llm.reasoning import reasoning_history, split_reasoning, with_reasoning_budget
from dataforge.testing.hosted import HostedAPI
from dataforge.testing.loopback import LoopbackServer


def test_split_reasoning_empty_and_stray_close():
    assert split_reasoning(None) == ("", None, False) and split_reasoning("") == ("", None, False)
    answer, reasoning, unfinished = split_reasoning("<think>a</think>b</think>c<think>d</think>e")
    # each think closes at its own tag; what precedes a stray extra close was thinking too, never the answer
    assert (answer, reasoning, unfinished) == ("ce", "a\n\nd\n\nb", False)
    assert split_reasoning("<think>a</think></think>b") == ("b", "a", False)
    assert split_reasoning("x</think>y</think>z") == ("z", "x\n\ny", False)
    # several stray closes: the thinking between them stays apart, never run together and never the answer
    assert split_reasoning("x</think>y</think> w</think>z") == ("z", "x\n\ny\n\nw", False)
    # cut off while thinking: the answer before the open think stays, a close inside the think is reasoning
    assert split_reasoning("pre</think>ans<think>more") == ("ans", "pre\n\nmore", True)
    assert split_reasoning("<think>a</think>b</think>c<think>d") == ("c", "a\n\nd\n\nb", True)


class _Sender:
    """Answers each request with the next of `replies` (finish_reason, reasoning) and records its budget."""

    def __init__(self, *replies):
        self.replies, self.budgets = list(replies), []

    async def __call__(self, params):
        self.budgets.append(params.max_tokens)
        finish, reasoning = self.replies.pop(0)
        return Completion([Choice("answer", finish_reason=finish, reasoning=reasoning)])


def _budget(llm, *replies, max_tokens=30):
    send = _Sender(*replies)
    run_sync(with_reasoning_budget(llm, send, GenParams(max_tokens=max_tokens)))
    return send.budgets


def test_reasoning_budget_without_allowance():
    # no backend config at all, or an allowance of 0: never asked again, even when cut off while thinking
    bare = SimpleNamespace()
    assert _budget(bare, ("length", "thought"), ("stop", None)) == [30] and bare._thinks is True
    assert _budget(bare, ("length", "thought"), ("stop", None)) == [30]
    zero = SimpleNamespace(cfg=SimpleNamespace(reasoning_tokens=0))
    assert _budget(zero, ("length", "thought"), ("stop", None)) == [30]


def test_reasoning_budget_asks_again_only_when_cut_off_while_thinking_first():
    llm = SimpleNamespace(cfg=SimpleNamespace(reasoning_tokens=100))
    assert _budget(llm, ("stop", "thought")) == [30] and llm._thinks is True  # finished: not asked again
    fresh = SimpleNamespace(cfg=SimpleNamespace(reasoning_tokens=100))
    assert _budget(fresh, ("length", None)) == [30] and not hasattr(fresh, "_thinks")  # cut off, no thinking
    assert _budget(fresh, ("length", "thought"), ("stop", "thought")) == [30, 130]
    # known to think: the allowance from the start, and a cut-off then is the answer's own
    assert _budget(fresh, ("length", "thought"), ("stop", "thought")) == [130]


def test_reasoning_history_only_when_kept():
    with LoopbackServer(hosted=HostedAPI(think="reasoning_content", think_words=10)) as srv:
        def llm(keep):
            return make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="deepseek-reasoner",
                                          no_cache=True, keep_reasoning=keep, reasoning_tokens=50))
        kept = llm(True)
        comp = run_sync(kept.chat([{"role": "user", "content": "q"}], GenParams(max_tokens=30)))
        thought = comp.choices[0].reasoning
        assert thought.startswith("Okay, let me think.")
        assert reasoning_history(kept, comp, "answer") == [{"kind": "reasoning", "step": "answer", "text": thought}]
        assert reasoning_history(llm(False), comp, "answer") == []
    assert reasoning_history(kept, Completion([Choice("a")]), "answer") == []  # nothing thought
    assert reasoning_history(kept, Completion([]), "answer") == [] and reasoning_history(kept, None, "x") == []
    assert reasoning_history(object(), comp, "answer") == []  # no backend config: nothing kept
    two = Completion([Choice("a", reasoning="first"), Choice("b", reasoning="second")])
    assert reasoning_history(kept, two, "evolve") == [{"kind": "reasoning", "step": "evolve", "text": "first"}]
    duck = SimpleNamespace(choices=[SimpleNamespace(text="a")])  # a choice without a reasoning field
    assert reasoning_history(kept, duck, "answer") == []

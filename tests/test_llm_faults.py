"""1,000 requests with 20% injected faults: every request ends answered or with a recorded final
error — none lost, none duplicated, none mixed up with another request's answer."""

from __future__ import annotations

import asyncio
import re
import time

from dataforge.llm import BackendConfig, GenParams, LLMError, make_llm
from dataforge.testing import FaultPlan, LoopbackServer
from dataforge.testing.loopback import last_user_message

N = 1000


def _echo(body):
    return f"{last_user_message(body)} answered with some padding words after the id"


def test_thousand_requests_with_twenty_percent_faults(tmp_path):
    plan = FaultPlan(rate=0.2, kinds=("429", "500", "slow", "malformed", "truncated", "disconnect"), seed=3,
                     retry_after=0.01, slow_seconds=3.0)
    with LoopbackServer(responder=_echo, faults=plan) as srv:
        llm = make_llm(BackendConfig(backend="openai", base_url=srv.base_url, model="test", concurrency=64, timeout=2.0,
                                     max_retries=4, retry_base_delay=0.01, retry_max_delay=0.05,
                                     cache_path=str(tmp_path / "c.sqlite")))
        answered: dict[int, str] = {}
        errors: dict[int, str] = {}
        truncated = 0

        async def one(i: int) -> None:
            nonlocal truncated
            try:
                comp = await llm.complete(f"req-{i:04d}", GenParams(max_tokens=50))
            except LLMError as exc:  # a final error, recorded against its request
                assert i not in errors and i not in answered
                errors[i] = str(exc)
                return
            assert i not in answered and i not in errors
            answered[i] = comp.text
            truncated += comp.truncated

        async def run_all() -> None:
            await asyncio.gather(*(one(i) for i in range(N)))

        t0 = time.perf_counter()
        asyncio.run(run_all())
        elapsed = time.perf_counter() - t0
        injected = sum(srv.fault_counts.values())
        truncated_injected = srv.fault_counts["truncated"]
        sent = srv.request_count

    assert set(answered) | set(errors) == set(range(N)) and not set(answered) & set(errors)  # none lost
    for i, text in answered.items():  # each answer belongs to its own request (no duplicates, no swaps)
        assert re.match(rf"req-{i:04d}\b", text), (i, text)
    assert truncated == truncated_injected > 0  # truncation is an answer, flagged as such
    # final errors need 5 faults in a row (0.2**5): a handful at most, unless the machine is starved
    assert len(errors) <= 20 and all("attempt(s)" in e for e in errors.values()), list(errors.values())[:3]
    assert injected >= 0.15 * N and N <= sent <= N + llm.usage.retries  # every retry counted (final failures' too)
    assert llm.usage.requests == len(answered) and llm.usage.errors == len(errors)
    assert elapsed < 30


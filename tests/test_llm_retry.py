"""Backoff, Retry-After parsing, token buckets and secret redaction: the small rules the client's
resilience rests on."""

from __future__ import annotations

import asyncio
import random
import time
from email.utils import formatdate

from dataforge.llm.retry import TokenBucket, backoff_delay, parse_retry_after, redact


def test_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25  # the precise one wins
    assert 8 <= parse_retry_after({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10
    assert parse_retry_after({"retry-after": "99999"}) == 120.0  # capped
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_backoff_grows_with_jitter_and_retry_after_wins():
    rng = random.Random(0)
    delays = [backoff_delay(a, 0.5, 8.0, None, rng) for a in range(8)]
    assert all(0.25 * 2 ** a <= d <= 0.5 * 2 ** a for a, d in enumerate(delays[:4]))
    assert all(4.0 <= d <= 8.0 for d in delays[5:])  # capped
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not lock-step
    assert 2.0 <= backoff_delay(0, 0.5, 8.0, retry_after=2.0, rng=rng) <= 2.2


def test_token_bucket_limits_the_rate():
    bucket = TokenBucket(per_minute=1200, capacity=5)  # 20/s after a burst of 5

    async def take(n):
        t0 = time.perf_counter()
        for _ in range(n):
            await bucket.acquire(1)
        return time.perf_counter() - t0
    elapsed = asyncio.run(take(15))
    assert 0.4 <= elapsed < 2.0  # 10 beyond the burst at 20/s = 0.5 s
    big = TokenBucket(per_minute=60_000, capacity=100)
    assert asyncio.run(big.acquire(10_000)) < 0.5  # larger than capacity: clipped, never stuck


def test_redact_removes_keys():
    msg = "Incorrect API key provided: sk-proj-abcdef123456****wxyz; key=secretvalue42"
    out = redact(msg, "secretvalue42")
    assert "abcdef" not in out and "wxyz" not in out and "secretvalue42" not in out and "Incorrect API key" in out

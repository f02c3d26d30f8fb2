"""Backoff and rate limits: how a client survives 429s and flaky servers without hammering them.

`backoff_delay` is exponential with full jitter (so retries from many coroutines spread out) and a
server's Retry-After always wins. `TokenBucket` smooths requests-per-minute and tokens-per-minute.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from email.utils import parsedate_to_datetime
from typing import Mapping

MAX_RETRY_AFTER = 120.0


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` / `Retry-After` (seconds or an HTTP date); None if absent."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return min(max(float(ms) / 1000.0, 0.0), MAX_RETRY_AFTER)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        try:
            return min(max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)
        except (TypeError, ValueError):
            return None


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (0-based). Retry-After is honoured (plus ≤10% jitter);
    otherwise `base * 2**attempt`, capped, with jitter in [50%, 100%]."""
    r = (rng or random).random()
    if retry_after is not None:
        return retry_after * (1.0 + 0.1 * r)
    return min(cap, base * (2 ** attempt)) * (0.5 + 0.5 * r)


class TokenBucket:
    """`rate` units per second, bursts up to `capacity`. `await acquire(n)` waits until n units are free.
    Requests larger than the capacity are clipped to it so they can never wait forever."""

    def __init__(self, per_minute: float, capacity: float | None = None):
        self.rate = per_minute / 60.0
        self.capacity = capacity if capacity is not None else max(1.0, per_minute / 60.0 * 5)  # ~5 s of burst
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock: asyncio.Lock | None = None  # per event loop: the bucket's level outlives `run_sync` loops
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, amount: float = 1.0) -> float:
        """Take `amount` units; returns seconds waited."""
        amount = min(amount, self.capacity)
        waited = 0.0
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:  # FIFO: one waiter at a time keeps the order fair
            while True:
                self._refill()
                if self._level >= amount:
                    self._level -= amount
                    return waited
                need = (amount - self._level) / self.rate
                await asyncio.sleep(need)
                waited += need


_SECRETISH = re.compile(r"\b(sk|pk|rk|key|api|tok)[-_][A-Za-z0-9*._-]{6,}")


def redact(text: str, *secrets: str | None) -> str:
    """Remove API keys (the given values, and anything shaped like `sk-...`) from an error message."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return _SECRETISH.sub("***", text)

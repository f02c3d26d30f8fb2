"""How many records balance keeps per (topic, level) cell: level quotas water-filled over topics under
a topic cap. Pure arithmetic on counts, so it is the same for ten records or ten million."""

from __future__ import annotations

import math
from collections import Counter

from .levels import UNRATED


def waterfill(quota: int, limits: dict[str, int]) -> dict[str, int]:
    """Split `quota` over topics as evenly as their limits allow (max-min fair); sums to min(quota, sum)."""
    give = {t: 0 for t in limits}
    remaining = min(quota, sum(limits.values()))
    items = sorted(limits.items(), key=lambda kv: (kv[1], kv[0]))
    for i, (topic, limit) in enumerate(items):
        if remaining <= 0:
            break
        fair = -(-remaining // (len(items) - i))          # ceil
        give[topic] = min(limit, fair)
        remaining -= give[topic]
    return give


def _quotas(total: int, target: dict[str, float]) -> dict[str, int]:
    """Integer quotas per level summing to `total` (largest remainder)."""
    exact = {lv: total * share for lv, share in target.items()}
    quotas = {lv: math.floor(v) for lv, v in exact.items()}
    left = total - sum(quotas.values())
    for lv in sorted(exact, key=lambda lv: (-(exact[lv] - quotas[lv]), lv))[:left]:
        quotas[lv] += 1
    return quotas


def _fill_levels(total: int, target: dict[str, float], order: list[str], by_level: dict[str, dict[str, int]],
                 cap_of: dict[str, int]) -> tuple[dict[tuple[str, str], int], Counter, bool, dict[str, int]]:
    """One try at `total` records: each level's quota water-filled over topics in `order`, under the caps.
    Returns (plan, records used per topic, every quota met, what each level got)."""
    quotas = _quotas(total, target)
    used: Counter[str] = Counter()
    plan: dict[tuple[str, str], int] = {}
    got: dict[str, int] = {}
    for lv in order:
        limits = {t: min(n, cap_of[t] - used[t]) for t, n in by_level[lv].items()}
        give = waterfill(quotas[lv], limits)
        for t, n in give.items():
            if n:
                plan[(t, lv)] = n
                used[t] += n
        got[lv] = sum(give.values())
    return plan, used, all(got[lv] >= quotas[lv] for lv in order), got


def plan_selection(
    avail: dict[tuple[str, str], int],
    target: dict[str, float],
    cap: int | None,
    size: int | None = None,
    mode: str = "exact",
) -> dict[tuple[str, str], int]:
    """How many records to keep per (topic, level) cell.

    Rated levels, mode "exact": the largest total T found whose level quotas (T x share) can all be met
    under the topic cap, each quota water-filled over topics, scarcest level first (found by shrinking
    from the supply bound, then bisecting; meeting quotas is not always monotone in T, so on rare inputs a
    slightly larger T exists: 4 of 29,801 random small cases). A level with no candidate
    at all leaves the target (the others are renormalised) rather than emptying the output. Mode "cap":
    each level keeps at most its share of all rated candidates (thin levels keep everything).
    Unrated records (no score, no depth) are outside the level target and are kept up to what the topic
    cap leaves (and `size` leaves).
    """
    topics = sorted({t for t, _ in avail})
    cap_of = {t: cap if cap is not None else sum(n for (tt, _), n in avail.items() if tt == t) for t in topics}
    supplied = {lv for (_, lv), n in avail.items() if n}
    rated = [lv for lv, share in target.items() if share > 0 and lv in supplied]
    if rated:
        norm = sum(target[lv] for lv in rated)
        target = {lv: target[lv] / norm for lv in rated}
    plan: dict[tuple[str, str], int] = {}
    used: Counter[str] = Counter()
    if mode == "cap" and rated:
        n_rated = sum(n for (_, lv), n in avail.items() if lv in target)
        quotas = _quotas(n_rated if size is None else min(size, n_rated), target)
        for lv in rated:
            limits = {t: min(avail.get((t, lv), 0), cap_of[t] - used[t]) for t in topics}
            for t, n in waterfill(quotas[lv], limits).items():
                if n:
                    plan[(t, lv)] = n
                    used[t] += n
        rated = []  # the exact search below is skipped
    by_level = {lv: {t: avail.get((t, lv), 0) for t in topics} for lv in rated}

    if rated and any(sum(v.values()) for v in by_level.values()):
        reach = {lv: sum(min(n, cap_of[t]) for t, n in by_level[lv].items()) for lv in rated}
        total = min(math.floor(reach[lv] / target[lv] + 1e-9) for lv in rated)
        if size is not None:
            total = min(total, size)
        order = sorted(rated, key=lambda lv: (reach[lv] / target[lv], lv))      # scarcest first
        best = _fill_levels(total, target, order, by_level, cap_of)
        if not best[2]:
            # Shrink fast with the bound what each level got allows, then bisect back up between that total
            # (met) and the last unmet one: a smaller total leaves later levels more room under the caps, so
            # the bound alone overshoots (it turned a feasible output of 2 into an empty one; a linear scan
            # instead of the bisection takes 20 s on 100k candidates).
            unmet, low = total, total
            while not best[2] and low > 0:
                unmet = low
                low = min(low - 1, min(math.floor(best[3][lv] / target[lv] + 1e-9) for lv in rated))
                best = _fill_levels(low, target, order, by_level, cap_of)
            while unmet - low > 1:
                mid = (low + unmet) // 2
                trial = _fill_levels(mid, target, order, by_level, cap_of)
                if trial[2]:
                    low, best = mid, trial
                else:
                    unmet = mid
        plan, used = best[0], best[1]

    unrated = {t: avail.get((t, UNRATED), 0) for t in topics}
    if sum(unrated.values()):
        room = {t: min(n, cap_of[t] - used[t]) for t, n in unrated.items()}
        quota = sum(room.values()) if size is None else max(0, size - sum(plan.values()))
        for t, n in waterfill(quota, room).items():
            if n:
                plan[(t, UNRATED)] = n
    return plan

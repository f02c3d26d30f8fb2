"""Verifiable constraints: instructions whose answers can be checked exactly, without a judge.

>>> import random
>>> spec = sample_constraint(random.Random(0), "Describe the water cycle.")
>>> spec["type"] in CONSTRAINTS and phrase(spec) == spec["phrase"]
True
>>> check({"type": "no_commas", "params": {}, "phrase": ""}, "No commas here.").ok
True

Records carry specs in ``record.meta["constraints"]`` (a list of ``{"type", "params", "phrase"}``);
the evolver attaches them, the quality gate re-checks them with `check_all`.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Sequence

from ..errors import DataforgeError
from . import combined as _combined  # noqa: F401  (registers its types)
from . import counts as _counts  # noqa: F401  (registers its types)
from . import form as _form  # noqa: F401  (registers its types)
from . import language as _language  # noqa: F401  (registers its types)
from . import layout as _layout  # noqa: F401  (registers its types)
from .base import CONSTRAINTS, RELATIONS, CheckResult, ConstraintType, Spec, conflicting, get_type

__all__ = ["CONSTRAINTS", "RELATIONS", "CheckResult", "ConstraintType", "Spec", "sample_constraint", "phrase",
           "check", "check_all", "all_ok", "make_spec", "conflicting", "get_type", "compatible_types", "still_worded"]


def make_spec(type_name: str, **params: Any) -> Spec:
    """A spec from explicit parameters (tests, hand-written pipelines)."""
    spec: Spec = {"type": get_type(type_name).name, "params": dict(params)}
    spec["phrase"] = phrase(spec)
    return spec


def compatible_types(existing: Iterable[Spec | str] = (), types: Sequence[str] | None = None,
                     instruction: str | None = None) -> list[str]:
    """Types that could be added next to `existing` without contradicting them (and, when
    `instruction` is given, that fit it: a yes/no verdict only fits a question)."""
    have = [e if isinstance(e, str) else e["type"] for e in existing]
    names = list(types) if types is not None else sorted(CONSTRAINTS)
    for n in names:
        get_type(n)
    return [n for n in names if not any(conflicting(n, h) for h in have)
            and (instruction is None or CONSTRAINTS[n].applies is None or CONSTRAINTS[n].applies(instruction))]


def sample_constraint(rng: random.Random, instruction: str | None = None, *,
                      existing: Iterable[Spec | str] = (), types: Sequence[str] | None = None) -> Spec:
    """Draw one constraint (type by weight, then its parameters) from `rng`.

    `instruction` lets keyword constraints pick words the task is about; `existing` are specs already on
    the record (conflicting types are skipped); `types` limits the choice.
    """
    names = compatible_types(existing, types, instruction)
    if not names:
        raise DataforgeError("no constraint type is compatible with the ones already attached")
    name = rng.choices(names, weights=[CONSTRAINTS[n].weight for n in names])[0]
    params = CONSTRAINTS[name].sample(rng, instruction)
    if CONSTRAINTS[name].forms > 1:
        params["form"] = rng.randrange(CONSTRAINTS[name].forms)
    spec: Spec = {"type": name, "params": params}
    spec["phrase"] = phrase(spec)
    return spec


def still_worded(spec: Spec, instruction: str) -> bool:
    """Does a rewritten `instruction` still state `spec`? Its phrase must be there, and a request it asks to
    repeat must still stand in the text unchanged (a model rewrite may have reworded it)."""
    if not spec.get("phrase") or spec["phrase"] not in instruction:
        return False
    request = (spec.get("params") or {}).get("request")
    return request is None or " ".join(str(request).split()).rstrip(" .:;") in " ".join(instruction.split())


def _validated(spec: Spec) -> tuple[ConstraintType, dict[str, Any]]:
    if not isinstance(spec, dict) or "type" not in spec:
        raise DataforgeError(f"a constraint spec needs a 'type' key, got {spec!r}")
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise DataforgeError(f"constraint {spec['type']!r}: 'params' must be an object, got {params!r}")
    return get_type(spec["type"]), params


def phrase(spec: Spec) -> str:
    """The instruction wording of a spec (recomputed from type and params, never read from the spec)."""
    ct, params = _validated(spec)
    try:
        return ct.phrase(params)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataforgeError(f"constraint {ct.name!r}: bad params {params!r} ({exc})") from exc


def check(spec: Spec, response: str) -> CheckResult:
    """Does `response` satisfy the constraint? Unknown types or malformed params raise DataforgeError."""
    ct, params = _validated(spec)
    try:
        ok, detail = ct.check(params, response or "")
    except (KeyError, TypeError, ValueError) as exc:
        raise DataforgeError(f"constraint {ct.name!r}: bad params {params!r} ({exc})") from exc
    return CheckResult(bool(ok), detail, ct.name)


def check_all(specs: Iterable[Spec] | None, response: str) -> list[CheckResult]:
    """One result per spec, in order (empty list when there are none)."""
    return [check(s, response) for s in (specs or [])]


def all_ok(specs: Iterable[Spec] | None, response: str) -> bool:
    return all(r.ok for r in check_all(specs, response))

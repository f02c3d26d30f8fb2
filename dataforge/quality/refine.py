"""Self-Refine for records that fail soft checks: the model critiques the response (told which checks
failed and why), rewrites it from the critique, and the gate checks the rewrite again; up to `rounds`
times or until nothing soft fails. Every draft and critique is kept in ``record.lineage.history``.

The response that ends up in the record is the last draft with the fewest failing checks (a rewrite
that made things worse does not replace a better earlier draft).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..llm.base import LLM, GenParams, LLMError
from ..prompts import render
from ..records import utc_now
from .checks import Checker, Scored
from .rules import GateRules


@dataclass
class RefineStats:
    attempted: int = 0
    improved: int = 0  # ended with fewer failing checks than it started with
    fixed: int = 0  # ended with no failing soft check
    rounds: int = 0
    errors: int = 0


def problems_of(sc: Scored, failing: list[str]) -> list[str]:
    return [f"{name}: {sc.details.get(name) or sc.scores.get(name)}" for name in failing]


class Refiner:
    def __init__(self, llm: LLM, checker: Checker, rules: GateRules, *, rounds: int, seed: int = 0,
                 max_tokens: int = 1024):
        self.llm, self.checker, self.rules = llm, checker, rules
        self.rounds, self.seed, self.max_tokens = rounds, seed, max_tokens
        self.stats = RefineStats()

    async def _ask(self, name: str, variables: dict, round_no: int, rid: str):
        prompt = render(name, self.llm.profile, **variables)
        params = GenParams(temperature=0.0 if name == "critique" else 0.3, max_tokens=self.max_tokens,
                           seed=hash_seed(self.seed, rid, round_no, name))
        c = await self.llm.generate(prompt, params)
        return prompt, c

    async def refine(self, sc: Scored) -> Scored:
        """One record through the critique -> rewrite -> re-check loop; returns its final Scored."""
        failing = self.rules.soft_failures(sc.scores)
        if not failing or self.rounds <= 0:
            return sc
        self.stats.attempted += 1
        r = sc.record
        history = list(r.lineage.history)
        best, best_fail, start_fail = sc, len(self.rules.failures(sc.scores)), len(self.rules.failures(sc.scores))
        current = sc
        for k in range(1, self.rounds + 1):
            base = {"instruction": r.instruction, "input": r.input, "response": current_output(current)}
            try:
                cp, critique = await self._ask("critique", {**base, "problems": problems_of(current, failing)}, k, r.id)
                rp, rewrite = await self._ask("refine", {**base, "critique": critique.text.strip()}, k, r.id)
            except LLMError as exc:
                self.stats.errors += 1
                history.append({"kind": "error", "round": k, "stage": "refine", "error": str(exc)[:300]})
                break
            self.stats.rounds += 1
            new_text = rewrite.text.strip()
            history.append({"kind": "draft", "round": k - 1, "output": base["response"],
                            "scores": dict(current.scores), "problems": problems_of(current, failing)})
            history.append({"kind": "critique", "round": k, "text": critique.text.strip(), "model": self.llm.model_id,
                            "template": cp.template_id, "template_hash": cp.hash, "timestamp": utc_now()})
            if not new_text:
                history.append({"kind": "refine_empty", "round": k, "template": rp.template_id})
                break
            (rescored,) = await self.checker.score([r], [new_text], judge_complexity=False)
            # complexity belongs to the instruction, which refine does not change
            for key in ("complexity", "complexity_judge"):
                if key in current.scores:
                    rescored.scores[key] = current.scores[key]
            rescored.details["_output"] = new_text
            rescored.details["_refine"] = f"{rp.template_id}@{rp.hash}"
            current = rescored
            n_fail = len(self.rules.failures(current.scores))
            if n_fail <= best_fail:
                best, best_fail = current, n_fail
            failing = self.rules.soft_failures(current.scores)
            if not failing:
                break
        history.append({"kind": "final", "output": current_output(best), "scores": dict(best.scores),
                        "model": self.llm.model_id, "timestamp": utc_now()})
        if best_fail < start_fail:
            self.stats.improved += 1
        if not self.rules.soft_failures(best.scores):
            self.stats.fixed += 1
        out = best.record.model_copy(update={
            "output": current_output(best),
            "lineage": best.record.lineage.model_copy(update={"history": history}),
            "meta": {**best.record.meta, "refine_rounds": sum(1 for h in history if h.get("kind") == "critique")},
        })
        best.record = out
        best.details.pop("_output", None)
        best.details.pop("_refine", None)
        return best


def current_output(sc: Scored) -> str:
    return sc.details.get("_output", sc.record.output)


def hash_seed(seed: int, rid: str, round_no: int, what: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(f"{seed}:{rid}:{round_no}:{what}".encode(), digest_size=4).digest(), "big")

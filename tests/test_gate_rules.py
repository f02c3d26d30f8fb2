"""The gate's decision rules at their bounds: each default check passes exactly on its bound and fails just
past it with its documented action; statuses combine to the worst; configs merge, validate and fail clearly;
high-stakes domains need `min_hits` distinct whole-word keywords."""

from __future__ import annotations

import re

import pytest

from dataforge.errors import DataforgeError
from dataforge.quality.rules import CheckRule, DomainDetector, HighStakes, _merge, decide, load_rules, worse

# check -> (bound kind, bound, action on failure), as default_gate.yaml documents them
DEFAULTS = {
    "coherence": ("min", 0.30, "review"),
    "alignment": ("min", 0.50, "review"),
    "alignment_emb": ("min", 0.98, "review"),
    "alignment_local": ("min", 0.95, "review"),
    "format": ("min", 1.0, "review"),
    "truncation": ("min", 1.0, "review"),
    "structure": ("min", 1.0, "reject"),
    "refusal": ("min", 1.0, "reject"),
    "contradiction": ("max", 0.5, "reject"),
    "complexity": ("max", 9.0, "reject"),
    "reference_answer": ("min", 1.0, "review"),
    "arithmetic": ("min", 1.0, "review"),
    "execution": ("min", 1.0, "review"),
    "consistency": ("min", 0.5, "review"),
}
STATUS = {"review": "review", "reject": "rejected"}
EPS = 1e-6


def test_the_default_checks_are_the_documented_ones():
    rules = load_rules()
    assert set(rules.checks) == set(DEFAULTS) | {"reference"}
    ref = rules.checks["reference"]
    assert ref.min is None and ref.max is None and ref.on_fail == "review"  # informational: never fails
    assert rules.judges == "auto" and rules.high_stakes.enabled and rules.high_stakes.min_hits == 2
    assert set(rules.high_stakes.domains) == {"finance", "law", "health"}
    d = rules.dedup
    assert d.exact and d.near.enabled and (d.near.threshold, d.near.num_perm, d.near.shingle) == (0.8, 128, 5)
    assert d.semantic.enabled and (d.semantic.threshold, d.semantic.block) == (0.95, 4096)
    for name, (kind, bound, action) in DEFAULTS.items():
        rule = rules.checks[name]
        assert getattr(rule, kind) == bound and rule.on_fail == action, name
        assert getattr(rule, "max" if kind == "min" else "min") is None, name


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_each_default_check_at_its_bound(name):
    kind, bound, action = DEFAULTS[name]
    rules = load_rules()
    outside = bound - EPS if kind == "min" else bound + EPS
    inside = bound + EPS if kind == "min" else bound - EPS
    assert decide({name: bound}, rules) == ("accepted", [])  # the bound itself passes
    assert decide({name: inside}, rules) == ("accepted", [])
    status, reasons = decide({name: outside}, rules)
    assert status == STATUS[action]
    assert reasons == [f"{name}:{outside:.3g}"]
    assert rules.failures({name: outside}) == [(name, action)]


def test_a_missing_score_never_fails():
    rules = load_rules()
    assert decide({}, rules) == ("accepted", [])
    assert not CheckRule(min=0.5).fails(None) and not CheckRule(max=0.5).fails(None)
    assert decide({"reference": 0.0, "unknown_score": -5.0}, rules) == ("accepted", [])


def test_min_and_max_on_one_rule():
    rule = CheckRule(min=2.0, max=4.0, on_fail="reject")
    assert [rule.fails(v) for v in (1.999, 2.0, 3.0, 4.0, 4.001)] == [True, False, False, False, True]
    assert CheckRule().fails(-1e9) is False  # no bound at all: nothing fails
    assert CheckRule().on_fail == "review"


def test_status_is_the_worst_action_and_every_failure_is_a_reason():
    rules = load_rules()
    status, reasons = decide({"coherence": 0.1, "alignment_emb": 0.5}, rules)
    assert status == "review" and reasons == ["coherence:0.1", "alignment_emb:0.5"]
    status, reasons = decide({"coherence": 0.1, "refusal": 0.0}, rules)
    assert status == "rejected" and reasons == ["coherence:0.1", "refusal:0"]
    # review after reject stays rejected (order of the checks does not matter)
    assert decide({"structure": 0.0, "format": 0.5}, rules)[0] == "rejected"
    assert decide({"coherence": 0.123456}, rules)[1] == ["coherence:0.123"]  # 3 significant digits


def test_extra_failures_and_their_reasons():
    rules = load_rules()
    status, reasons = decide({}, rules, extra=[("duplicate_of:abc", "reject")])
    assert status == "rejected" and reasons == ["duplicate_of:abc"]
    # a duplicate reason never gets a value appended, even when a score of that name exists
    assert decide({"duplicate": 0.9}, rules, extra=[("duplicate", "review")]) == ("review", ["duplicate"])
    assert decide({}, rules, extra=[("high_stakes:health", "review")]) == ("review", ["high_stakes:health"])
    # an integer score is shown as it is (only floats are formatted)
    assert decide({"structure": 0}, rules)[1] == ["structure"]


def test_worse():
    order = ["accepted", "review", "rejected"]
    for a in order:
        for b in order:
            assert worse(a, b) == order[max(order.index(a), order.index(b))]


def test_soft_failures_are_the_refinable_ones():
    rules = load_rules()
    scores = {"coherence": 0.1, "structure": 0.0, "contradiction": 0.9, "complexity": 9.5}
    assert rules.soft_failures(scores) == ["coherence", "contradiction"]
    assert rules.soft_failures({**scores, "arithmetic": 0.0, "consistency": 0.2}) == ["coherence", "contradiction",
                                                                                     "arithmetic"]
    assert rules.refine.rounds == 2
    assert rules.refine.checks == ["coherence", "alignment", "alignment_emb", "alignment_local", "format",
                                   "truncation", "contradiction", "arithmetic", "execution", "reference_answer"]


def test_merge_is_deep_except_for_domains():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "domains": {"law": ["court"]}, "k": 1}
    over = {"a": {"y": {"q": 3}}, "domains": {"health": ["doctor"]}, "k": {"new": 1}}
    out = _merge(base, over)
    assert out == {"a": {"x": 1, "y": {"p": 1, "q": 3}}, "domains": {"health": ["doctor"]}, "k": {"new": 1}}
    assert base["a"]["y"]["q"] == 2  # the defaults are never modified
    nested = _merge({"high_stakes": {"domains": {"law": ["court"]}, "min_hits": 2}},
                    {"high_stakes": {"domains": {"health": ["doctor"]}}})
    assert nested == {"high_stakes": {"domains": {"health": ["doctor"]}, "min_hits": 2}}


def test_user_config_replaces_domains_and_keeps_other_defaults(tmp_path):
    cfg = tmp_path / "gate.yaml"
    cfg.write_text("high_stakes:\n  domains:\n    pets: [veterinarian, vet bill]\n"
                   "checks:\n  contradiction: {max: 0.2}\n")
    rules = load_rules(cfg)
    assert rules.high_stakes.domains == {"pets": ["veterinarian", "vet bill"]} and rules.high_stakes.min_hits == 2
    assert rules.checks["contradiction"].max == 0.2 and rules.checks["contradiction"].on_fail == "reject"
    assert rules.dedup.near.threshold == 0.8 and rules.judges == "auto"
    over = load_rules(cfg, overrides={"checks": {"contradiction": {"max": 0.7}}, "judges": "off"})
    assert over.checks["contradiction"].max == 0.7 and over.judges == "off"
    assert load_rules(overrides={}).checks == load_rules().checks


def test_config_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(DataforgeError, match=r"nope\.yaml: gate config not found"):
        load_rules(missing)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("checks: [unclosed\n")
    with pytest.raises(DataforgeError, match=r"bad\.yaml: not valid YAML"):
        load_rules(bad_yaml)
    listed = tmp_path / "list.yaml"
    listed.write_text("- coherence\n")
    with pytest.raises(DataforgeError, match=r"list\.yaml: the gate config must be a mapping"):
        load_rules(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_rules(empty).checks == load_rules().checks  # an empty file keeps every default
    typo = tmp_path / "typo.yaml"
    typo.write_text("checks:\n  coherence: {min: 0.3, on_fail: drop}\n")
    with pytest.raises(DataforgeError) as e:
        load_rules(typo)
    assert str(e.value).startswith(f"{typo}: bad gate config: checks.coherence.on_fail:")
    with pytest.raises(DataforgeError, match=r"^bad gate config: refine\.rounds:"):
        load_rules(overrides={"refine": {"rounds": -1}})
    with pytest.raises(DataforgeError) as e:  # every error named, one after the other
        load_rules(overrides={"refine": {"rounds": -1}, "dedup": {"near": {"threshold": 0}}})
    assert re.fullmatch(r"bad gate config: refine\.rounds: [^;]+; dedup\.near\.threshold: [^;]+", str(e.value))
    with pytest.raises(DataforgeError, match="dedup.near.threshold"):
        load_rules(overrides={"dedup": {"near": {"threshold": 0}}})


def test_domains_need_min_hits_distinct_whole_word_keywords():
    cfg = HighStakes(min_hits=2, domains={"health": ["dose", "side effects", "doctor"], "law": ["court", "sue"]})
    d = DomainDetector(cfg)
    assert d.detect("Ask your doctor about the dose.") == ["health"]
    assert d.detect("Ask your doctor.") == []                               # one hit < min_hits
    assert d.detect("doctor doctor doctor") == []                           # distinct keywords count, not hits
    assert d.detect("The DOCTOR listed SIDE\n  EFFECTS.") == ["health"]     # any case, any whitespace inside
    assert d.detect("doctors discuss overdoses and dosage") == []           # whole words only
    assert d.detect("sue them in court; the doctor gave a dose") == ["health", "law"]
    assert DomainDetector(HighStakes(min_hits=1, domains=cfg.domains)).detect("see a doctor") == ["health"]
    assert DomainDetector(HighStakes(enabled=False, domains=cfg.domains)).detect("doctor dose court sue") == []

"""Every constraint checker at its boundaries: exactly n, n - 1 and n + 1 for each relation, the empty response,
non-ASCII text, and the exact detail a failure reports; plus the registry, spec validation and the text measures
the checkers count with."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dataforge.constraints import (CONSTRAINTS, RELATIONS, check, check_all, compatible_types, conflicting,
                                   get_type, make_spec, phrase, sample_constraint)
from dataforge.constraints import text as T
from dataforge.constraints.base import ConstraintType, compare, plural, register, relation_words
from dataforge.errors import DataforgeError

# type -> (unit in the detail, a response with k units)
COUNTED = {
    "word_count": ("word", lambda k: " ".join(["naïve"] * k)),
    "sentence_count": ("sentence", lambda k: " ".join(["Ça va."] * k)),
    "paragraph_count": ("paragraph", lambda k: "\n\n".join(["Straße."] * k)),
}
EXACT_ONLY = {  # exact count, no relation
    "bullet_count": ("bullet point", lambda k: "\n".join(["* été"] * k)),
    "sections": ("header line", lambda k: "\n".join(["## Über\ntext"] * k)),
}
N = 3


def _ok(ctype: str, response: str, **params) -> tuple[bool, str]:
    res = check(make_spec(ctype, **params), response)
    return res.ok, res.detail


@pytest.mark.parametrize("ctype", sorted(COUNTED))
def test_counting_relations_at_n_and_either_side(ctype):
    unit, make = COUNTED[ctype]
    want = {"at_most": (True, True, False), "at_least": (False, True, True), "exactly": (False, True, False)}
    for rel, (below, at, above) in want.items():
        got = tuple(_ok(ctype, make(k), relation=rel, n=N)[0] for k in (N - 1, N, N + 1))
        assert got == (below, at, above), (ctype, rel)
        ok, detail = _ok(ctype, make(N + 1), relation=rel, n=N)
        assert detail == f"{N + 1} {unit}s, wanted {rel.replace('_', ' ')} {N}"
    assert _ok(ctype, make(1), relation="exactly", n=1) == (True, f"1 {unit}, wanted exactly 1")


@pytest.mark.parametrize("ctype", sorted(COUNTED))
def test_counting_on_an_empty_response(ctype):
    unit, _ = COUNTED[ctype]
    assert _ok(ctype, "", relation="at_most", n=2) == (True, f"0 {unit}s, wanted at most 2")
    assert _ok(ctype, "   \n\n ", relation="at_least", n=1) == (False, f"0 {unit}s, wanted at least 1")
    assert not _ok(ctype, "", relation="exactly", n=1)[0]


@pytest.mark.parametrize("ctype", sorted(EXACT_ONLY))
def test_exact_counts_at_n_and_either_side(ctype):
    unit, make = EXACT_ONLY[ctype]
    assert [_ok(ctype, make(k), n=N)[0] for k in (N - 1, N, N + 1)] == [False, True, False]
    assert _ok(ctype, make(N + 1), n=N) == (False, f"{N + 1} {unit}s, wanted exactly {N}")
    assert _ok(ctype, make(1), n=1) == (True, f"1 {unit}, wanted exactly 1")
    assert _ok(ctype, "", n=1) == (False, f"0 {unit}s, wanted exactly 1")


def test_count_params_may_arrive_as_strings():
    """Specs come back from JSON files; an "n" that is a numeric string still counts as a number."""
    assert check({"type": "word_count", "params": {"relation": "exactly", "n": "2"}}, "two words").ok
    assert check({"type": "bullet_count", "params": {"n": "2"}}, "* a\n* b").ok
    assert check({"type": "sections", "params": {"n": "1"}}, "# a").ok
    assert check({"type": "placeholders", "params": {"n": "1"}}, "[x]").ok
    assert check({"type": "highlights", "params": {"n": "1"}}, "*x*").ok
    assert check({"type": "keyword_frequency", "params": {"keyword": "a", "relation": "exactly", "n": "1"}}, "a").ok


def test_counting_phrases():
    assert phrase(make_spec("word_count", relation="at_most", n=1)) == "Answer in at most 1 word."
    assert phrase(make_spec("word_count", relation="at_least", n=50)) == "Answer in at least 50 words."
    assert phrase(make_spec("sentence_count", relation="exactly", n=2)) == \
        "Your response must contain exactly 2 sentences."
    assert phrase(make_spec("paragraph_count", relation="at_most", n=3)) == \
        "Write at most 3 paragraphs, separated by blank lines."
    assert phrase(make_spec("bullet_count", n=1)) == \
        "Lay the answer out as exactly 1 bullet point in Markdown, one per line, each line opening with '* '."
    assert phrase(make_spec("bullet_count", n=3, form=2)) == \
        "Structure the reply as precisely 3 bullet points (Markdown lines that begin with '* ')."
    assert phrase(make_spec("sections", n=2)).startswith("Organise your answer into exactly 2 sections, each")


def test_counting_samplers_draw_from_their_tables():
    rng = random.Random(5)
    choices = {"word_count": {"at_most": {50, 80, 100, 150, 200}, "at_least": {60, 100, 150, 200},
                              "exactly": {20, 30, 40}},
               "sentence_count": {"at_most": {2, 3, 4, 5}, "at_least": {3, 4, 5, 6}, "exactly": {1, 2, 3, 4}},
               "paragraph_count": {"at_most": {2, 3}, "at_least": {2, 3, 4}, "exactly": {2, 3, 4}}}
    for ctype, table in choices.items():
        rels = Counter()
        seen = {rel: set() for rel in table}
        for _ in range(3000):
            p = CONSTRAINTS[ctype].sample(rng, None)
            assert set(p) == {"relation", "n"}
            rels[p["relation"]] += 1
            seen[p["relation"]].add(p["n"])
        assert seen == table, ctype  # every listed n is drawn, nothing else
        # relation weights 0.5 / 0.35 / 0.15
        assert abs(rels["at_most"] / 3000 - 0.5) < 0.04 and abs(rels["at_least"] / 3000 - 0.35) < 0.04
        assert abs(rels["exactly"] / 3000 - 0.15) < 0.03
    for ctype, lo, hi in (("bullet_count", 2, 6), ("sections", 2, 4)):
        ns = {CONSTRAINTS[ctype].sample(rng, None)["n"] for _ in range(300)}
        assert ns == set(range(lo, hi + 1)), ctype


def test_sections_phrase_names_the_marker_or_the_header():
    sections = CONSTRAINTS["sections"]
    assert sections.phrase({"n": 3, "marker": "SECTION"}) == (
        "Divide your answer into exactly 3 sections and open each one with a line reading SECTION 1, "
        "SECTION 2 and so on.")
    assert sections.phrase({"n": "1", "marker": "PART"}).startswith("Divide your answer into exactly 1 section and")
    for p in ({"n": 2}, {"n": 2, "marker": ""}):
        assert sections.phrase(p) == ("Organise your answer into exactly 2 sections, each starting with a Markdown "
                                      "header line such as '## Overview'.")


def test_letter_and_capital_samplers_draw_common_or_rare_letters():
    rng = random.Random(11)
    letters = [CONSTRAINTS["letter_frequency"].sample(rng, None) for _ in range(2000)]
    common = [p for p in letters if p["relation"] == "at_least"]
    rare = [p for p in letters if p["relation"] == "at_most"]
    assert len(common) + len(rare) == 2000 and abs(len(common) / 2000 - 0.6) < 0.04
    assert {p["letter"] for p in common} == set("etaoinsrhl") and {p["n"] for p in common} == set(range(5, 16))
    assert {p["letter"] for p in rare} == set("zqxjkv") and {p["n"] for p in rare} == {1, 2, 3}
    caps = [CONSTRAINTS["capital_word_frequency"].sample(rng, None) for _ in range(1000)]
    assert abs(sum(p["relation"] == "at_least" for p in caps) / 1000 - 0.6) < 0.05
    assert {p["n"] for p in caps if p["relation"] == "at_least"} == set(range(2, 7))
    assert {p["n"] for p in caps if p["relation"] == "at_most"} == set(range(1, 5))


# ---------------------------------------------------------------- keywords


def test_keywords_whole_word_any_case_unicode():
    assert _ok("include_keywords", "Das ÜBER-Café ist offen.", keywords=["café"]) == (True, "all keywords present")
    assert _ok("include_keywords", "cafés", keywords=["café"]) == (False, "missing ['café']")
    assert _ok("include_keywords", "ice and cream", keywords=["ice cream", "and"]) == (False, "missing ['ice cream']")
    assert _ok("include_keywords", "", keywords=["a", "b"]) == (False, "missing ['a', 'b']")
    assert _ok("exclude_keywords", "veryvery good", keywords=["very"]) == (True, "no forbidden word used")
    assert _ok("exclude_keywords", "Very good, really.", keywords=["very", "really", "just"]) == \
        (False, "used forbidden ['very', 'really']")
    assert _ok("exclude_keywords", "", keywords=["very"])[0]


def test_keyword_frequency_at_n_and_either_side():
    make = lambda k: " ".join(["Wasser"] * k) + " und Brot"  # noqa: E731
    want = {"at_most": (True, True, False), "at_least": (False, True, True), "exactly": (False, True, False)}
    for rel, expected in want.items():
        got = tuple(_ok("keyword_frequency", make(k), keyword="wasser", relation=rel, n=2)[0] for k in (1, 2, 3))
        assert got == expected, rel
    assert _ok("keyword_frequency", make(1), keyword="wasser", relation="at_least", n=2)[1] == \
        '"wasser" used 1 time, wanted at least 2'
    assert _ok("keyword_frequency", "", keyword="x", relation="exactly", n=0) == \
        (True, '"x" used 0 times, wanted exactly 0')
    assert phrase(make_spec("keyword_frequency", keyword="tide", relation="at_least", n=1)) == \
        'Use the word "tide" at least 1 time.'


def test_keyword_pool_bounds():
    """Instruction words of 4+ letters (no task verbs) first; generic words only to top up a short pool."""
    from dataforge.constraints.form import GENERIC_KEYWORDS, _keywords

    seeds = range(40)
    assert {_keywords(random.Random(s), "Paint oils, sun.", 1)[0] for s in seeds} == {"paint", "oils"}  # 4: yes, 3: no
    assert {w for s in seeds for w in _keywords(random.Random(s), "glaciers carve", 2)} == {"glaciers", "carve"}
    topped = [_keywords(random.Random(s), "Describe glaciers.", 2) for s in seeds]
    assert any("glaciers" in k for k in topped) and all(set(k) <= {"glaciers", *GENERIC_KEYWORDS} for k in topped)
    assert all(_keywords(random.Random(s), None, 1)[0] in GENERIC_KEYWORDS for s in seeds)
    # keyword_frequency takes its one keyword from the instruction when it has one, and n from 2-4
    freq = [sample_constraint(random.Random(s), "Describe glaciers.", types=["keyword_frequency"])["params"]
            for s in range(300)]
    assert {f["keyword"] for f in freq} == {"glaciers"} and {f["n"] for f in freq} == {2, 3, 4}
    rels = Counter(f["relation"] for f in freq)
    assert set(rels) == {"at_least", "exactly", "at_most"} and 0.4 < rels["at_least"] / 300 < 0.6  # 2 x at_least, 1, 1


def test_the_counting_factory_wires_its_parts():
    """`_counting` builds a type from a measure, a unit, a choice table and a template (called here directly,
    so what it wires is checked, not only the types the module made at import)."""
    from dataforge.constraints.counts import _counting

    table = {"at_most": (7,), "at_least": (8,), "exactly": (9,)}
    try:
        ct = _counting("test_letters", "letter", lambda s: sum(c.isalpha() for c in s), table, "letters only",
                       "Use {rel} {count}.")
        assert CONSTRAINTS["test_letters"] is ct and ct.name == "test_letters" and ct.summary == "letters only"
        assert ct.conflicts == frozenset() and ct.weight == 1.0
        rng = random.Random(0)
        for _ in range(30):
            p = ct.sample(rng, "ignored")
            assert p == {"relation": p["relation"], "n": table[p["relation"]][0]}
        assert ct.phrase({"relation": "at_most", "n": 1}) == "Use at most 1 letter."
        assert ct.phrase({"relation": "exactly", "n": "2"}) == "Use exactly 2 letters."
        assert ct.check({"relation": "exactly", "n": 3}, "a1b2c") == (True, "3 letters, wanted exactly 3")
        assert ct.check({"relation": "at_least", "n": "4"}, "abc") == (False, "3 letters, wanted at least 4")
    finally:
        CONSTRAINTS.pop("test_letters", None)


def test_keyword_samplers_use_the_instruction_or_fall_back():
    from dataforge.constraints.form import FILLER_WORDS, GENERIC_KEYWORDS, TASK_VERBS, _keywords, _quoted

    rng = random.Random(1)
    ins = "Explain how glaciers carve valleys in 2 steps; describe moraines too."
    for _ in range(50):
        (k,) = _keywords(rng, ins, 1)
        assert k in {"glaciers", "carve", "valleys", "steps", "moraines"}  # >= 4 letters, no task verb
    assert set(_keywords(random.Random(0), "Do it.", 2)) <= set(GENERIC_KEYWORDS)
    assert len(set(_keywords(random.Random(0), "glaciers", 3))) == 3  # topped up, never repeated
    assert "explain" in TASK_VERBS and "describe" in TASK_VERBS
    assert _quoted(["a"], "and") == '"a"' and _quoted(["a", "b", "c"], "or") == '"a", "b" or "c"'
    spec = sample_constraint(random.Random(2), ins, types=["exclude_keywords"])
    assert 1 <= len(spec["params"]["keywords"]) <= 2 and set(spec["params"]["keywords"]) <= set(FILLER_WORDS)
    freq = sample_constraint(random.Random(3), ins, types=["keyword_frequency"])["params"]
    assert freq["relation"] in RELATIONS and 2 <= freq["n"] <= 4 and freq["keyword"] in ins.lower()
    assert phrase(make_spec("include_keywords", keywords=["tide"])) == 'Include the word "tide" in your response.'
    assert phrase(make_spec("exclude_keywords", keywords=["very", "just"])) == \
        'Do not use the words "very" or "just" anywhere in your response.'


# ---------------------------------------------------------------- openings, endings, case, punctuation


def test_start_and_end_phrases():
    assert _ok("start_with", "\n  short ANSWER: oui", phrase="Short answer:") == (True, "starts with the phrase")
    assert _ok("start_with", "Answer: Short answer:", phrase="Short answer:") == \
        (False, "starts with 'Answer: Short answer:'")
    assert _ok("start_with", "", phrase="In brief:") == (False, "starts with ''")
    long = "x" * 50
    assert _ok("start_with", "  " + long, phrase="In brief:")[1] == f"starts with {long[:40]!r}"
    assert _ok("end_with", "Fin. THAT IS ALL.\n", phrase="That is all.") == (True, "ends with the phrase")
    assert _ok("end_with", "That is all. Bye", phrase="That is all.") == (False, "ends with 'That is all. Bye'")
    assert _ok("end_with", long + "  ", phrase="Hope this helps.")[1] == f"ends with {long[-40:]!r}"


def test_case_checks_count_letters_only():
    assert _ok("lowercase", "été à 3 h, ok!") == (True, "all lowercase")
    assert _ok("lowercase", "Été Ok") == (False, "2 letters not lowercase")
    assert _ok("uppercase", "ÉTÉ 42!") == (True, "all uppercase")
    assert _ok("uppercase", "ÉTé Ok") == (False, "2 letters not uppercase")
    for ctype in ("lowercase", "uppercase"):
        assert _ok(ctype, "") == (False, "no letters") and _ok(ctype, "123 !?") == (False, "no letters")


def test_commas_ascii_and_fullwidth():
    assert _ok("no_commas", "Kein Komma hier.") == (True, "no commas")
    assert _ok("no_commas", "一，二") == (False, "1 comma")
    assert _ok("no_commas", "a, b, c") == (False, "2 commas")
    assert _ok("no_commas", "") == (True, "no commas")


# ---------------------------------------------------------------- structure


def test_json_bodies():
    assert _ok("json_format", ' \n{"ü": 1}\n ') == (True, "valid JSON")
    assert _ok("json_format", "```json\n[1, 2]\n```") == (True, "valid JSON")
    assert _ok("json_format", "```\n{}\n```") == (True, "valid JSON")
    assert _ok("json_format", "42") == (False, "JSON, but a bare value rather than an object or array")
    assert _ok("json_format", '"text"')[1].startswith("JSON, but a bare value")
    ok, detail = _ok("json_format", "")
    assert not ok and detail.startswith("not valid JSON: ")
    assert not _ok("json_format", "Here it is: {}")[0]


def test_placeholders_at_n_and_shape():
    assert _ok("placeholders", "[a] [b]", n=2) == (True, "2 placeholders, wanted at least 2")
    assert _ok("placeholders", "[a] [b] [c]", n=2)[0]
    assert _ok("placeholders", "[a]", n=2) == (False, "1 placeholder, wanted at least 2")
    assert _ok("placeholders", "[" + "x" * 60 + "]", n=1)[0]                 # 60 characters: a placeholder
    assert not _ok("placeholders", "[" + "x" * 61 + "]", n=1)[0]             # 61: not one
    assert not _ok("placeholders", "[]", n=1)[0] and not _ok("placeholders", "[a\nb]", n=1)[0]
    assert not _ok("placeholders", "[link](http://x)", n=1)[0]               # a Markdown link is no placeholder
    assert _ok("placeholders", "[straße] [日本]", n=2)[0]
    assert phrase(make_spec("placeholders", n=1)) == \
        "Include at least 1 placeholder in square brackets, such as [address]."


def test_title_and_highlights():
    assert _ok("title", "<<Été>>\nbody") == (True, "title <<Été>>")
    assert _ok("title", "<< >> body") == (False, "no <<title>> found")
    assert _ok("title", "<<a\nb>>")[0] is False
    assert _ok("highlights", "*a* and **b c**", n=2) == (True, "2 highlighted sections, wanted at least 2")
    assert _ok("highlights", "*a*", n=2) == (False, "1 highlighted section, wanted at least 2")
    assert _ok("highlights", "* not a highlight*", n=1) == (False, "0 highlighted sections, wanted at least 1")
    assert _ok("highlights", "*!?*", n=1)[0] is False                        # no word inside
    assert _ok("highlights", "*été*", n=1)[0]


def test_quotation_marks():
    assert _ok("quotation", '  "Ja."  ') == (True, "wrapped in double quotes")
    assert _ok("quotation", "“Curly”")[0]
    assert _ok("quotation", '""')[0]
    assert _ok("quotation", '"') == (False, "not wrapped in double quotes")
    assert not _ok("quotation", 'X quoted"')[0] and not _ok("quotation", '"quoted X')[0]
    assert not _ok("quotation", "'single'")[0] and not _ok("quotation", '"open')[0] and not _ok("quotation", "")[0]


def test_postscript_marker_and_position():
    assert _ok("postscript", "Body.\n  P.S. später mehr", marker="P.S.") == (True, "postscript P.S. present")
    assert _ok("postscript", "Body. P.S. inline", marker="P.S.") == (False, "no line starting with P.S.")
    assert _ok("postscript", "Body.\nP.S.", marker="P.S.") == (False, "no line starting with P.S.")  # nothing after
    assert _ok("postscript", "Body.\nP.P.S. note", marker="P.S.")[0] is False
    assert _ok("postscript", "\n P.S. alone", marker="P.S.") == (False, "P.S. is the whole response, not a postscript")
    assert check({"type": "postscript", "params": {}}, "Body.\nP.S. note").ok  # the marker defaults to P.S.
    assert _ok("postscript", "Body.\nPxSx note", marker="P.S.")[0] is False  # the marker is literal, not a pattern


# ---------------------------------------------------------------- registry, relations, specs


def test_relations_and_words():
    assert [compare(v, "at_most", 2) for v in (1, 2, 3)] == [True, True, False]
    assert [compare(v, "at_least", 2) for v in (1, 2, 3)] == [False, True, True]
    assert [compare(v, "exactly", 2) for v in (1, 2, 3)] == [False, True, False]
    with pytest.raises(DataforgeError, match=r"unknown relation 'about'; use one of at_most, at_least, exactly"):
        compare(1, "about", 1)
    assert relation_words("at_least") == "at least" and plural(1, "word") == "1 word" and plural(0, "word") == "0 words"
    assert plural(2, "word") == "2 words"


def test_registry_refuses_duplicates_and_names_known_types():
    ct = ConstraintType("test_only_type", "x", lambda r, i: {}, lambda p: "", lambda p, s: (True, ""))
    try:
        assert register(ct) is ct and CONSTRAINTS["test_only_type"] is ct
        with pytest.raises(ValueError, match="constraint type 'test_only_type' registered twice"):
            register(ct)
        assert CONSTRAINTS["test_only_type"] is ct
    finally:
        CONSTRAINTS.pop("test_only_type", None)
    with pytest.raises(DataforgeError) as e:
        get_type("nope")
    assert str(e.value) == f"unknown constraint type 'nope'; known: {', '.join(sorted(CONSTRAINTS))}"
    assert get_type("title").name == "title"


def test_conflicts_are_symmetric_and_weights_drive_sampling():
    names = sorted(CONSTRAINTS)
    for a in names:
        assert conflicting(a, a)
        for b in names:
            assert conflicting(a, b) == conflicting(b, a)
    assert conflicting("json_format", "title") and not conflicting("word_count", "title")
    assert compatible_types(["json_format"], ["title", "no_commas", "word_count"]) == ["word_count"]
    assert compatible_types([make_spec("lowercase")], ["uppercase", "title"]) == ["title"]
    with pytest.raises(DataforgeError, match="unknown constraint type"):
        compatible_types([], ["title", "nope"])
    with pytest.raises(DataforgeError, match=r"^no constraint type is compatible with the ones already attached$"):
        sample_constraint(random.Random(0), existing=["lowercase"], types=["uppercase"])
    # weights: quotation (0.5) is drawn about half as often as title (1.0)
    rng = random.Random(9)
    drawn = Counter(sample_constraint(rng, types=["quotation", "title"])["type"] for _ in range(3000))
    assert 0.42 < drawn["quotation"] / drawn["title"] < 0.58


def test_spec_validation_errors():
    with pytest.raises(DataforgeError, match="needs a 'type' key"):
        check({"params": {}}, "x")
    with pytest.raises(DataforgeError, match="needs a 'type' key"):
        check(["word_count"], "x")  # type: ignore[arg-type]
    with pytest.raises(DataforgeError, match=r"constraint 'title': 'params' must be an object, got \[1\]"):
        check({"type": "title", "params": [1]}, "x")
    with pytest.raises(DataforgeError, match=r"constraint 'word_count': bad params \{'n': 3\}"):
        phrase({"type": "word_count", "params": {"n": 3}})
    with pytest.raises(DataforgeError, match=r"constraint 'bullet_count': bad params \{'n': 'many'\}"):
        check({"type": "bullet_count", "params": {"n": "many"}}, "* a")
    assert check({"type": "no_commas"}, None).ok  # type: ignore[arg-type]  # no params, no response: fine
    assert check({"type": "no_commas", "params": None}, "").type == "no_commas"
    spec = make_spec("word_count", relation="at_most", n=5)
    assert spec == {"type": "word_count", "params": {"relation": "at_most", "n": 5},
                    "phrase": "Answer in at most 5 words."}
    assert [r.ok for r in check_all([spec, make_spec("no_commas")], "a, b")] == [True, False]


# ---------------------------------------------------------------- the text measures


def test_words_sentences_paragraphs():
    assert T.words("naïve café Über straße rock’n’roll well-known it's 3.14") == \
        ["naïve", "café", "Über", "straße", "rock’n’roll", "well-known", "it's", "3", "14"]
    assert T.word_count("") == 0 and T.word_count("— ... !! → ✓") == 0
    # punctuation of any script separates words and is never one (em dash, full-width comma and stop)
    assert T.words("Hello — world") == ["Hello", "world"] and T.words("你好，世界。好") == ["你好", "世界", "好"]
    assert T.words("nai\u0308ve snake_case") == ["nai\u0308ve", "snake", "case"]  # a combining accent stays inside
    assert T.sentences('He said "Stop." Then left! Why? Fragment') == ['He said "Stop.', "Then left!", "Why?",
                                                                      "Fragment"]
    assert T.sentences("A.\n\nB") == ["A.", "B"] and T.sentences("  ") == [] and T.sentences("... !") == []
    assert T.sentences("v3.2 is out.") == ["v3.2 is out."]  # no whitespace after the dot: one sentence
    assert T.paragraphs("a\n***\nb\n\n  \n\nc") == ["a", "b", "c"]
    assert T.paragraphs("a\nb") == ["a\nb"] and T.paragraphs("  \n ") == []


def test_bullets_headers_fences_phrases():
    assert T.bullets("* a\n  - b\n• c\n+ d\n1. e\n2) f\n*bold*\n-\n10.x") == \
        ["* a", "  - b", "• c", "+ d", "1. e", "2) f"]
    assert T.headers("# a\n###### b\n####### c\n#d\n  ## e") == ["# a", "###### b", "  ## e"]
    assert T.strip_code_fence("```json\n{}\n```") == "{}" and T.strip_code_fence("``` \n[1]```") == "[1]"
    assert T.strip_code_fence("x ```json\n{}\n```") == "x ```json\n{}\n```"  # text before the fence: unchanged
    assert T.strip_code_fence("```py\na\nb\n```\n") == "a\nb"
    assert T.count_phrase("Ice-cream ice cream ICE\tCREAM icecream", "ice cream") == 2
    assert T.count_phrase("a.b a", "a") == 2 and T.count_phrase("x", "  ") == 0 and T.count_phrase("", "x") == 0
    assert T.content_words("The 3 cats and THE cats ran 42 times, cats!") == ["cats", "ran", "times"]


def test_forms_ordinals_and_first_word_draws():
    from dataforge.constraints.base import pick_form
    from dataforge.constraints.layout import OPENERS_FIRST, OPENERS_LATER

    assert pick_form(("a", "b", "c"), {}) == "a" and pick_form(("a", "b", "c"), {"form": 4}) == "b"
    first_word = CONSTRAINTS["first_word"]
    assert first_word.phrase({"nth": 10, "word": "Next"}) == 'Begin the tenth paragraph of your answer with the word "Next".'
    assert first_word.phrase({"nth": 11, "word": "Next"}) == 'Begin the 11th paragraph of your answer with the word "Next".'
    rng = random.Random(4)
    draws = [first_word.sample(rng, None) for _ in range(400)]
    assert {p["nth"] for p in draws} == {1, 2, 3, 4} and {p["paragraphs"] for p in draws} == {2, 3, 4}
    assert all(p["nth"] <= p["paragraphs"] for p in draws)
    assert all(p["word"] in (OPENERS_FIRST if p["nth"] == 1 else OPENERS_LATER) for p in draws)

"""The response-language constraint ("answer entirely in Hindi"), checked with langdetect, a statistical
language identifier (a port of Google's language-detection) whose profiles ship in its PyPI package.

langdetect samples n-grams at random; we give it a detector factory of our own with a fixed seed, so
the same text always gets the same answer, without touching the library's global state. Measured
here on sentences in 12 languages: it named every text of ten words or more correctly except one
Swahili sentence, but short sentences (four words) often wrongly (Russian as Bulgarian, Ukrainian as
Russian). lingua was tried too: no better on short sentences, it called a long Ukrainian paragraph
Kazakh, and its models take 1.1 GB and 10-40 s to load. So: a text of fewer than `MIN_WORDS` words
that does not read as the wanted language is reported as *not checked*, never as passed or failed.
"""

from __future__ import annotations

import random
from functools import lru_cache

from . import text as T
from .base import ConstraintType, pick_form, register

# ISO 639-1 code -> English name, for the languages langdetect identifies. Names are what the phrase
# says and what the parser looks for; aliases are other names people use for the same code.
LANGUAGE_NAMES = {
    "af": "Afrikaans", "ar": "Arabic", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "cs": "Czech",
    "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish",
    "et": "Estonian", "fa": "Persian", "fi": "Finnish", "fr": "French", "gu": "Gujarati", "he": "Hebrew",
    "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese",
    "kn": "Kannada", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "mk": "Macedonian",
    "ml": "Malayalam", "mr": "Marathi", "ne": "Nepali", "nl": "Dutch", "no": "Norwegian", "pa": "Punjabi",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "so": "Somali", "sq": "Albanian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
    "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese",
    "zh": "Chinese",
}
LANGUAGE_ALIASES = {"farsi": "fa", "mandarin": "zh", "filipino": "tl", "slovene": "sl", "bokmal": "no",
                    "simplified chinese": "zh", "traditional chinese": "zh", "brazilian portuguese": "pt"}
# Languages the evolver asks for: widely spoken, and identified reliably from a sentence or two.
SAMPLED = ("fr", "de", "es", "it", "pt", "hi", "ru", "ja", "ko", "zh", "ar", "tr", "nl")
MIN_WORDS = 8

_TEMPLATES = (
    "Write your whole answer in {name}; do not switch to any other language.",
    "Respond only in {name}. Every sentence of the reply has to be {name}.",
    "The response must be written entirely in the {name} language.",
    "Use {name} for the full reply, with no passages in other languages.",
)


def code_of(name: str) -> str | None:
    """ISO code for a language name or alias ("Hindi", "farsi"), None when unknown."""
    key = name.strip().lower()
    for code, n in LANGUAGE_NAMES.items():
        if n.lower() == key:
            return code
    return LANGUAGE_ALIASES.get(key)


@lru_cache(maxsize=1)
def _factory():
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.seed = 0  # each detector draws its n-gram samples from a generator seeded with this
    return factory


def identify(text: str) -> str | None:
    """ISO 639-1 code of the most likely language of `text` (None when it has nothing to go on)."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _factory().create()
    detector.append(text)
    try:
        code = detector.detect()
    except LangDetectException:
        return None
    return "zh" if code.startswith("zh") else code


def _cjk(text: str) -> bool:
    """Chinese, Japanese and Korean text has few spaces, so few "words": judge it by its length instead."""
    return sum(1 for c in text if "\u3040" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af") >= 2 * MIN_WORDS


def _check(p: dict, response: str) -> tuple[bool, str]:
    want = p["language"]
    if want not in LANGUAGE_NAMES:
        raise ValueError(f"unknown language code {want!r}")
    name = LANGUAGE_NAMES[want]
    n_words = T.word_count(response)
    if n_words == 0:
        return False, "no words to identify"
    got = identify(response)
    if got != want and n_words < MIN_WORDS and not _cjk(response):
        return False, f"not checked: {n_words} word(s) are too few to identify the language"
    if got != want:
        return False, f"written in {LANGUAGE_NAMES.get(got or '', got or 'no known language')}, wanted {name}"
    # "entirely": every paragraph long enough to identify must also read as the language
    for para in T.paragraphs(response):
        if T.word_count(para) >= MIN_WORDS and (other := identify(para)) != want:
            return False, f"a paragraph is in {LANGUAGE_NAMES.get(other or '', other)}: {para[:40]!r}"
    return True, f"written in {name}"


def _sample(rng: random.Random, instruction: str | None) -> dict:
    return {"language": rng.choice(SAMPLED)}


register(ConstraintType(
    "response_language", "the whole response in one given language", _sample,
    lambda p: pick_form(_TEMPLATES, p).format(name=LANGUAGE_NAMES[p["language"]]),
    _check, forms=len(_TEMPLATES), weight=0.4,
    conflicts=frozenset({"include_keywords", "exclude_keywords", "keyword_frequency", "letter_frequency",
                         "start_with", "end_with", "uppercase", "lowercase", "capital_word_frequency",
                         "repeat_prompt", "answer_choice", "first_word"})))

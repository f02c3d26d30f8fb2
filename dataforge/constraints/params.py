"""The parameters each constraint type takes, as pydantic models: they validate specs that come from
outside (a model asked to extract constraints, a hand-written pipeline) and give the JSON schema that
structured output is asked to follow (`schema_model`)."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from .base import CONSTRAINTS
from .language import LANGUAGE_NAMES

Relation = Literal["at_most", "at_least", "exactly", "around"]


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoParams(_P):
    pass


class Counted(_P):
    relation: Relation = Field(description="at_most (write 'less than 50' as at_most 49), at_least, exactly, around")
    n: int = Field(ge=0)


class Exact(_P):
    n: int = Field(ge=1, description="the exact number")


class AtLeast(_P):
    n: int = Field(ge=1, description="the minimum number")


class Sections(_P):
    n: int = Field(ge=1)
    marker: Optional[str] = Field(None, description="word that opens each section with its number, e.g. SECTION; "
                                                    "null for Markdown headers")


class Keywords(_P):
    keywords: list[str] = Field(min_length=1)


class KeywordCount(_P):
    keyword: str = Field(min_length=1)
    relation: Relation
    n: int = Field(ge=0)


class LetterCount(_P):
    letter: str = Field(min_length=1, max_length=1)
    relation: Relation
    n: int = Field(ge=0)


class Phrase(_P):
    phrase: str = Field(min_length=1, description="the exact words, without surrounding quotes")


class Postscript(_P):
    marker: Literal["P.S.", "P.P.S."]


class Language(_P):
    language: Literal[tuple(sorted(LANGUAGE_NAMES))] = Field(description="ISO 639-1 code")  # type: ignore[valid-type]


class FirstWord(_P):
    paragraphs: Optional[int] = Field(None, ge=1, description="total paragraphs asked for, null when not stated")
    nth: int = Field(ge=1)
    word: str = Field(min_length=1)


class Request(_P):
    request: str = Field(min_length=1, description="the text of the request to repeat, without the repeat sentence")


class Options(_P):
    options: list[str] = Field(min_length=2)


PARAMS: dict[str, type[_P]] = {
    "word_count": Counted, "sentence_count": Counted, "paragraph_count": Counted, "char_count": Counted,
    "paragraph_dividers": Counted, "capital_word_frequency": Counted,
    "bullet_count": Exact, "placeholders": AtLeast, "highlights": AtLeast, "sections": Sections,
    "include_keywords": Keywords, "exclude_keywords": Keywords, "keyword_frequency": KeywordCount,
    "letter_frequency": LetterCount, "start_with": Phrase, "end_with": Phrase, "postscript": Postscript,
    "response_language": Language, "first_word": FirstWord, "repeat_prompt": Request, "answer_choice": Options,
    "lowercase": NoParams, "uppercase": NoParams, "no_commas": NoParams, "json_format": NoParams, "title": NoParams,
    "quotation": NoParams, "two_responses": NoParams,
}


def params_model(type_name: str) -> type[_P]:
    try:
        return PARAMS[type_name]
    except KeyError:
        raise KeyError(f"constraint type {type_name!r} has no parameter model in constraints/params.py") from None


@lru_cache(maxsize=None)
def schema_model(types: tuple[str, ...] | None = None) -> type[BaseModel]:
    """A model of ``{"constraints": [{"type": ..., "params": {...}}, ...]}`` over the registered types (or
    `types`): one member per type, told apart by ``type``, so its JSON schema lists every type's params."""
    names = sorted(types or CONSTRAINTS)
    members = [create_model(f"Constraint_{n}", __config__=ConfigDict(extra="forbid"),
                            __doc__=CONSTRAINTS[n].summary,
                            type=(Literal[n], ...), params=(params_model(n), ...)) for n in names]
    item = Annotated[Union[tuple(members)], Field(discriminator="type")] if len(members) > 1 else members[0]
    return create_model("VerifiableConstraints", __config__=ConfigDict(extra="forbid"),
                        constraints=(list[item], Field(default_factory=list)))  # type: ignore[valid-type]

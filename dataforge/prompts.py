"""Prompt templates are files: ``prompts/<name>.<profile>.j2``, rendered with sandboxed Jinja2.

Profiles: ``chat`` (a meta-instruction for capable chat models; the text is the user message) and
``fewshot`` (a raw completion prompt of worked examples for small models). A template may start with
YAML front matter inside a Jinja comment, which renders to nothing::

    {#---
    system: You rewrite prompts.
    stop: ["\\n###"]
    ---#}

Data is always passed as variables, so text containing ``{{ ... }}`` comes out literally and is never
evaluated. Every rendering carries the template's name and content hash for the record's lineage.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from .errors import DataforgeError
from .paths import resource_dir

Profile = Literal["chat", "fewshot"]
PROFILES: tuple[str, ...] = ("chat", "fewshot")
_FRONT = re.compile(r"\A\{#---\n(.*?)\n---#\}\n?", re.S)


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt ready for a backend: chat messages or raw text, plus what lineage needs."""

    name: str
    profile: str
    hash: str
    text: str
    system: str | None = None
    stop: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    # what it was rendered from, so it can be rendered again for the other profile (`as_profile`)
    variables: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    library: Any = field(default=None, compare=False, repr=False)

    def as_profile(self, profile: str) -> "RenderedPrompt":
        """The same template and variables rendered for `profile` (e.g. chat, when a server refuses raw
        completions)."""
        if profile == self.profile:
            return self
        return (self.library or default_library()).render(self.name, profile, **self.variables)

    @property
    def is_chat(self) -> bool:
        return self.profile == "chat"

    @property
    def messages(self) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, {"role": "user", "content": self.text}]

    @property
    def template_id(self) -> str:
        """`name.profile`, the value stored in `lineage.template`."""
        return f"{self.name}.{self.profile}"


@dataclass(frozen=True)
class Template:
    name: str
    profile: str
    path: Path
    source: str
    front: dict[str, Any]
    hash: str


def _env() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


class PromptLibrary:
    """Loads templates from a folder (default: the shipped `prompts/`)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root else resource_dir("prompts")
        self.env = _env()

    def names(self) -> list[str]:
        return sorted({p.name.split(".")[0] for p in self.root.glob("*.j2")})

    @functools.lru_cache(maxsize=None)
    def template(self, name: str, profile: str = "chat") -> Template:
        """The template for `profile`, falling back to the other profile if only one exists."""
        for prof in (profile, *[p for p in PROFILES if p != profile]):
            path = self.root / f"{name}.{prof}.j2"
            if path.is_file():
                source = path.read_text(encoding="utf-8")
                front: dict[str, Any] = {}
                m = _FRONT.match(source)
                if m:
                    front = yaml.safe_load(m.group(1)) or {}
                    body = source[m.end():]
                else:
                    body = source
                digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]
                return Template(name, prof, path, body, front, digest)
        raise DataforgeError(f"prompt template {name!r} not found in {self.root}")

    def _compiled(self, source: str):
        """Jinja compiles a template in milliseconds; a generator renders the same few thousands of times."""
        cache = self.__dict__.setdefault("_compiled_cache", {})
        if source not in cache:
            cache[source] = self.env.from_string(source)
        return cache[source]

    def render(self, name: str, profile: str = "chat", **variables: Any) -> RenderedPrompt:
        tpl = self.template(name, profile)
        try:
            text = self._compiled(tpl.source).render(**variables)
        except Exception as exc:  # jinja errors -> clear message naming the file
            raise DataforgeError(f"rendering {tpl.path}: {exc}") from exc
        system = tpl.front.get("system")
        if system:
            system = self._compiled(str(system)).render(**variables)
        stop = tuple(tpl.front.get("stop") or ())
        return RenderedPrompt(tpl.name, tpl.profile, tpl.hash, text.strip("\n") + ("\n" if tpl.front.get("trailing_newline") else ""),
                              system, stop, dict(tpl.front), dict(variables), self)

    def hashes(self) -> dict[str, str]:
        """`name.profile` -> hash for every template, for run manifests."""
        return {f"{p.name[:-3]}": hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in sorted(self.root.glob("*.j2"))}


@functools.lru_cache(maxsize=None)
def default_library() -> PromptLibrary:
    return PromptLibrary()


def render(name: str, profile: str = "chat", **variables: Any) -> RenderedPrompt:
    """Render a shipped template: ``render("evol_deepen", "fewshot", instruction=...)``."""
    return default_library().render(name, profile, **variables)

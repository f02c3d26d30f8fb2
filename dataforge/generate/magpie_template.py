"""The model's own chat template, rendered up to where the user's message begins (Magpie's pre-query text).

Why the model's own template, exactly: an aligned model writes a user query only when it sees the very
text it was trained on before a user turn, its default system prompt included; a hand-written
approximation gives fragments (magpie#28). So the template is found where the model comes from, never
guessed:

- ``--chat-template``: a GGUF file (``tokenizer.chat_template`` in its metadata), a model folder
  (``tokenizer_config.json`` or ``chat_template.jinja``) or a Jinja file;
- the embedded model and ``--local-model``: the GGUF it loads; the in-process vLLM backend: its model folder;
- a server: llama.cpp's ``/props`` (``chat_template``), else a model the server lists whose id or root is a
  local file or folder (llama-cpp-python and vLLM report a path when they serve one without an alias).

Rendering: the conversation ``[system?, user: SENTINEL]`` goes through the template; the text before the
sentinel is the pre-query prefix (without a leading BOS where the endpoint's tokenizer adds its own), the
text after it, up to the next message, is the end of a user turn: the stop sequences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataforgeError
from ..hashing import stable_hash

SENTINEL = "QUERYSENTINEL7f3a9c"


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template and the special tokens it refers to."""

    source: str  # where it was found, for messages and lineage
    text: str
    bos_token: str = ""
    eos_token: str = ""
    adds_bos: bool | None = None  # does the tokenizer put BOS before a raw prompt itself (None: not known)

    @property
    def hash(self) -> str:
        return stable_hash(self.text)[:12]


@dataclass(frozen=True)
class PreQuery:
    """What a raw completion is given (`prefix`) and where it must stop (`stops`: the end of a user turn)."""

    prefix: str
    stops: tuple[str, ...]


# ------------------------------------------------------------------------------------------- finding it

def _gguf_template(path: Path) -> ChatTemplate:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # noqa: BLE001 - gguf raises assorted errors on a bad file
        raise DataforgeError(f"{path}: not a readable GGUF file ({exc})") from exc

    def string(key: str) -> str | None:
        f = reader.fields.get(key)
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace") if f is not None and f.data else None

    def token(key: str) -> str:
        f, tokens = reader.fields.get(key), reader.fields.get("tokenizer.ggml.tokens")
        if f is None or tokens is None:
            return ""
        i = int(f.parts[f.data[0]][0])
        return bytes(tokens.parts[tokens.data[i]]).decode("utf-8", "replace") if 0 <= i < len(tokens.data) else ""

    text = string("tokenizer.chat_template")
    add_bos = reader.fields.get("tokenizer.ggml.add_bos_token")
    adds_bos = bool(add_bos.parts[add_bos.data[0]][0]) if add_bos is not None else None
    if not text:
        raise DataforgeError(f"{path}: the GGUF carries no chat template (tokenizer.chat_template); a base model "
                             "cannot be used for Magpie, or pass --chat-template")
    return ChatTemplate(f"gguf:{path.name}", text, token("tokenizer.ggml.bos_token_id"),
                        token("tokenizer.ggml.eos_token_id"), adds_bos)


def _special(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return str(value or "")


def _folder_template(path: Path) -> ChatTemplate:
    cfg: dict[str, Any] = {}
    tc = path / "tokenizer_config.json"
    if tc.is_file():
        try:
            cfg = json.loads(tc.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataforgeError(f"{tc}: not valid JSON ({exc})") from exc
    text = cfg.get("chat_template")
    if isinstance(text, list):  # named templates: the default one
        text = next((t.get("template") for t in text if isinstance(t, dict) and t.get("name") == "default"), None)
    jinja = path / "chat_template.jinja"
    if not text and jinja.is_file():
        text = jinja.read_text(encoding="utf-8")
    if not text:
        raise DataforgeError(f"{path}: no chat template (neither tokenizer_config.json's chat_template nor "
                             "chat_template.jinja)")
    adds_bos = cfg.get("add_bos_token")
    return ChatTemplate(f"folder:{path.name}", text, _special(cfg.get("bos_token")), _special(cfg.get("eos_token")),
                        adds_bos if isinstance(adds_bos, bool) else None)


def load_template(spec: str) -> ChatTemplate:
    """A chat template from a GGUF file, a model folder or a Jinja file."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder_template(path)
    if not path.is_file():
        raise DataforgeError(f"--chat-template {spec}: no such file or folder")
    if path.suffix.lower() == ".gguf":
        return _gguf_template(path)
    return ChatTemplate(f"file:{path.name}", path.read_text(encoding="utf-8"))


def _from_server(llm: Any) -> ChatTemplate | None:
    from ..llm.profile import _get_json

    base = str(getattr(llm, "base_url", "") or "").rstrip("/")
    if not base:
        return None
    key = llm.cfg.api_key() if hasattr(llm, "cfg") else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    props = _get_json(f"{root}/props", headers, 10.0)
    if isinstance(props, dict) and isinstance(props.get("chat_template"), str) and props["chat_template"]:
        return ChatTemplate(f"server:{root}/props", props["chat_template"], _special(props.get("bos_token")),
                            _special(props.get("eos_token")))
    listing = _get_json(f"{base}/models", headers, 10.0)
    model = getattr(llm, "model", None)
    for entry in (listing or {}).get("data") or [] if isinstance(listing, dict) else []:
        if not isinstance(entry, dict) or (model and entry.get("id") != model):
            continue
        for where in (entry.get("root"), entry.get("id")):
            if isinstance(where, str) and where and Path(where).exists():
                return load_template(where)
    return None


def find_template(llm: Any, explicit: str | None) -> ChatTemplate:
    """The chat template of the model behind `llm` (see the module docstring), or a clear refusal."""
    if explicit:
        return load_template(explicit)
    backend = getattr(llm, "backend", "")
    if backend == "local":
        return _gguf_template(Path(llm.path))
    if backend == "vllm":
        model = Path(str(getattr(llm.cfg, "model", "") or ""))
        if model.is_dir():
            return _folder_template(model)
    found = _from_server(llm) if backend == "openai" else None
    if found is not None:
        return found
    raise DataforgeError(f"magpie needs the chat template of {getattr(llm, 'model_id', 'the model')} and the server "
                         "does not report one (llama.cpp's /props does; vLLM does when it serves a local folder): "
                         "pass --chat-template with the model's GGUF file, model folder or Jinja template")


# ------------------------------------------------------------------------------------------- rendering

def _environment() -> Any:
    """Jinja as Hugging Face renders chat templates: sandboxed, trim_blocks, lstrip_blocks, loop controls,
    `raise_exception` and a `tojson` that keeps non-ASCII text."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

    def raise_exception(message: str) -> None:
        raise DataforgeError(f"the chat template refused the conversation: {message}")

    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: __import__("time").strftime(fmt)
    return env


def render_messages(template: ChatTemplate, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    try:
        compiled = _environment().from_string(template.text)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=template.bos_token, eos_token=template.eos_token, tools=None)
    except DataforgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a template error names the template
        raise DataforgeError(f"rendering the chat template from {template.source}: {exc}") from exc


def pre_query(template: ChatTemplate, system: str | None) -> PreQuery:
    """The text up to the start of the user's message, and the ends of a user turn."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": SENTINEL}]
    text = render_messages(template, messages, add_generation_prompt=False)
    at = text.find(SENTINEL)
    if at < 0 or text.count(SENTINEL) != 1:
        raise DataforgeError(f"the chat template from {template.source} does not render the user's message "
                             "verbatim once; Magpie cannot find where a query starts")
    prefix = text[:at]
    bos = template.bos_token
    # a raw-completion endpoint puts BOS first itself where the tokenizer adds it; where that is not known, a
    # BOS that opens the text once is taken for a sequence start (not a per-message marker like ChatML's)
    if bos and prefix.startswith(bos) and (template.adds_bos or (template.adds_bos is None and prefix.count(bos) == 1)):
        prefix = prefix[len(bos):]
    after = text[at + len(SENTINEL):]
    with_prompt = render_messages(template, messages, add_generation_prompt=True)[at + len(SENTINEL):]
    stops = tuple(dict.fromkeys(s for s in (after.strip(), with_prompt.strip(), template.eos_token.strip()) if s))
    if not stops:
        raise DataforgeError(f"the chat template from {template.source} marks no end of a user turn")
    if system and system not in prefix:
        raise DataforgeError(f"the chat template from {template.source} drops the system prompt")
    return PreQuery(prefix, stops)

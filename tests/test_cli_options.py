"""Every command's options say what the code does: the default a help text shows is the default the
code applies, options generated from a config leave the default to the config, and the defaults that
depend on the model name the budgets the stage really uses."""

from __future__ import annotations

import re

import pytest
import typer
from typer.main import get_command

from dataforge.cli import app
from dataforge.commands._options import build, show_default
from dataforge.llm import BackendConfig, make_llm
from dataforge.stage.config import Cli

_SHOWN = re.compile(r"\\?\[default: (.*?)\]\s*$", re.S)


def _commands():
    click_app = get_command(app)
    for info in app.registered_commands:
        yield info.name, click_app.commands[info.name], getattr(info.callback, "__dataforge_options__", None)


def _field(cls, path):
    for part in path[:-1]:
        cls = cls.model_fields[part].annotation
    return cls.model_fields[path[-1]]


def test_every_generated_option_shows_its_config_default_and_leaves_it_to_the_config():
    checked = 0
    for name, command, generated in _commands():
        if generated is None:
            continue
        cls, own, shared = generated
        by_name = {p.name: p for p in command.params}
        for opt, owner in [(o, cls) for o in own] + [(o, BackendConfig) for o in shared]:
            param = by_name[opt.name]
            assert param.default is None, (name, opt.flags)  # unset on the line: the config's default applies
            field = _field(owner, opt.path)
            cli = next((m for m in field.metadata if isinstance(m, Cli)), None) if owner is not BackendConfig \
                else None
            want = show_default(field.get_default(call_default_factory=True))
            m = _SHOWN.search(param.help or "")
            if cli is not None and cli.default_text or opt.shown_default != want:
                assert m and m.group(1) == opt.shown_default and want is None, (name, opt.flags, want)
            elif want is None:
                assert m is None, (name, opt.flags, param.help)
            else:
                assert m and m.group(1) == want, (name, opt.flags, param.help, want)
            checked += 1
        if cls is not None:  # a command given no option builds exactly the config's defaults
            assert build(cls, own, {}) == cls(), name
    assert checked > 150


def test_every_generated_option_parses_to_its_config_type(capsys):
    """typer reads an option's type from the command's annotations: each generated option's is the config
    field's (`--backend` was once a dictionary option that refused 'local'), and a bad choice is refused
    with the choices named, on every command that takes the backend options."""
    import typing

    from dataforge.cli import main

    checked = 0
    for info in app.registered_commands:
        generated = getattr(info.callback, "__dataforge_options__", None)
        if generated is None:
            continue
        hints = typing.get_type_hints(info.callback)
        for opt in generated[1] + generated[2]:
            assert hints[opt.name] == opt.annotation, (info.name, opt.flags, hints[opt.name])
        if generated[2]:
            with pytest.raises(SystemExit) as ex:
                main([info.name, "--backend", "bogus"])
            out = capsys.readouterr()
            assert ex.value.code == 2 and "'openai', 'local', 'vllm'" in out.err + out.out, info.name
            checked += 1
    assert checked >= 8


def test_hand_written_options_show_the_default_they_apply():
    """Options a command declares itself (not from a config): a default in the help is the real one."""
    for name, command, generated in _commands():
        own = {o.name for o in generated[1] + generated[2]} if generated else set()
        for param in command.params:
            if param.name in own or not isinstance(param, typer.core.TyperOption):
                continue
            m = _SHOWN.search(param.help or "")
            if m:
                assert m.group(1) == str(param.default), (name, param.name, param.help, param.default)


def test_model_dependent_defaults_name_the_budgets_the_stage_uses():
    from dataforge.generate.evolve import EvolveConfig
    from dataforge.generate.evolve_step import make_context

    text = next(m for m in EvolveConfig.model_fields["evolve_max_tokens"].metadata if isinstance(m, Cli)).default_text
    answer = next(m for m in EvolveConfig.model_fields["answer_max_tokens"].metadata if isinstance(m, Cli)).default_text
    chat = make_llm(BackendConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="big", profile="chat",
                                  no_cache=True))
    small = make_llm(BackendConfig(backend="local", profile="fewshot", no_cache=True))  # loads nothing until asked
    for llm in (chat, small):
        ctx = make_context(EvolveConfig(), llm)
        kind = "chat models" if llm.profile == "chat" else "few-shot models"
        assert f"{ctx.evolve_tokens} {kind}" in text and f"{ctx.answer_tokens} {kind}" in answer


@pytest.mark.parametrize("argv, flag", [
    (["evolve", "x.jsonl", "-o", "o.jsonl", "--rounds", "0"], "--rounds"),
    (["filter", "x.jsonl", "-o", "o.jsonl", "--judges", "maybe"], "--judges"),
    (["self-instruct", "x.jsonl", "-o", "o.jsonl", "--variant", "nope"], "--variant"),
    (["balance", "x.jsonl", "-o", "o.jsonl", "--level-mode", "wide"], "--level-mode"),
    (["evolve", "x.jsonl", "-o", "o.jsonl", "--ops", "deepen,teleport"], "--ops"),
    (["evolve", "x.jsonl", "-o", "o.jsonl", "--concurrency", "0"], "--concurrency"),
    (["export", "README.md", "-o", "o.jsonl", "--restart"], "--restart"),  # no journal: refused, not ignored
])
def test_a_bad_value_names_its_flag(argv, flag, capsys):
    from dataforge.cli import main

    with pytest.raises(SystemExit) as ex:
        main(argv)
    err = capsys.readouterr()
    assert ex.value.code == 2 and flag in err.err + err.out


def test_usage_lines_name_the_arguments():
    from typer.testing import CliRunner

    for command in ("filter", "evolve", "convert", "train", "merge"):
        usage = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        line = next(line for line in usage.splitlines() if "Usage:" in line)
        assert "{" not in line and re.search(r"\[OPTIONS\] [A-Z]", line), line

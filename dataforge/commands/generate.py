"""`dataforge generate RUN_DIR "instruction"`: sample from a model trained by `dataforge train`.

Uses the temperature predicted by the model's temperature head when it has one (unless --temperature).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate(
        run_dir: Path = typer.Argument(..., help="Run directory of `dataforge train` (or its model/ folder)."),
        instruction: str = typer.Argument(..., help="The instruction to answer."),
        input: str = typer.Option("", "--input", help="Optional input/context for the instruction."),
        max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Tokens to generate at most."),
        temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0,
                                                    help="Override the predicted temperature."),
        top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass."),
        complexity: Optional[float] = typer.Option(None, "--complexity", help="Instruction complexity 1-10 "
                                                   "(for a complexity-modulated attention bias)."),
        seed: int = typer.Option(0, "--seed", help="Sampling seed."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON object with text and temperature."),
        device: str = typer.Option("auto", "--device", help="auto (a GPU when present, else CPU), cpu, cuda, "
                                   "cuda:N, mps."),
    ) -> None:
        """Answer an instruction with a model trained by `dataforge train`."""
        from ..train.data import PromptFormatter
        from ..train.device import resolve_device
        from ..train.model import load_instruct

        model, tok, meta = load_instruct(run_dir, resolve_device(device))
        fmt = PromptFormatter(tok, meta.get("prompt_format", "auto"), bool(meta["mods"].get("inst_tokens")),
                              meta.get("max_length", 512))
        text, temp = model.generate(fmt, instruction, input, max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p, complexity=complexity, seed=seed)
        if as_json:
            typer.echo(json.dumps({"text": text, "temperature": round(temp, 4),
                                   "temperature_source": "override" if temperature is not None else
                                   ("head" if meta["mods"].get("temperature_head") else "default")}))
        else:
            typer.echo(text)

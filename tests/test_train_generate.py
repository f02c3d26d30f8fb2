"""Generation agrees with training: the prompt is the training prefix token for token (chat, [INST],
[INST] tokens, a Llama-3-style template), stopping uses every end id (generation config + the template's end
of turn), and `dataforge generate --device`."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from dataforge.cli import app  # noqa: E402
from dataforge.train.config import TrainConfig  # noqa: E402
from dataforge.train.data import PromptFormatter  # noqa: E402
from dataforge.train.model import InstructModel, add_inst_tokens  # noqa: E402
from dataforge.train.tiny import tiny_llama, tiny_tokenizer, toy_records  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def llama3_tokenizer():
    """The tiny BPE with Llama-3's special tokens and turn format: a turn ends with <|eot_id|>, while the
    tokenizer's end-of-text is <|end_of_text|> (as in the first Llama-3-Instruct releases)."""
    tok = tiny_tokenizer()
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def _formatter(kind: str) -> PromptFormatter:
    if kind == "llama3":
        return PromptFormatter(llama3_tokenizer(), "chat")
    tok = tiny_tokenizer(chat_template=kind == "chat")
    if kind == "inst+tokens":
        add_inst_tokens(tok)
    return PromptFormatter(tok, "auto", inst_tokens=kind == "inst+tokens", max_length=256)


@pytest.mark.parametrize("kind", ["chat", "inst", "inst+tokens", "llama3"])
def test_generation_prompt_is_the_training_prefix(kind):
    """The prompt is a token prefix of every training sample with that instruction and input, all of it
    before the answer; between it and the answer there is at most the separating whitespace, which BPE
    merges into the answer's first token for some answers (" positive") and not for others."""
    fmt = _formatter(kind)
    exact = 0
    for r in toy_records(9):
        ex = fmt.encode(r)
        first = ex.learn.index(True)
        ids, segs = fmt.encode_prompt(r.instruction, r.input)
        n = len(ids)
        assert n <= first and ids == ex.input_ids[:n] and segs == ex.segments[:n]
        assert fmt.tok.decode(ex.input_ids[n:first]).strip() == ""
        exact += n == first
        if kind.startswith("inst"):           # ends with [/INST], never with the space after it
            assert fmt.tok.decode(ids[-1:]).endswith("]")
        else:                                 # chat: the whole template prefix, down to the newline
            assert n == first
    assert exact > 0


def test_stop_ids_include_the_templates_end_of_turn():
    from transformers import GenerationConfig

    fmt = _formatter("llama3")
    tok = fmt.tok
    eot, eos = tok.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>"])
    extra = tok.convert_tokens_to_ids("<|start_header_id|>")
    assert fmt.stop_ids() == {eos, eot}
    assert fmt.stop_ids(GenerationConfig(eos_token_id=[eos, extra])) == {eos, eot, extra}
    assert fmt.stop_ids(GenerationConfig(eos_token_id=extra)) == {eos, eot, extra}
    assert _formatter("inst").stop_ids() == {_formatter("inst").tok.eos_token_id}


def _positional_gpt2(vocab: int, script: dict[int, int], default: int):
    """A GPT-2 whose greedy next token depends only on the position: after position p it emits script[p]
    (else `default`). Blocks add nothing, token embeddings are zero, position p's embedding is one-hot on the
    dimension that the LM head reads as that token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=4, n_positions=128, tie_word_embeddings=False,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    tokens = sorted(set(script.values()) | {default})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "c_proj" in name:
                p.zero_()
        for w in (model.transformer.wte.weight, model.transformer.wpe.weight, model.lm_head.weight):
            w.zero_()
        for pos in range(128):
            model.transformer.wpe.weight[pos, tokens.index(script.get(pos, default))] = 1.0
        for dim, t in enumerate(tokens):
            model.lm_head.weight[t, dim] = 10.0
    return model


@pytest.mark.parametrize("path", ["transformers", "dataforge"])
def test_llama3_style_template_stops_at_end_of_turn(path):
    """The model answers one word, then <|eot_id|>, then (were it not stopped) the word again and again.
    The tokenizer's eos is <|end_of_text|>, which this model never emits: only the end of turn stops it."""
    from transformers import GenerationConfig

    fmt = _formatter("llama3")
    tok = fmt.tok
    eot, eos = tok.convert_tokens_to_ids(["<|eot_id|>", "<|end_of_text|>"])
    word = tok.convert_tokens_to_ids("Ġpositive")
    prompt, _ = fmt.encode_prompt("Classify the review.", "I love the sea")
    L = len(prompt)
    base = _positional_gpt2(len(tok), {L - 1: word, L: eot}, default=word)
    base.generation_config = GenerationConfig(eos_token_id=[eos])
    mods = TrainConfig(segment_embedding=path == "dataforge").mods_dict()
    model = InstructModel(base, mods)
    assert model.has_mods == (path == "dataforge")
    text, _ = model.generate(fmt, "Classify the review.", "I love the sea", max_new_tokens=6, temperature=0.0)
    assert text == "positive"


def _saved_model(tmp_path):
    tok = tiny_tokenizer()
    model = InstructModel(tiny_llama(len(tok)), TrainConfig(segment_embedding=True).mods_dict())
    model.save(tmp_path / "m", tok, {"prompt_format": "auto"})
    return tmp_path / "m"


def test_generate_command_device_option(tmp_path):
    from dataforge.train.device import resolve_device

    run = _saved_model(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(app, ["generate", str(run), "Add the two numbers.", "--input", "2 3", "--max-new-tokens", "3",
                             "--temperature", "0", "--device", "cpu", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout.strip().splitlines()[-1])["temperature_source"] == "override"
    bad = runner.invoke(app, ["generate", str(run), "Add.", "--device", "cuda:7"])
    assert bad.exit_code != 0 and "--device cuda:7: no such CUDA device" in str(bad.exception)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_device_resolution_on_machines_with_and_without_gpus():
    from dataforge.errors import DataforgeError
    from dataforge.train.device import resolve_device

    assert resolve_device("auto", cuda_devices=0) == torch.device("cpu")
    assert resolve_device("auto", cuda_devices=2) == torch.device("cuda")
    assert resolve_device("cuda", cuda_devices=1) == torch.device("cuda")
    assert resolve_device("cuda:1", cuda_devices=2) == torch.device("cuda:1")
    assert resolve_device("cpu", cuda_devices=0, mps=False) == torch.device("cpu")
    assert resolve_device("mps", cuda_devices=0, mps=True) == torch.device("mps")
    for name, n in (("cuda", 0), ("cuda:2", 2), ("cuda:0", 0)):
        with pytest.raises(DataforgeError) as err:
            resolve_device(name, cuda_devices=n)
        assert str(err.value) == f"--device {name}: no such CUDA device here ({n} visible); use --device cpu or auto"
    with pytest.raises(DataforgeError) as err:
        resolve_device("mps", cuda_devices=0, mps=False)
    assert str(err.value) == "--device mps: MPS is not available here; use --device cpu or auto"
    with pytest.raises(DataforgeError) as err:
        resolve_device("gpu0")
    assert str(err.value) == "--device gpu0: not a device name (cpu, cuda, cuda:N, mps, auto)"

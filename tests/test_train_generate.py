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
from train_helpers import assert_cached_steps_match  # noqa: E402

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


@pytest.mark.parametrize("path", ["transformers", "dataforge", "dataforge-uncached"])
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
    mods = TrainConfig(segment_embedding=path != "transformers").mods_dict()
    model = InstructModel(base, mods)
    assert model.has_mods == (path != "transformers")
    text, _ = model.generate(fmt, "Classify the review.", "I love the sea", max_new_tokens=6, temperature=0.0,
                             use_cache=path != "dataforge-uncached")
    assert text == "positive"


@pytest.mark.parametrize("arch,attn,cache", [("gemma2", "eager", "sliding"), ("gemma3", "sdpa", "sliding"),
                                             ("mistral", "sdpa", "full"), ("qwen2", "eager", "full")])
def test_cached_generation_keeps_each_layers_window_and_soft_capping(arch, attn, cache):
    """Cached decoding of a modified model on architectures whose sliding windows are shorter than the text:
    each new token's logits equal recomputing the whole sequence (per-layer windows, soft-capping, attention
    bias on both routes, fusion), with transformers' sliding cache layers and with full ones."""
    from transformers import DynamicCache

    from dataforge.train.kv_cache import CachedDecoder
    from dataforge.train.model import _single
    from dataforge.train.tiny import TINY_WINDOW, tiny_model

    tok = tiny_tokenizer(chat_template=True)
    prompt_only = add_inst_tokens(tok)
    cfg = TrainConfig(inst_tokens=True, segment_embedding=True, attention_bias=True, attention_bias_complexity=True,
                      fusion=True, reasoning_head=True)
    model = InstructModel(tiny_model(arch, len(tok), attn=attn), cfg.mods_dict(), 0, prompt_only).eval()
    assert len(set(model.windows) - {None}) == 1
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("base."):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    fmt = PromptFormatter(tok, "auto", True, 256)
    ids, segs = fmt.encode_prompt("Write a short poem about the sea.")
    assert len(ids) > TINY_WINDOW
    kv = DynamicCache(config=model.base.config) if cache == "sliding" else DynamicCache()
    decoder = CachedDecoder(model, _single(ids, segs, 0.4, torch.device("cpu")), kv)
    sliding = [getattr(layer, "is_sliding", False) for layer in kv.layers]
    assert any(sliding) == (cache == "sliding")
    assert_cached_steps_match(model, decoder, ids, segs, TINY_WINDOW + 2)


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


def test_sampling_follows_temperature_and_nucleus():
    from dataforge.train.model import _sample

    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = p.log()

    def freqs(temperature, top_p, n=4000):
        gen = torch.Generator().manual_seed(0)
        counts = torch.zeros(4)
        for _ in range(n):
            counts[_sample(logits, temperature, top_p, gen)] += 1
        return counts / n

    assert _sample(logits, 0.0, 0.9, torch.Generator()) == 0 and _sample(logits, 1e-4, 0.9, torch.Generator()) == 0
    top2 = freqs(1.0, 0.7)                       # nucleus: 0.5 + 0.3 reach 0.7, the rest is cut
    assert top2[2:].sum() == 0 and abs(float(top2[0]) - 0.5 / 0.8) < 0.03
    top3 = freqs(1.0, 0.85)
    assert top3[3] == 0 and abs(float(top3[2]) - 0.15 / 0.95) < 0.03
    hot = freqs(2.0, 1.0)                        # temperature 2: probabilities proportional to sqrt(p)
    expected = p.sqrt() / p.sqrt().sum()
    assert torch.allclose(hot, expected, atol=0.03) and hot[3] > 0
    assert freqs(1e-3, 1.0, n=200)[0] == 1.0     # just above greedy: all but certain


def test_generation_batch_of_one_prompt():
    from dataforge.train.data import SEG_INSTRUCTION, SEG_TEMPLATE
    from dataforge.train.model import _single

    segs = [SEG_TEMPLATE, SEG_INSTRUCTION, SEG_INSTRUCTION, SEG_TEMPLATE, SEG_TEMPLATE]
    b = _single([5, 6, 7, 8, 9], segs, 0.3, "cpu")
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9]] and b["segment_ids"].tolist() == [segs]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4]] and b["sample_idx"].tolist() == [[0] * 5]
    assert b["after_inst"].tolist() == [[False, False, False, True, True]]
    assert b["task_ids"].tolist() == [-100] and b["complexity"].tolist() == pytest.approx([0.3])
    assert torch.isnan(b["temp_target"]).all() and b["temp_target"].shape == (1,)
    assert _single([1, 2], [SEG_TEMPLATE] * 2, 0.0, "cpu")["after_inst"].tolist() == [[True, True]]


def test_generation_temperature_and_complexity():
    """temperature None: the head's prediction (0.7 without a head); --complexity c reaches the model as
    c/10, like record.complexity in training."""
    tok = tiny_tokenizer()
    fmt = PromptFormatter(tok, "auto")
    head = InstructModel(tiny_llama(len(tok)), TrainConfig(temperature_head=True, attention_bias=True,
                                                          attention_bias_complexity=True).mods_dict())
    with torch.no_grad():
        head.temp_head.mlp[2].bias.fill_(float(torch.log(torch.expm1(torch.tensor(1.3 - 0.05)))))
    seen = []
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0]["complexity"].tolist()))
    _, t = head.generate(fmt, "Add the two numbers.", "2 3", max_new_tokens=2, complexity=8)
    assert t == pytest.approx(1.3, abs=1e-5) and seen and all(c == pytest.approx([0.8]) for c in seen)
    _, t = head.generate(fmt, "Add the two numbers.", max_new_tokens=1, temperature=0.4)
    assert t == 0.4 and seen[-1] == [0.0]
    no_head = InstructModel(tiny_llama(len(tok)), TrainConfig(segment_embedding=True).mods_dict())
    plain = InstructModel(tiny_llama(len(tok)), TrainConfig().mods_dict())
    for model in (no_head, plain):
        assert model.generate(fmt, "Add the two numbers.", max_new_tokens=1)[1] == 0.7


def test_save_and_load_details(tmp_path):
    from transformers import AutoModelForCausalLM

    from dataforge.errors import DataforgeError
    from dataforge.train.attention import BIASED_ATTENTION
    from dataforge.train.model import META_FILE, load_instruct

    tok = tiny_tokenizer()
    cfg = TrainConfig(attention_bias=True, segment_embedding=True)
    model = InstructModel(tiny_llama(len(tok)), cfg.mods_dict(), 3, [7])
    run = tmp_path / "run"
    model.save(run / "model", tok, {"prompt_format": "inst", "tasks": ["a", "b", "c"]})
    assert model.base.config._attn_implementation == BIASED_ATTENTION          # still routed after saving
    assert BIASED_ATTENTION not in (run / "model" / "config.json").read_text()     # loads without our kernel name
    assert AutoModelForCausalLM.from_pretrained(run / "model").inner._orig_attn == "sdpa"
    meta = json.loads((run / "model" / META_FILE).read_text())
    assert meta == {"format": 1, "mods": cfg.mods_dict(), "n_tasks": 3, "prompt_only_ids": [7], "plain_hf": False,
                    "prompt_format": "inst", "tasks": ["a", "b", "c"]}
    loaded, tok2, meta2 = load_instruct(run)                                    # the run dir finds model/
    assert meta2 == meta and loaded.prompt_only_ids == [7] and loaded.n_tasks == 3 and not loaded.training
    assert torch.equal(loaded.segment_emb.table.weight, model.segment_emb.table.weight)
    with pytest.raises(DataforgeError) as err:
        load_instruct(tmp_path)
    assert str(err.value) == f"{tmp_path}: not a dataforge model directory (no {META_FILE})"
    config = json.loads((run / "model" / "config.json").read_text())
    config["mods"]["reasoning_head"] = True                                      # config and weights disagree
    (run / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataforgeError) as err:
        load_instruct(run / "model")
    assert str(err.value).startswith(f"{run / 'model' / 'model.safetensors'}: weights do not match config.json "
                                     "(missing ['reasoning.")

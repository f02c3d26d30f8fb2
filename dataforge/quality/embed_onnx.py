"""The embedder on ONNX Runtime: the sentence-transformers model exported once, checked, cached, and run
with length-sorted batches on every core.

Why: on a CPU, MiniLM through ONNX Runtime is markedly faster than through torch
(`benchmarks/embed_speed.py` prints both side by side), and the filter and balance spend most of a cold
run embedding. The GPU path stays sentence-transformers on torch.

The export (`export_onnx`) traces the model's transformer with its pooling (mean or CLS, as the folder's
``1_Pooling/config.json`` says) and the L2 normalisation into one graph, so the session returns the
same unit vectors `SentenceTransformer.encode(normalize_embeddings=True)` does. It runs once per model
and is cached under ``<cache>/onnx/<model>-<hash of the model's files>.onnx``; before it is kept, its
vectors are compared with sentence-transformers' on probe texts and an export that disagrees (cosine
below 0.9999) is refused, never used. Tokenising uses the folder's own ``tokenizer.json`` with the
model's ``max_seq_length`` (texts are truncated exactly where sentence-transformers truncates them).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataforgeError

MIN_COSINE = 0.9999  # an export whose vectors differ more from sentence-transformers' is refused
TOKENS_PER_BATCH = 8192  # rows x padded length per session call: keeps padding and memory small
MAX_BATCH = 128
_PROBES = [
    "Give three tips for staying healthy.",
    "Write a Python function that returns the n-th Fibonacci number, with a docstring and two tests.",
    "x",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
    "clips did Natalia sell altogether in April and May? " * 12,  # longer than max_seq_length: truncation
]


def usable_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _pooling(model_path: Path) -> str:
    """The pooling the sentence-transformers folder declares: 'mean' or 'cls' (others are refused)."""
    cfg_path = model_path / "1_Pooling" / "config.json"
    if not cfg_path.is_file():
        return "mean"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    raise DataforgeError(f"{model_path}: pooling {modes} has no ONNX export here (mean or CLS only); "
                         "use the torch embedder (DATAFORGE_EMBED_BACKEND=torch)")


def max_seq_length(model_path: Path) -> int:
    cfg = model_path / "sentence_bert_config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length")
        if value:
            return int(value)
    return 512


def model_fingerprint(model_path: Path) -> str:
    """Hash of the files that decide the vectors (weights, configs, tokenizer): a changed model, a new export."""
    h = hashlib.sha256()
    for p in sorted(model_path.rglob("*")):
        if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".txt") and p.name != "README.md":
            h.update(str(p.relative_to(model_path)).encode())
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def export_onnx(model_path: Path, out: Path) -> None:
    """Trace transformer + pooling + normalisation into `out` (written atomically) and check it against
    sentence-transformers on probe texts; refused (nothing written) when the vectors disagree."""
    import warnings

    import torch
    from sentence_transformers import SentenceTransformer

    from ..io import atomic_open
    from .embed import _quiet_transformers

    pooling = _pooling(model_path)
    _quiet_transformers()
    st = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    bert = st[0].auto_model.eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: D401 - torch signature
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            if pooling == "cls":
                v = h[:, 0]
            else:
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(v, p=2, dim=1)

    tok = _tokenizer(model_path)
    ids, mask, types = _batch_arrays(tok.encode_batch(_PROBES[:2]))
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # two exporting processes never share one
    out.parent.mkdir(parents=True, exist_ok=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python code in the model
        torch.onnx.export(Pooled().eval(), tuple(torch.from_numpy(a) for a in (ids, mask, types)), str(tmp),
                          dynamo=False, input_names=names, output_names=["embedding"], opset_version=17,
                          dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "embedding": {0: "batch"}})
    try:
        want = st.encode(_PROBES, batch_size=len(_PROBES), convert_to_numpy=True, normalize_embeddings=True)
        got = OnnxEncoder(model_path, tmp).encode(_PROBES)
        cos = np.einsum("ij,ij->i", want, got)
        if float(cos.min()) < MIN_COSINE:
            raise DataforgeError(f"{model_path}: the ONNX export disagrees with sentence-transformers (cosine "
                                 f"{float(cos.min()):.6f} < {MIN_COSINE}); use DATAFORGE_EMBED_BACKEND=torch")
        with open(tmp, "rb") as src, atomic_open(out, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
    finally:
        tmp.unlink(missing_ok=True)


def _tokenizer(model_path: Path):
    from tokenizers import Tokenizer

    path = model_path / "tokenizer.json"
    if not path.is_file():
        raise DataforgeError(f"{model_path}: no tokenizer.json (needed by the ONNX embedder); "
                             "use DATAFORGE_EMBED_BACKEND=torch")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()  # the file may pin a fixed padding; batches pad to their own longest text
    tok.enable_truncation(max_length=max_seq_length(model_path))
    return tok


def _batch_arrays(encodings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded int64 ids, attention mask and token types for one batch."""
    n, width = len(encodings), max(len(e.ids) for e in encodings)
    ids = np.zeros((n, width), np.int64)
    mask = np.zeros((n, width), np.int64)
    types = np.zeros((n, width), np.int64)
    for row, e in enumerate(encodings):
        k = len(e.ids)
        ids[row, :k], mask[row, :k], types[row, :k] = e.ids, e.attention_mask, e.type_ids
    return ids, mask, types


class OnnxEncoder:
    """Runs an exported model (`onnx_path`) on ONNX Runtime, all usable cores, length-sorted batches."""

    def __init__(self, model_path: Path, onnx_path: Path, threads: int | None = None):
        import onnxruntime as ort

        self.model_path, self.onnx_path = Path(model_path), Path(onnx_path)
        self.tokenizer = _tokenizer(self.model_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or usable_cores()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle threads sleep instead of spinning: on a machine shared with other jobs (or Ray workers on
        # the same cores) spinning burns the CPU the other threads need; measured ~15% faster there
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        self.dim = int(self.session.get_outputs()[0].shape[1] or 0) or None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, in the order given. Texts are tokenised together,
        sorted by token count and cut into batches of at most `TOKENS_PER_BATCH` padded tokens, so a
        batch pads little; each batch's vectors go back to their texts' places."""
        if not texts:
            return np.zeros((0, self.dim or 0), np.float32)
        enc = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([-len(e.ids) for e in enc], kind="stable")
        out: np.ndarray | None = None
        start = 0
        while start < len(order):
            width = len(enc[order[start]].ids)  # the longest left: sorted, so this batch's width
            rows = max(1, min(MAX_BATCH, TOKENS_PER_BATCH // max(width, 1)))
            idx = order[start:start + rows]
            ids, mask, types = _batch_arrays([enc[j] for j in idx])
            vecs = self.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
            if out is None:
                out = np.empty((len(texts), vecs.shape[1]), np.float32)
                self.dim = vecs.shape[1]
            out[idx] = vecs
            start += rows
        return out


def cached_export(model_path: Path, cache_dir: Path, name: str) -> Path:
    """The cached export of `model_path`, exported and checked now if there is none yet."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = Path(cache_dir) / "onnx" / f"{safe}-{model_fingerprint(model_path)}.onnx"
    if not path.is_file():
        export_onnx(model_path, path)
    return path


def onnx_encoder(model_path: Path, cache_dir: Path, name: str) -> OnnxEncoder:
    """The cached export of `model_path`, opened on ONNX Runtime."""
    return OnnxEncoder(model_path, cached_export(model_path, cache_dir, name))

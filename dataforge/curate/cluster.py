"""Topic clusters over sentence embeddings.

k-means (default; MiniBatchKMeans above 5,000 points) picks its number of clusters itself: it tries a spread of k on a sample and
keeps the k with the best silhouette (cosine), then fits all points with that k. HDBSCAN (scikit-learn)
is the alternative for corpora whose topics differ a lot in size; it runs on a PCA projection (its cost
grows fast with dimension) and its noise points join the nearest cluster so every record has a topic.
Cluster ids are renumbered largest first, so topic 00 is always the biggest.

`cluster_rows` clusters embeddings kept on disk (`RowFile`): up to `FIT_MAX` points it loads them and
clusters them all as above; beyond that it fits on a seeded sample of `FIT_MAX` points and assigns every
point to its nearest centre in windows, so memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import DataforgeError
from ..io.rows import Rows

Method = Literal["kmeans", "hdbscan"]
_FULL_KMEANS_MAX = 5000
_HDBSCAN_DIMS = 5   # density is only meaningful in few dimensions (cf. UMAP to 5-d in BERTopic)
FIT_MAX = 200_000   # points clustered in memory at most (about 300 MB of float32 embeddings)


@dataclass
class Clustering:
    labels: np.ndarray                      # cluster id per point, 0 = largest cluster
    k: int
    method: str
    silhouette_by_k: dict[int, float] = field(default_factory=dict)
    noise: int = 0                          # HDBSCAN points re-assigned to their nearest cluster
    seconds: float = 0.0

    @property
    def sizes(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.k).tolist()


def candidate_ks(k_min: int, k_max: int) -> list[int]:
    """Every k up to 10, then ~25% steps: the silhouette curve is flat for large k, fine for small."""
    ks, k = [], max(2, k_min)
    while k <= k_max:
        ks.append(k)
        k = k + 1 if k < 10 else max(k + 1, int(round(k * 1.25)))
    return ks or [max(2, k_min)]


def _kmeans(k: int, seed: int, n: int, n_init: int = 3):
    """MiniBatchKMeans for big corpora; plain k-means below `_FULL_KMEANS_MAX` points, where it is faster."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n <= _FULL_KMEANS_MAX:
        return KMeans(n_clusters=k, random_state=seed, n_init=n_init)
    return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=n_init, batch_size=4096, max_no_improvement=20)


def choose_k(x: np.ndarray, k_min: int = 2, k_max: int = 30, sample: int = 3000, seed: int = 0) -> tuple[int, dict[int, float]]:
    """The k in [k_min, k_max] with the best cosine silhouette on a random sample of the points."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(sample, len(x)), replace=False) if len(x) > sample else np.arange(len(x))
    xs = x[idx]
    k_max = min(k_max, len(xs) - 1)
    scores: dict[int, float] = {}
    for k in candidate_ks(k_min, k_max):
        labels = _kmeans(k, seed, len(xs), n_init=1).fit_predict(xs)
        if len(set(labels.tolist())) < 2:
            continue
        scores[k] = float(silhouette_score(xs, labels, metric="cosine"))
    if not scores:
        return max(1, min(k_min, len(x))), scores
    return max(scores, key=lambda k: (round(scores[k], 4), -k)), scores


def _renumber_by_size(labels: np.ndarray) -> tuple[np.ndarray, int]:
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]          # largest first, ties by old id
    new_id = np.empty(int(ids.max()) + 1, np.int64)
    new_id[order] = np.arange(len(order))
    return new_id[np.asarray(labels, dtype=np.int64)], len(order)


def cluster_embeddings(
    x: np.ndarray,
    method: Method = "kmeans",
    k: int | None = None,
    *,
    k_min: int = 2,
    k_max: int = 30,
    sample: int = 3000,
    min_cluster_size: int | None = None,
    seed: int = 0,
) -> Clustering:
    """Cluster L2-normalised embeddings; `k=None` chooses k by silhouette (kmeans only)."""
    t0 = time.perf_counter()
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n == 0:
        return Clustering(np.zeros(0, np.int64), 0, method)
    if n < 3:
        return Clustering(np.zeros(n, np.int64), 1, method, seconds=time.perf_counter() - t0)
    if method == "kmeans":
        scores: dict[int, float] = {}
        if k is None:
            k, scores = choose_k(x, k_min, k_max, sample, seed)
        k = max(1, min(int(k), n))
        labels = _kmeans(k, seed, n).fit_predict(x) if k > 1 else np.zeros(n, np.int64)
        labels, k = _renumber_by_size(labels)
        return Clustering(labels, k, method, scores, seconds=time.perf_counter() - t0)
    if method == "hdbscan":
        from sklearn.cluster import HDBSCAN
        from sklearn.decomposition import PCA

        dims = min(_HDBSCAN_DIMS, x.shape[1], n - 1)
        z = PCA(n_components=dims, random_state=seed).fit_transform(x) if dims < x.shape[1] else x
        mcs = min_cluster_size or max(5, n // 100)
        raw = HDBSCAN(min_cluster_size=mcs, min_samples=min(mcs, 10), copy=True).fit_predict(z)
        noise = int((raw < 0).sum())
        if noise == n:  # nothing dense enough: one topic rather than none
            return Clustering(np.zeros(n, np.int64), 1, method, noise=noise, seconds=time.perf_counter() - t0)
        if noise:
            ids = sorted(set(raw[raw >= 0].tolist()))
            cents = np.stack([x[raw == c].mean(axis=0) for c in ids])
            nearest = np.argmax(x[raw < 0] @ cents.T, axis=1)
            raw = raw.copy()
            raw[raw < 0] = np.array(ids)[nearest]
        labels, k = _renumber_by_size(raw)
        return Clustering(labels, k, method, noise=noise, seconds=time.perf_counter() - t0)
    raise DataforgeError(f"unknown clustering method {method!r}; choose kmeans or hdbscan")


def cluster_rows(rows: Rows, method: Method = "kmeans", k: int | None = None, *, k_min: int = 2, k_max: int = 30,
                 sample: int = 3000, min_cluster_size: int | None = None, seed: int = 0,
                 fit_max: int = FIT_MAX) -> Clustering:
    """`cluster_embeddings` over rows on disk; above `fit_max` points, fit on a sample and assign the rest."""
    n = rows.n
    if n <= fit_max:
        return cluster_embeddings(rows.read(0, n), method, k, k_min=k_min, k_max=k_max, sample=sample,
                                  min_cluster_size=min_cluster_size, seed=seed)
    t0 = time.perf_counter()
    picked = np.sort(np.random.default_rng(seed).choice(n, size=fit_max, replace=False))
    x_fit = rows.gather(picked).astype(np.float32, copy=False)
    fit = cluster_embeddings(x_fit, method, k, k_min=k_min, k_max=k_max, sample=sample,
                             min_cluster_size=min_cluster_size, seed=seed)
    centres = np.stack([x_fit[fit.labels == c].mean(axis=0) for c in range(fit.k)])
    del x_fit
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    labels = np.empty(n, np.int64)
    for start, x in _windows(rows):
        labels[start:start + len(x)] = np.argmax(np.asarray(x, np.float32) @ centres.T, axis=1)
    labels, k_found = _renumber_by_size(labels)
    return Clustering(labels, k_found, method, fit.silhouette_by_k, fit.noise, seconds=time.perf_counter() - t0)


def _windows(rows: Rows, size: int = 65536):
    for start in range(0, rows.n, size):
        yield start, rows.read(start, min(rows.n, start + size))

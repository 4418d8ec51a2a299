"""Clustering of embeddings: HDBSCAN or KMeans, optionally after PCA or UMAP."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CLUSTER_METHODS = ("hdbscan", "kmeans")
REDUCTIONS = ("none", "pca", "umap")


@dataclass(frozen=True)
class ClusterParams:
    method: str = "hdbscan"
    reduce: str = "pca"
    n_components: int = 32
    min_cluster_size: int = 5
    min_samples: int | None = None
    n_clusters: int | None = None  # kmeans; default sqrt(n / 2)
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def validate_params(params: ClusterParams) -> None:
    if params.method not in CLUSTER_METHODS:
        raise ValueError(f"clusters.method must be one of {CLUSTER_METHODS}, got {params.method!r}")
    if params.reduce not in REDUCTIONS:
        raise ValueError(f"clusters.reduce must be one of {REDUCTIONS}, got {params.reduce!r}")
    if params.n_components < 2:
        raise ValueError("clusters.n_components must be at least 2")
    if params.min_cluster_size < 2:
        raise ValueError("clusters.min_cluster_size must be at least 2")
    if params.n_clusters is not None and params.n_clusters < 2:
        raise ValueError("clusters.n_clusters must be at least 2")


def reduce_dimensions(vectors: np.ndarray, params: ClusterParams) -> np.ndarray:
    """PCA or UMAP to n_components (never more than the data allows), re-normalised to unit length."""
    n_components = min(params.n_components, vectors.shape[1], max(len(vectors) - 2, 2))
    if params.reduce == "none" or n_components >= vectors.shape[1]:
        return vectors
    if params.reduce == "pca":
        from sklearn.decomposition import PCA

        reduced = PCA(n_components=n_components, random_state=params.seed).fit_transform(vectors)
    else:
        import umap

        reduced = umap.UMAP(n_components=n_components, metric="cosine",
                            random_state=params.seed).fit_transform(vectors)
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    return (reduced / np.maximum(norms, 1e-12)).astype(np.float32)


def cluster_labels(vectors: np.ndarray, params: ClusterParams) -> np.ndarray:
    """A label per vector; -1 is noise (HDBSCAN only)."""
    validate_params(params)
    n = len(vectors)
    if n < max(params.min_cluster_size, 2):
        return np.full(n, -1, dtype=np.int64)
    reduced = reduce_dimensions(vectors, params)
    if params.method == "kmeans":
        from sklearn.cluster import KMeans

        k = min(params.n_clusters or max(2, round(np.sqrt(n / 2))), n)
        model = KMeans(n_clusters=k, n_init="auto", random_state=params.seed)
        return model.fit_predict(reduced).astype(np.int64)
    import hdbscan

    model = hdbscan.HDBSCAN(min_cluster_size=params.min_cluster_size,
                            min_samples=params.min_samples, core_dist_n_jobs=1)
    return model.fit_predict(reduced.astype(np.float64)).astype(np.int64)

"""Clustering of embeddings: HDBSCAN or KMeans, optionally after PCA or UMAP."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from vsearch_pipeline.core.knn_hdbscan import knn_hdbscan_labels

# declared in core.params, without FAISS or scipy: the settings build on them
from vsearch_pipeline.core.params import ClusterParams
from vsearch_pipeline.core.params import validate_cluster_params as validate_params


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
    return knn_hdbscan_labels(reduced, params.min_cluster_size, params.min_samples)


TAG_SHARE_FOR_NAME = 0.3  # a tag names a cluster once this share of its members carry it


def suggest_name(size: int, tags: Sequence[Sequence[str]], labels: Sequence[str | None]
                 ) -> tuple[str | None, list[tuple[str, int]]]:
    """A cluster's suggested name and the candidates it was drawn from, most frequent first.

    People's tags win over the model's guesses: the most frequent tag names the cluster when at
    least TAG_SHARE_FOR_NAME of the members carry it; otherwise the most frequent predicted
    class (each member's best guess) does. `tags` and `labels` are given per member; each
    candidate comes with the number of members it names, at most `size`.
    """
    tag_counts = Counter(t for member in tags for t in dict.fromkeys(member))
    label_counts = Counter(label for label in labels if label)
    # A candidate's count is the number of members it names: a member whose tag and predicted
    # class are the same word counts once for it, so no count exceeds the cluster's size.
    candidates = Counter(name for member, label in zip(tags, labels, strict=True)
                         for name in dict.fromkeys([*member, *([label] if label else [])])
                         ).most_common(5)
    if tag_counts:
        tag, count = tag_counts.most_common(1)[0]
        if count >= TAG_SHARE_FOR_NAME * size:
            return tag, candidates
    if label_counts:
        return label_counts.most_common(1)[0][0], candidates
    return None, candidates

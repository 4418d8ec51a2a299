"""Clustering of embeddings: HDBSCAN made to cover the collection, or KMeans, after PCA or UMAP."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class Clustering:
    """A label per image (-1: an outlier), how each image joined its cluster (`JOINED_BY`), and
    the minimum cluster size with how it was chosen."""

    labels: np.ndarray  # (n,) int64
    joined_by: np.ndarray  # (n,) int8 codes into JOINED_BY
    min_cluster_size: int | None
    chosen_by: str
    reduced: np.ndarray | None = None  # the vectors clustered (after PCA or UMAP); the map's

    def counts(self) -> dict[str, int]:
        """Images per way of joining, e.g. {"density": 6100, ..., "outlier": 700}."""
        found = np.bincount(self.joined_by, minlength=len(JOINED_BY))
        return {name.replace(" ", "_"): int(c) for name, c in zip(JOINED_BY, found, strict=True)}


def cluster_images(vectors: np.ndarray, params: ClusterParams) -> Clustering:
    """Cluster unit vectors: KMeans (everyone in a cluster), or HDBSCAN made to cover the
    collection (`covering_hdbscan`)."""
    validate_params(params)
    n = len(vectors)
    if n < max(params.min_cluster_size or MIN_CLUSTER_SIZES[0], 2):
        return Clustering(np.full(n, -1, dtype=np.int64), np.full(n, OUTLIER, np.int8),
                          params.min_cluster_size, "too few images to cluster", vectors)
    reduced = reduce_dimensions(vectors, params)
    if params.method == "kmeans":
        from sklearn.cluster import KMeans

        k = min(params.n_clusters or max(2, round(np.sqrt(n / 2))), n)
        model = KMeans(n_clusters=k, n_init="auto", random_state=params.seed)
        labels = model.fit_predict(reduced).astype(np.int64)
        return Clustering(labels, np.full(n, DENSITY, np.int8), None,
                          f"kmeans, {k} clusters" + ("" if params.n_clusters else " (sqrt(n/2))"),
                          reduced)
    return covering_hdbscan(vectors, reduced, params)


JOINED_BY = ("density", "second pass", "neighbours", "outlier")
DENSITY, SECOND_PASS, NEIGHBOURS, OUTLIER = range(4)
MIN_CLUSTER_SIZES = (3, 5, 8, 12, 20, 40)  # tried when clusters.min_cluster_size is not set
MIN_SAMPLES = 5  # HDBSCAN's core-distance neighbourhood when neither size is set (fewer if tiny)
SILHOUETTE_SAMPLE = 4000  # clustered images the choice of min_cluster_size is scored on
VOTE_NEIGHBOURS = 10  # nearest clustered images an unclustered one asks
VOTE_SHARE = 0.6  # of their (1/distance-weighted) votes that one cluster needs to take it in
MEMBERS_MEASURED = 50  # members per cluster whose distance to their neighbours bounds a newcomer's
FARTHER = 1.5  # how much farther than those members a newcomer may be from its voters


def covering_hdbscan(vectors: np.ndarray, reduced: np.ndarray, params: ClusterParams
                     ) -> Clustering:
    """HDBSCAN, then two steps that give most of what it calls noise a cluster.

    HDBSCAN alone left 33% of Caltech-101 as noise, and most of that noise is whole classes (101
    of the 107 chandeliers), too sparse beside the dense classes to stand out, not stray images.
    So: (1) the minimum cluster size is the one of `MIN_CLUSTER_SIZES` whose clusters have the
    best silhouette, unless set; (2) the images left over are clustered again, in a PCA fitted on
    them alone, where the sparse classes are dense; (3) each image still left joins the cluster
    that at least `VOTE_SHARE` of its `VOTE_NEIGHBOURS` nearest clustered images vote for
    (weighted by closeness), unless it is farther from them than that cluster's members are
    from theirs. What remains is the outliers: images whose neighbourhood is no cluster's.
    Measured on all of Caltech-101 (BACKGROUND_Google included): noise 32.6% -> 8.4%, adjusted
    Rand (outliers as singletons, BACKGROUND_Google left out) 0.798 -> 0.804; on COIL-20 noise
    1.2% -> 0.2%, adjusted Rand 0.927 -> 0.939 (the chosen minimum size: 12 and 8)."""
    from vsearch_pipeline.core.knn_hdbscan import knn_hdbscan_labels, single_linkage, tree_labels

    # HDBSCAN's own default where the size is set; a small neighbourhood for a small collection
    min_samples = params.min_samples or params.min_cluster_size or min(
        MIN_SAMPLES, max(2, len(reduced) // 10))
    linkage = single_linkage(reduced, min_samples)
    if params.min_cluster_size is None:
        size, chosen_by = choose_min_cluster_size(reduced, linkage, params.seed)
    else:
        size, chosen_by = params.min_cluster_size, "clusters.min_cluster_size"
    labels = tree_labels(reduced, linkage, size)
    joined = np.where(labels >= 0, DENSITY, OUTLIER).astype(np.int8)
    rest = np.flatnonzero(labels < 0)
    if len(rest) >= max(4 * size, params.n_components + 2):
        again = knn_hdbscan_labels(reduce_dimensions(vectors[rest], params), size, min_samples)
        found = again >= 0
        labels[rest[found]] = again[found] + labels.max() + 1
        joined[rest[found]] = SECOND_PASS
    voted, share = neighbour_votes(reduced, labels, params.seed)
    taken = (labels < 0) & (share >= VOTE_SHARE)
    labels[taken], joined[taken] = voted[taken], NEIGHBOURS
    return Clustering(labels, joined, size, chosen_by, reduced)


def choose_min_cluster_size(reduced: np.ndarray, linkage: np.ndarray, seed: int
                            ) -> tuple[int, str]:
    """The size of `MIN_CLUSTER_SIZES` (up to a tenth of the images) whose clusters have the
    best cosine silhouette over a seeded sample of the clustered images; the smaller on a tie."""
    from sklearn.metrics import silhouette_score

    from vsearch_pipeline.core.knn_hdbscan import tree_labels

    rng = np.random.default_rng(seed)
    scores = {}
    for size in (s for s in MIN_CLUSTER_SIZES if s <= max(len(reduced) // 10, 2)):
        labels = tree_labels(reduced, linkage, size)
        clustered = np.flatnonzero(labels >= 0)
        sample = rng.choice(clustered, min(len(clustered), SILHOUETTE_SAMPLE), replace=False)
        if len(np.unique(labels[sample])) > 1:
            scores[size] = round(float(silhouette_score(reduced[sample], labels[sample],
                                                        metric="cosine")), 4)
    if not scores:
        return MIN_CLUSTER_SIZES[0], "too few images to compare sizes: the smallest"
    best = max(scores, key=lambda s: (scores[s], -s))
    tried = ", ".join(f"{s}: {v:.3f}" for s, v in scores.items())
    return best, f"best silhouette of the clustered images ({tried})"


def neighbour_votes(reduced: np.ndarray, labels: np.ndarray, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """For each unclustered image, the cluster its `VOTE_NEIGHBOURS` nearest clustered images
    (weighted by 1/distance) vote for most, and that cluster's share of the votes. An image
    farther from its voters (mean distance) than any of `MEMBERS_MEASURED` seeded members of that
    cluster is from its own nearest clustered images gets share 0: its neighbours are near each
    other, not near it. Share 0 too for the clustered, and for everyone when nothing is
    clustered."""
    import faiss

    n = len(labels)
    voted, share = np.full(n, -1, np.int64), np.zeros(n, np.float32)
    clustered, loose = np.flatnonzero(labels >= 0), np.flatnonzero(labels < 0)
    k = min(VOTE_NEIGHBOURS, len(clustered) - 1)
    if k < 1 or not len(loose):
        return voted, share
    index = faiss.IndexFlatL2(reduced.shape[1])
    index.add(np.ascontiguousarray(reduced[clustered], dtype=np.float32))

    def mean_distance(rows: np.ndarray, skip_self: bool) -> tuple[np.ndarray, np.ndarray]:
        squared, nearest = index.search(np.ascontiguousarray(reduced[rows]), k + skip_self)
        distance = np.sqrt(np.maximum(squared[:, int(skip_self):], 0))
        return distance, nearest[:, int(skip_self):]

    members = _members_sample(labels, clustered, seed)
    ordinary = np.zeros(labels.max() + 1, np.float32)
    np.maximum.at(ordinary, labels[members], mean_distance(members, True)[0].mean(axis=1))
    distance, nearest = mean_distance(loose, False)
    votes = labels[clustered[nearest]]  # (m, k)
    weight = 1.0 / np.maximum(distance, 1e-6)
    for_label = ((votes[:, :, None] == votes[:, None, :]) * weight[:, None, :]).sum(axis=2)
    rows = np.arange(len(loose))
    best = votes[rows, np.argmax(for_label, axis=1)]
    voted[loose] = best
    share[loose] = np.where(distance.mean(axis=1) <= FARTHER * ordinary[best],
                            for_label.max(axis=1) / weight.sum(axis=1), 0.0)
    return voted, share


def _members_sample(labels: np.ndarray, clustered: np.ndarray, seed: int) -> np.ndarray:
    """Up to `MEMBERS_MEASURED` members of each cluster, drawn with a seed."""
    order = np.random.default_rng(seed).permutation(clustered)
    order = order[np.argsort(labels[order], kind="stable")]
    starts = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    return np.concatenate([order[a:min(b, a + MEMBERS_MEASURED)]
                           for a, b in zip(starts[:-1], starts[1:], strict=True)])


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

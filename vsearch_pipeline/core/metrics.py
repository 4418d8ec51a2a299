"""Figures by which search and clustering are judged against grounding sets.

A *grounding set* is a group of images known to be similar. Each item carries the integer label
of its grounding set, or ``-1`` when it belongs to none. All functions are plain NumPy and return
plain Python ``float``/``int`` values so that runs can be compared number for number.

Retrieval (``retrieval_metrics``)
---------------------------------
Inputs: ``ranked`` (Q, K) item indices per query, best first, the query itself already removed,
``-1`` padding missing results; ``query_groups`` (Q,) and ``item_groups`` (N,) group labels.

* ``rel_q(i)`` is 1 if the result at rank ``i`` (1-based) is a real item (not ``-1``) whose group
  equals the query's group, else 0. Items in group ``-1`` are never relevant. Each item is
  assumed to appear at most once per row.
* ``R_q`` = size of the query's group - 1 (the query itself is not relevant). Group sizes are
  counted from ``item_groups`` (labels ``!= -1``) unless ``group_sizes`` is given; a group that
  is unknown there has size 0. Queries with ``R_q <= 0`` (including queries in group ``-1``) are
  skipped and counted in ``skipped_queries``; ``queries`` is the number evaluated.
* ``hits_q@k`` = sum of ``rel_q(i)`` for ``i <= k``; ``P_q(i)`` = ``hits_q@i / i``.

For every ``k`` in ``ks`` (``1 <= k <= K``, else ``ValueError``), averaged over evaluated queries
(NaN when no query is evaluated):

* ``precision@k`` = ``hits_q@k / k`` (padding counts as a miss).
* ``recall@k`` = ``hits_q@k / R_q``.
* ``hit_rate@k`` = 1 if ``hits_q@k > 0`` else 0.
* ``map@k`` = mean of ``AP_q@k = (1 / min(k, R_q)) * sum_{i<=k} P_q(i) * rel_q(i)``.
* ``ndcg@k`` = ``DCG_q@k / IDCG_q@k`` with binary gains, ``DCG_q@k = sum_{i<=k} rel_q(i) /
  log2(i + 1)`` and ``IDCG_q@k = sum_{i<=min(k, R_q)} 1 / log2(i + 1)`` (all relevant first).

Clustering (``cluster_metrics``)
--------------------------------
Inputs: ``labels`` (N,) cluster label per item, ``-1`` = noise; optional ``vectors`` (N, D);
optional ``truth`` (N,) grounding group per item, ``-1`` = in no grounding set.

* ``n_clusters`` = number of distinct labels other than ``-1``.
* ``noise_share`` = share of all N items labelled ``-1`` (NaN if N == 0).
* ``silhouette`` = scikit-learn ``silhouette_score`` with cosine distance (1 - cosine
  similarity) over the non-noise items, on a random subsample of ``min(silhouette_sample, n)``
  items drawn with ``random_state=seed``. Per item ``(b - a) / max(a, b)`` with ``a`` the mean
  distance to its own cluster and ``b`` the smallest mean distance to another cluster; items of
  singleton clusters score 0. NaN if ``vectors`` is None, fewer than 2 clusters, as many clusters
  as non-noise items, or the subsample holds fewer than 2 clusters.

Only when ``truth`` is given, over the *grounded* items (``truth != -1``); NaN if there are none:

* ``coverage`` = share of grounded items whose label is not ``-1``.
* ``purity`` = over grounded items in non-noise clusters, ``sum_clusters max_group count(cluster,
  group) / number of such items`` (NaN if there are no such items).
* ``adjusted_rand`` / ``nmi`` = scikit-learn ``adjusted_rand_score`` /
  ``normalized_mutual_info_score`` (arithmetic normalisation) between ``truth`` and the labels of
  all grounded items, where every noise item is its own singleton cluster, so marking everything
  as noise is never rewarded as one big correct cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_score,
)

NOISE = -1

# --------------------------------------------------------------------------- retrieval


def _group_size_lookup(
    query_groups: np.ndarray, item_groups: np.ndarray, group_sizes: dict[int, int] | None
) -> np.ndarray:
    """Size of each query's group (0 for group -1 or an unknown group)."""
    if group_sizes is None:
        values, counts = np.unique(item_groups[item_groups != NOISE], return_counts=True)
        group_sizes = dict(zip(values.tolist(), counts.tolist(), strict=True))
    sizes = [0 if g == NOISE else int(group_sizes.get(g, 0)) for g in query_groups.tolist()]
    return np.asarray(sizes, dtype=np.int64)


def _relevance(ranked: np.ndarray, query_groups: np.ndarray, item_groups: np.ndarray) -> np.ndarray:
    """Boolean (Q, K) matrix: result is a real item of the query's (non -1) group."""
    valid = ranked >= 0
    result_groups = np.where(valid, item_groups[np.where(valid, ranked, 0)], NOISE)
    return valid & (result_groups == query_groups[:, None]) & (query_groups[:, None] != NOISE)


def _validate_retrieval(
    ranked: np.ndarray, query_groups: np.ndarray, item_groups: np.ndarray, ks: Sequence[int]
) -> None:
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be 2-D (Q, K), got shape {ranked.shape}")
    if query_groups.shape != (ranked.shape[0],):
        raise ValueError("query_groups must have shape (Q,) matching ranked")
    if item_groups.ndim != 1:
        raise ValueError("item_groups must be 1-D (N,)")
    if ranked.size and (ranked.max() >= len(item_groups) or ranked.min() < NOISE):
        raise ValueError("ranked holds indices outside [-1, N)")
    bad = [k for k in ks if not 1 <= k <= ranked.shape[1]]
    if bad:
        raise ValueError(f"every k must satisfy 1 <= k <= K={ranked.shape[1]}, got {bad}")


def _metrics_at_k(rel: np.ndarray, n_rel: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-query metrics at cutoff k for relevance matrix rel (Q, K) and R_q n_rel (Q,)."""
    top = rel[:, :k].astype(np.float64)
    hits = top.sum(axis=1)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    prec_at_i = np.cumsum(top, axis=1) / ranks
    ideal_hits = np.minimum(k, n_rel)
    discounts = 1.0 / np.log2(ranks + 1.0)
    idcg = np.cumsum(discounts)[ideal_hits - 1]
    return {
        "precision": hits / k,
        "recall": hits / n_rel,
        "hit_rate": (hits > 0).astype(np.float64),
        "map": (prec_at_i * top).sum(axis=1) / ideal_hits,
        "ndcg": (top * discounts).sum(axis=1) / idcg,
    }


def retrieval_metrics(
    ranked: np.ndarray,
    query_groups: np.ndarray,
    item_groups: np.ndarray,
    group_sizes: dict[int, int] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Precision, recall, hit rate, MAP and nDCG at each k; see the module docstring."""
    ranked = np.asarray(ranked, dtype=np.int64)
    query_groups = np.asarray(query_groups, dtype=np.int64)
    item_groups = np.asarray(item_groups, dtype=np.int64)
    _validate_retrieval(ranked, query_groups, item_groups, ks)
    n_rel = _group_size_lookup(query_groups, item_groups, group_sizes) - 1
    keep = n_rel > 0
    rel = _relevance(ranked[keep], query_groups[keep], item_groups)
    out: dict[str, float] = {"queries": int(keep.sum()), "skipped_queries": int((~keep).sum())}
    for k in ks:
        for name, values in _metrics_at_k(rel, n_rel[keep], k).items():
            out[f"{name}@{k}"] = float(values.mean()) if values.size else float("nan")
    return out


# --------------------------------------------------------------------------- clustering


def _silhouette(vectors: np.ndarray | None, labels: np.ndarray, sample: int, seed: int) -> float:
    """Cosine silhouette over non-noise items, NaN where it is undefined."""
    if vectors is None:
        return float("nan")
    vectors = np.asarray(vectors)
    if len(vectors) != len(labels):
        raise ValueError("vectors and labels must have the same length")
    mask = labels != NOISE
    n = int(mask.sum())
    n_clusters = len(np.unique(labels[mask]))
    if n_clusters < 2 or n_clusters >= n:
        return float("nan")
    try:
        score = silhouette_score(
            vectors[mask], labels[mask], metric="cosine",
            sample_size=min(sample, n), random_state=seed,
        )
    except ValueError:  # the subsample held fewer than 2 clusters (or one per item)
        return float("nan")
    return float(score)


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Purity over items with a non-noise label (all given items are grounded)."""
    mask = labels != NOISE
    if not mask.any():
        return float("nan")
    pairs, counts = np.unique(np.stack([labels[mask], truth[mask]], axis=1), axis=0,
                              return_counts=True)
    _, cluster_idx = np.unique(pairs[:, 0], return_inverse=True)
    best = np.zeros(cluster_idx.max() + 1, dtype=np.int64)
    np.maximum.at(best, cluster_idx, counts)
    return float(best.sum() / mask.sum())


def _noise_as_singletons(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters to 0..C-1 and give every noise item a fresh label of its own."""
    out = np.empty_like(labels)
    mask = labels != NOISE
    _, inverse = np.unique(labels[mask], return_inverse=True)
    out[mask] = inverse
    n_clusters = int(inverse.max()) + 1 if inverse.size else 0
    out[~mask] = n_clusters + np.arange(int((~mask).sum()))
    return out


def _grounded_metrics(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """coverage, purity, adjusted_rand, nmi over grounded items (truth != -1)."""
    if truth.shape != labels.shape:
        raise ValueError("truth and labels must have the same shape")
    grounded = truth != NOISE
    if not grounded.any():
        return dict.fromkeys(("coverage", "purity", "adjusted_rand", "nmi"), float("nan"))
    lab, tru = labels[grounded], truth[grounded]
    pred = _noise_as_singletons(lab)
    return {
        "coverage": float(np.mean(lab != NOISE)),
        "purity": _purity(lab, tru),
        "adjusted_rand": float(adjusted_rand_score(tru, pred)),
        "nmi": float(normalized_mutual_info_score(tru, pred)),
    }


def cluster_metrics(
    vectors: np.ndarray | None,
    labels: np.ndarray,
    truth: np.ndarray | None = None,
    silhouette_sample: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """Cluster count, noise share, silhouette and, with truth, grounding figures.

    See the module docstring for the exact definitions.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 1:
        raise ValueError("labels must be 1-D (N,)")
    out: dict[str, float] = {
        "n_clusters": int(len(np.unique(labels[labels != NOISE]))),
        "noise_share": float(np.mean(labels == NOISE)) if labels.size else float("nan"),
        "silhouette": _silhouette(vectors, labels, silhouette_sample, seed),
    }
    if truth is not None:
        out.update(_grounded_metrics(labels, np.asarray(truth, dtype=np.int64)))
    return out

"""How unlike the rest of the collection each image is: the odd ones and the most unique.

Two scores, each given as its rank, a share in [0, 1] (0.99: above 99% of the collection),
because distances differ from model to model and a rank is what a person sorts and thresholds
by:

- `uniqueness`: the mean cosine distance to the `UNIQUENESS_NEIGHBOURS` nearest images. How
  alone an image is among its closest: what a diverse subset picks first. An image with copies
  is not unique: its copies are its neighbours.
- `outlier` (`outlier_distances`): the mean cosine distance to the 10th to the 200th nearest
  images of a seeded reference sample of `REFERENCE_SAMPLE` images (the whole collection when
  it is smaller; the n/10th when n/10 < 200): how far the image is from the collection beyond
  its own few. The odd ones view sorts by it. Foreign images seldom come one at a time: a
  folder of 92 textures planted among Caltech-101's 9,145 photos are each other's nearest
  images, and the top 1% by `uniqueness` held none of them; by `outlier`, 62 (docs/operations.md,
  "Odd ones"). The sample keeps it a fixed cost per image and a fixed share: a group stays
  visible while it is under about 1% of the collection, at any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIQUENESS_NEIGHBOURS = 10
OUTLIER_NEIGHBOURS = 200
REFERENCE_SAMPLE = 20_000
_QUERY_CHUNK = 8_192


@dataclass(frozen=True)
class Uniqueness:
    distance: np.ndarray  # (n,) mean cosine distance to the nearest images
    uniqueness: np.ndarray  # (n,) its rank as a share in [0, 1]
    outlier: np.ndarray  # (n,) rank of the mean distance to the 10th..200th nearest


def uniqueness_scores(cosine: np.ndarray, far: np.ndarray) -> Uniqueness:
    """From each image's cosines to its nearest images, best first (n, k), and its
    `outlier_distances`; an image alone in its collection (k = 0) is neither unique nor odd."""
    if cosine.shape[1] == 0:
        nothing = np.zeros(len(cosine), np.float32)
        return Uniqueness(nothing, nothing, nothing)
    k = min(UNIQUENESS_NEIGHBOURS, cosine.shape[1])
    distance = (1.0 - cosine[:, :k].astype(np.float64).mean(axis=1)).astype(np.float32)
    return Uniqueness(distance, rank_share(distance), rank_share(far))


def outlier_distances(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each image's mean cosine distance to its 10th..200th nearest images of the reference
    sample (itself left out): exact search over at most `REFERENCE_SAMPLE` vectors, queried in
    chunks, so the cost grows with n and the memory does not."""
    import faiss

    n = len(vectors)
    if n < 2:
        return np.zeros(n, np.float32)
    reference = np.arange(n) if n <= REFERENCE_SAMPLE else np.sort(
        np.random.default_rng(seed).choice(n, REFERENCE_SAMPLE, replace=False))
    m = len(reference)
    low = min(UNIQUENESS_NEIGHBOURS, m - 1)
    high = min(OUTLIER_NEIGHBOURS, max(UNIQUENESS_NEIGHBOURS + 1, m // 10), m - 1)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors[reference], dtype=np.float32))
    place = np.full(n, -1, np.int64)
    place[reference] = np.arange(m)
    far = np.empty(n, np.float32)
    for start in range(0, n, _QUERY_CHUNK):
        rows = np.arange(start, min(start + _QUERY_CHUNK, n))
        cosine, found = index.search(np.ascontiguousarray(vectors[rows], dtype=np.float32),
                                     high + 1)
        own = found == place[rows][:, None]
        own[~own.any(axis=1), -1] = True  # not in the sample: drop the farthest instead
        kept = cosine[~own].reshape(len(rows), high)
        far[rows] = 1.0 - kept[:, low - 1:high].astype(np.float64).mean(axis=1)
    return far


def rank_share(values: np.ndarray) -> np.ndarray:
    """Each value's rank among all as a share in [0, 1] (ties share the lower rank)."""
    n = len(values)
    if n < 2:
        return np.zeros(n, np.float32)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n, np.float64)
    ranks[order] = np.arange(n)
    sorted_values = values[order]
    first = np.searchsorted(sorted_values, sorted_values, side="left")  # ties: the lowest rank
    ranks[order] = first
    return (ranks / (n - 1)).astype(np.float32)

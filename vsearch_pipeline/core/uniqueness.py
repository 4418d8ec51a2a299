"""How unlike the rest of the collection each image is: the odd ones and the most unique.

Two scores from each image's nearest images (exact search, approximate above
core.near_duplicates.EXACT_NEIGHBOURS_MAX), each given as its rank, a share in [0, 1] (0.99:
above 99% of the collection), because distances differ from model to model and a rank is what
a person sorts and thresholds by:

- `uniqueness`: the mean cosine distance to the `UNIQUENESS_NEIGHBOURS` nearest images. How
  alone an image is among its closest: what a diverse subset picks first. An image with copies
  is not unique: its copies are its neighbours.
- `outlier`: the mean cosine distance to the nearest images from the 10th to the
  `OUTLIER_NEIGHBOURS`th (to the n/10th in a collection under 2,000 images, where 200 would be
  most of it): how far the image is from the collection beyond its own few. The odd
  ones view sorts by it. Foreign images seldom come one at a time: a folder of 92 textures
  planted among Caltech-101's 9,145 photos are each other's nearest images, and the top 1% by
  `uniqueness` held none of them; by `outlier`, 62 (docs/operations.md, "Odd ones").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIQUENESS_NEIGHBOURS = 10
OUTLIER_NEIGHBOURS = 200


@dataclass(frozen=True)
class Uniqueness:
    distance: np.ndarray  # (n,) mean cosine distance to the nearest images
    uniqueness: np.ndarray  # (n,) its rank as a share in [0, 1]
    outlier: np.ndarray  # (n,) rank of the mean distance to the 10th..200th nearest


def uniqueness_scores(cosine: np.ndarray) -> Uniqueness:
    """From each image's cosines to its nearest images, best first (n, k); an image alone in
    its collection (k = 0) is neither unique nor odd: there is nothing to compare it with."""
    if cosine.shape[1] == 0:
        nothing = np.zeros(len(cosine), np.float32)
        return Uniqueness(nothing, nothing, nothing)
    k = min(UNIQUENESS_NEIGHBOURS, cosine.shape[1])
    far_k = min(OUTLIER_NEIGHBOURS, max(UNIQUENESS_NEIGHBOURS + 1, len(cosine) // 10))
    near = cosine.astype(np.float64)
    distance = (1.0 - near[:, :k].mean(axis=1)).astype(np.float32)
    far = 1.0 - near[:, k - 1:far_k].mean(axis=1)
    return Uniqueness(distance, rank_share(distance), rank_share(far))


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

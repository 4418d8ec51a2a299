"""How unlike the rest of the collection each image is: the "odd ones" and the most unique.

The score is the mean cosine distance to an image's `UNIQUENESS_NEIGHBOURS` nearest images
(exact search, approximate above core.near_duplicates.EXACT_NEIGHBOURS_MAX), and `uniqueness`
its rank as a share: 0.99 means more unique than 99% of the collection. A rank, not the
distance itself, because distances differ from model to model and the rank is what a person
sorts and thresholds by. An image with copies is not unique: its copies are its neighbours.

What it finds and what it cannot (measured on Caltech-101, docs/operations.md "Odd ones"): a
foreign image alone among the collection (a texture, a single object from another set) is far
from every neighbour; a foreign *group* large enough to be its own neighbourhood (88 COIL-20
views of 20 objects planted together) is not odd to any neighbour-based score, and shows
instead as its own region of the map and its own clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNIQUENESS_NEIGHBOURS = 10


@dataclass(frozen=True)
class Uniqueness:
    distance: np.ndarray  # (n,) mean cosine distance to the nearest images
    uniqueness: np.ndarray  # (n,) the distance's rank as a share in [0, 1]


def uniqueness_scores(cosine: np.ndarray) -> Uniqueness:
    """From each image's cosines to its nearest images, best first (n, k >= 1)."""
    k = min(UNIQUENESS_NEIGHBOURS, cosine.shape[1])
    distance = (1.0 - cosine[:, :k].astype(np.float64).mean(axis=1)).astype(np.float32)
    return Uniqueness(distance, rank_share(distance))


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

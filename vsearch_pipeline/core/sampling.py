"""Deterministic, stable subsets.

By hash (the default): each image is in or out on its own, kept when a keyed hash of (seed, id)
falls below `fraction`. So the same inputs give the same subset, the expected share is
`fraction`, and adding images never changes the decision for the images already there (no
reshuffle). Diverse (`select_diverse`): the batch's share chosen to cover what its images show,
by their vectors; decided per batch, so a new batch never changes an older one's. Forced images
are always in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np


def sample_score(image_id: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the seed and the image id alone."""
    digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def validate_fraction(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"subset.fraction must be in (0, 1], got {fraction}")
    return fraction


def forced_mask(keys: Sequence[Sequence[str]], force_include: Iterable[str]) -> np.ndarray:
    """True for rows where any of the row's keys (id, path, URI) is in force_include."""
    forced = set(force_include)
    return np.array([any(k in forced for k in row_keys) for row_keys in keys], dtype=bool)


def select_subset(
    ids: Sequence[str],
    fraction: float,
    seed: int,
    forced: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(chosen mask, score per image). Forced rows are chosen whatever their score."""
    validate_fraction(fraction)
    scores = np.array([sample_score(i, seed) for i in ids], dtype=np.float64)
    chosen = scores < fraction
    if forced is not None:
        chosen |= forced
    return chosen, scores


def unmatched_force_include(force_include: Iterable[str], keys: Iterable[Iterable[str]]) -> list[str]:
    """The force_include entries that match no image: a typo should be visible, not silent."""
    seen = {k for row_keys in keys for k in row_keys}
    return sorted(set(force_include) - seen)


SUBSET_MODES = ("hash", "diverse")
COVER_NEIGHBOURS = (10, 200)  # a chosen image covers about 1/fraction nearest images, within


def select_diverse(ids: Sequence[str], vectors: np.ndarray, fraction: float, seed: int,
                   forced: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(chosen mask, pick order) of `round(fraction * n)` images that cover the batch.

    Each image covers itself and its 1/fraction nearest images (cosine; 10 to 200), so that the
    chosen can cover the batch once between them. Forced images
    are taken first; then, greedily, the image that covers the most images not covered yet
    (ties: the lower `sample_score`, so the same inputs give the same subset); once everything
    is covered, coverage starts again from the images chosen so far. A dense class is covered by
    a few of its images and a rare one gets its own, where a hash picks each class in
    proportion to its size. `order[i]` is when image i was picked (-1: not chosen).
    """
    import heapq

    from vsearch_pipeline.core.near_duplicates import nearest_neighbours

    validate_fraction(fraction)
    n = len(ids)
    want = max(round(fraction * n), int(forced.sum()) if forced is not None else 0)
    order = np.full(n, -1, np.int64)
    if n == 0:
        return np.zeros(0, bool), order
    low, high = COVER_NEIGHBOURS
    k = min(int(np.clip(round(1 / fraction), low, high)), n - 1)
    rows = nearest_neighbours(vectors, k)[1] if k else np.zeros((n, 0), np.int64)
    covers = np.concatenate([np.arange(n)[:, None], rows], axis=1)
    ties = np.array([sample_score(i, seed) for i in ids])
    covered = np.zeros(n, bool)
    picked = 0

    def take(i: int) -> None:
        nonlocal picked
        order[i] = picked
        picked += 1
        covered[covers[i]] = True

    for i in np.flatnonzero(forced) if forced is not None else ():
        take(int(i))
    heap = [(-len(covers[i]), ties[i], i) for i in range(n) if order[i] < 0]
    heapq.heapify(heap)
    while picked < want and heap:
        if covered.all():
            covered[:] = False
            covered[order >= 0] = True
            heap = [(-len(covers[i]), ties[i], i) for i in range(n) if order[i] < 0]
            heapq.heapify(heap)
        stale, tie, i = heapq.heappop(heap)
        gain = int((~covered[covers[i]]).sum())
        if gain < -stale and heap:  # gains only fall: look again at its current gain (lazy greedy)
            heapq.heappush(heap, (-gain, tie, i))
            continue
        take(i)
    return order >= 0, order

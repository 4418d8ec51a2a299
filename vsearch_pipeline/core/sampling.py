"""Deterministic, stable subsets.

Each image is in or out on its own: it is kept when a keyed hash of (seed, id) falls below
`fraction`. So the same inputs give the same subset, the expected share is `fraction`, and adding
images never changes the decision for the images already there (no reshuffle). Forced images are
always in.
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

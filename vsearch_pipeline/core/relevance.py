"""Where a result list stops matching: a floor on the score, chosen from the collection's own
scores between things that have nothing to do with each other.

A nearest-neighbour search always answers k images, however poor the best of them is, so a
result list needs a line between "these match" and "these are only the closest there is".

- Image queries: random pairs of the collection's own vectors. Some of them are related (same
  class, near-duplicates: 5% of the demo's pairs are edits of one photo), so the floor is robust
  to them: the median plus `MATCH_Z` robust standard deviations (1.4826 times the median absolute
  deviation). On all of Caltech-101 it is 0.62, reached by 88% of same-class pairs and by 1.6%
  of pairs of different classes.
- Text queries (words attached to the images): each sampled image's strongest phrase scored
  against the other images that do not carry it, as an unrelated query would score. Sentence
  models give unrelated nouns a long tail (0.4 to 0.5 is common), and these scores are clean of
  exact matches, so the floor is their 99th percentile (`TEXT_QUANTILE`): 0.54 on the demo, 0.53
  on Caltech-101; "zebra crossing in the rain" finds nothing on the demo (best 0.36, "grass")
  and "cat" its six cat photos (0.68 to 0.70) and then nothing (best 0.43, "brick").
"""

from __future__ import annotations

import numpy as np

MATCH_Z = 3.0  # robust standard deviations above the median of random image pairs
TEXT_QUANTILE = 0.99  # of the scores of unrelated text queries
SAMPLE_SIZE = 512  # images sampled (seeded) to measure the unrelated scores
MIN_SCORES = 50  # fewer unrelated scores than this: no floor (a tiny collection)


def match_floor(unrelated: np.ndarray, z: float = MATCH_Z) -> float | None:
    """median + z robust standard deviations of `unrelated` scores; None when too few."""
    scores = np.asarray(unrelated, np.float64).ravel()
    scores = scores[np.isfinite(scores)]
    if scores.size < MIN_SCORES:
        return None
    median = float(np.median(scores))
    spread = 1.4826 * float(np.median(np.abs(scores - median)))
    return round(median + z * spread, 6)


def tail_floor(unrelated: np.ndarray, quantile: float = TEXT_QUANTILE) -> float | None:
    """The `quantile` of `unrelated` scores; None when too few."""
    scores = np.asarray(unrelated, np.float64).ravel()
    scores = scores[np.isfinite(scores)]
    if scores.size < MIN_SCORES:
        return None
    return round(float(np.quantile(scores, quantile)), 6)


def sample_positions(n: int, size: int = SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    """A fixed sample of positions, so the floor of an index version never changes."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def pair_scores(vectors: np.ndarray) -> np.ndarray:
    """The inner products of every distinct pair of the (sampled) unit vectors."""
    gram = vectors @ vectors.T
    return gram[np.triu_indices(len(vectors), k=1)]

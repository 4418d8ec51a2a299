"""Retrieval post-processing: what turns good vectors into better rankings, without labels.

The stages, each measured on Caltech-101 by the `evaluation` asset (docs/search-quality.md):

* **PCA-whitening with power normalisation** (`Whitening`), fitted on the collection's own
  vectors. Directions that every image shares (the bursty, dominant components of a CNN
  descriptor) are divided down; the eigenvalues are shrunk towards their mean before the division
  (`shrinkage`), since the smallest ones are noise that plain whitening would blow up. Applied to
  every indexed vector and every query alike, and versioned with the index.
* **Database-side augmentation** (DBA, `augment`): each indexed vector is replaced by the
  weighted mean of itself and its nearest neighbours, weights ``max(cos, 0) ** alpha`` (the
  vector itself has cosine 1). Images of a class pull together; an image's odd background counts
  for less.
* **Average query expansion** (alpha-QE, the same `augment` on the query side): the query is
  replaced by the weighted mean of its top neighbours in the index and searched again; with
  more than one round the expanded query is expanded again (a step of diffusion over the
  neighbour graph, one more search each).
* **k-reciprocal re-ranking** (`k_reciprocal_rerank`), over the top candidates: a candidate that
  the query finds and that would also find the query among its own nearest neighbours is
  trusted more. Each side's reciprocal neighbourhood is a weighted set; the Jaccard distance of
  the two sets is mixed with the original distance (Zhong et al., CVPR 2017, without its
  expansion step). The database side's neighbourhoods come from the neighbour graph kept with
  the index, so a query costs one search and a few small set operations.
* **Near-duplicates first** (`near_duplicates_first`): DBA and QE pull a class together, which
  also blurs what makes one photo itself, so an exact copy or a crop of the query could sink
  below other members of its class. Each of the top candidates whose cosine with the query,
  both vectors un-augmented, clears `near_duplicate_floor` has the excess added to its score
  (then rescaled so that an exact copy scores 1). Below the floor nothing changes.

Everything here is plain NumPy on unit vectors (cosine = inner product).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field

RERANKERS = ("none", "k_reciprocal")
RERANK_ORIGINAL_WEIGHT = 0.3  # share of the cosine distance in the re-ranked distance
NEAR_DUPLICATE_WEIGHT = 2.0  # score added per unit of un-augmented cosine above the floor

Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # queries, k -> (scores, positions)


def unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Whitening:
    """x -> unit(signed_power(P^T (x - mean), power)); P holds the whitened principal axes."""

    mean: np.ndarray  # (d,)
    projection: np.ndarray  # (d, dims)
    power: float

    @property
    def dims(self) -> int:
        return int(self.projection.shape[1])

    def apply(self, vectors: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        """Whitened unit rows; a chunk of rows at a time, so that a million vectors need no
        centred float copy of them all."""
        vectors = np.atleast_2d(vectors)
        out = np.empty((len(vectors), self.dims), np.float32)
        for start in range(0, len(vectors), chunk):
            projected = (vectors[start:start + chunk].astype(np.float32) - self.mean) @ self.projection
            if self.power != 1.0:
                projected = np.sign(projected) * np.abs(projected) ** self.power
            out[start:start + chunk] = unit(projected)
        return out

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, projection=self.projection, power=np.float32(self.power))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Whitening:
        arrays = np.load(io.BytesIO(data))
        return cls(arrays["mean"], arrays["projection"], float(arrays["power"]))

    @property
    def version(self) -> str:
        digest = hashlib.sha256(self.mean.tobytes() + self.projection.tobytes())
        digest.update(str(self.power).encode())
        return digest.hexdigest()[:12]


def fit_whitening(vectors: np.ndarray, dims: int, shrinkage: float, power: float) -> Whitening:
    """PCA-whitening of `vectors` onto their top `dims` axes (at most rank - 1).

    Each axis is divided by sqrt(eigenvalue + shrinkage * mean kept eigenvalue): shrinkage 0 is
    plain whitening, large values leave the PCA rotation nearly unscaled."""
    n = len(vectors)
    if n < 3:
        raise ValueError(f"whitening needs at least 3 vectors, got {n}")
    mean, covariance = _mean_and_covariance(vectors)
    eigenvalues, axes = np.linalg.eigh(covariance)
    keep = np.argsort(eigenvalues)[::-1][: min(dims, n - 1, vectors.shape[1])]
    eigenvalues = np.clip(eigenvalues[keep], 0, None)
    scale = 1 / np.sqrt(eigenvalues + shrinkage * eigenvalues.mean() + 1e-12)
    return Whitening(mean.astype(np.float32), (axes[:, keep] * scale).astype(np.float32), power)


def _mean_and_covariance(vectors: np.ndarray, chunk: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
    """In float64, a chunk of rows at a time: no float64 copy of all the vectors (200,000 of
    1,280 dimensions would be 2 GB, twice over once centred)."""
    mean = np.zeros(vectors.shape[1])
    for start in range(0, len(vectors), chunk):
        mean += vectors[start:start + chunk].sum(axis=0, dtype=np.float64)
    mean /= len(vectors)
    scatter = np.zeros((vectors.shape[1], vectors.shape[1]))
    for start in range(0, len(vectors), chunk):
        centred = vectors[start:start + chunk].astype(np.float64) - mean
        scatter += centred.T @ centred
    return mean, scatter / (len(vectors) - 1)


@dataclass(frozen=True)
class ProjectionHead:
    """The trained head as NumPy weights, the batch norm folded into the first layer.

    `apply` returns normalize([x / |x|, z / |z|]) with z = relu(x @ w1 + b1) @ w2 + b2: the raw
    vector and the head's output side by side, so that cosine similarity is the mean of the raw
    and the head's similarities (measured better than the head's output alone: core/projection_head.py)."""

    w1: np.ndarray  # (in_dim, hidden)
    b1: np.ndarray
    w2: np.ndarray  # (hidden, out_dim)
    b2: np.ndarray

    @property
    def in_dim(self) -> int:
        return int(self.w1.shape[0])

    @property
    def dim(self) -> int:
        """The length of the vectors `apply` returns."""
        return self.in_dim + int(self.w2.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Unit float32 vectors for backbone vectors (n, in_dim), or for one vector (in_dim,)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"head expects {self.in_dim}-d vectors, got {x.shape[-1]}-d")
        z = np.maximum(x @ self.w1 + self.b1, 0) @ self.w2 + self.b2
        out = np.concatenate([unit(x), unit(z)], axis=-1) / np.sqrt(2)
        return out.astype(np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, w1=self.w1, b1=self.b1, w2=self.w2, b2=self.b2)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ProjectionHead:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return cls(arrays["w1"], arrays["b1"], arrays["w2"], arrays["b2"])

    @property
    def version(self) -> str:
        """Short sha256 of the weights (not of the npz, whose zip entries carry times)."""
        digest = hashlib.sha256()
        for array in (self.w1, self.b1, self.w2, self.b2):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return digest.hexdigest()[:12]


def neighbour_weights(scores: np.ndarray, alpha: float) -> np.ndarray:
    return np.clip(scores, 0, None) ** alpha


def augment(vectors: np.ndarray, neighbour_vectors: np.ndarray, scores: np.ndarray,
            alpha: float) -> np.ndarray:
    """Each vector (n, d) replaced by the weighted mean of itself and its neighbours (n, k, d)
    with their cosines (n, k): alpha-QE on queries, DBA on the database. A neighbour that is
    the vector itself is skipped by the caller, so that it counts once, with weight 1."""
    weights = neighbour_weights(scores, alpha)[:, :, None]
    return unit(vectors + (weights * neighbour_vectors).sum(axis=1))


def augment_database(vectors: np.ndarray, neighbours: np.ndarray, scores: np.ndarray,
                     alpha: float, chunk: int = 16_384) -> np.ndarray:
    """DBA from a neighbour graph (positions and cosines, (n, k), self excluded, -1 padding).

    A chunk of rows at a time: the gathered neighbours are (rows, k, d), which for a million
    vectors at once would be 10 GB at k=10 and 256 dimensions, twice over once weighted."""
    out = np.empty((len(vectors), vectors.shape[1]), np.float32)
    for start in range(0, len(vectors), chunk):
        rows = slice(start, start + chunk)
        present = neighbours[rows] >= 0
        gathered = vectors[np.where(present, neighbours[rows], 0)]
        out[rows] = augment(vectors[rows], gathered, np.where(present, scores[rows], 0.0), alpha)
    return out


@dataclass(frozen=True)
class NeighbourGraph:
    """Each indexed vector's nearest other vectors (positions, cosines; -1 padding), best first,
    computed on the vectors before augmentation: what DBA averages and re-ranking reads."""

    positions: np.ndarray  # (n, k) int64
    scores: np.ndarray  # (n, k) float32

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, positions=self.positions, scores=self.scores)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NeighbourGraph:
        arrays = np.load(io.BytesIO(data))
        return cls(arrays["positions"], arrays["scores"])


def neighbour_graph(search: Searcher, vectors: np.ndarray, k: int,
                    chunk: int = 4096) -> NeighbourGraph:
    """The k nearest other vectors of every vector, by `search` over an index of `vectors`."""
    positions = np.full((len(vectors), k), -1, np.int64)
    scores = np.zeros((len(vectors), k), np.float32)
    for start in range(0, len(vectors), chunk):
        found_scores, found = search(vectors[start:start + chunk], k + 1)
        for row, (s, p) in enumerate(zip(found_scores, found, strict=True), start=start):
            keep = (p >= 0) & (p != row)
            kept = p[keep][:k]
            positions[row, : len(kept)] = kept
            scores[row, : len(kept)] = s[keep][:k]
    return NeighbourGraph(positions, scores)


def expand_queries(search: Searcher, stored: Callable[[np.ndarray], np.ndarray],
                   queries: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """alpha-QE: each query plus its top-k neighbours' stored vectors, weighted by cosine^alpha."""
    scores, positions = search(queries, k)
    present = positions >= 0
    gathered = stored(np.where(present, positions, 0).ravel()).reshape(*positions.shape, -1)
    return augment(queries, gathered, np.where(present, scores, 0.0), alpha)


def _reciprocal_sets(graph: NeighbourGraph, k1: int) -> list[dict[int, float]]:
    """Each database item's k-reciprocal neighbourhood (itself included) as weights summing to 1:
    j is in i's when each is among the other's k1 nearest."""
    near = graph.positions[:, :k1]
    members = [set(row[row >= 0].tolist()) for row in near]
    sets = []
    for i, row in enumerate(near):
        weights = {i: 1.0}
        for j, score in zip(row.tolist(), graph.scores[i, :k1].tolist(), strict=True):
            if j >= 0 and i in members[j]:
                weights[j] = float(np.exp(-(2 - 2 * score)))
        total = sum(weights.values())
        sets.append({j: w / total for j, w in weights.items()})
    return sets


@dataclass
class KReciprocalReranker:
    """Re-ranks a query's top candidates by k-reciprocal Jaccard distance mixed with cosine
    distance (`original_weight` of the latter). Built once per index from its neighbour graph."""

    graph: NeighbourGraph
    k1: int = 20
    original_weight: float = RERANK_ORIGINAL_WEIGHT

    def __post_init__(self) -> None:
        self.k1 = min(self.k1, self.graph.positions.shape[1])
        self._sets = _reciprocal_sets(self.graph, self.k1)
        kth = self.graph.scores[:, self.k1 - 1] if self.k1 else np.zeros(len(self._sets))
        self._kth_score = np.where(self.graph.positions[:, self.k1 - 1] >= 0, kth, -1.0)

    def rerank(self, scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One query's candidates (cosines, positions; best first) in their new order, with the
        new scores (1 - mixed distance, higher is better)."""
        keep = positions >= 0
        scores, positions = scores[keep], positions[keep]
        query_set = self._query_set(scores, positions)
        jaccard = np.array([self._jaccard(query_set, self._sets[p]) for p in positions.tolist()])
        distance = (1 - self.original_weight) * jaccard + self.original_weight * (1 - scores)
        order = np.argsort(distance, kind="stable")
        return (1 - distance[order]).astype(np.float32), positions[order]

    def _query_set(self, scores: np.ndarray, positions: np.ndarray) -> dict[int, float]:
        """The query's reciprocal neighbours: candidates among its k1 best that it would enter
        the k1 nearest of (its cosine beats their k1-th neighbour's). A candidate that is the
        query itself (cosine 1) is reciprocal by that rule."""
        weights: dict[int, float] = {}
        for score, position in zip(scores[: self.k1].tolist(), positions[: self.k1].tolist(),
                                   strict=True):
            if score >= self._kth_score[position]:
                weights[position] = float(np.exp(-(2 - 2 * score)))
        total = sum(weights.values()) or 1.0
        return {p: w / total for p, w in weights.items()}

    @staticmethod
    def _jaccard(a: dict[int, float], b: dict[int, float]) -> float:
        """1 - sum(min) / sum(max) of two weighted sets (each summing to 1, or empty)."""
        shared = sum(min(w, b[j]) for j, w in a.items() if j in b)
        total = sum(a.values()) + sum(b.values())
        return 1 - shared / (total - shared) if total > shared else 1.0


QueryExpansionK = Annotated[int, Field(ge=0, le=100)]  # alpha-QE neighbours per query; 0: off
NearDuplicateFloor = Annotated[float, Field(ge=0.0, le=1.0)]  # plain cosine lifting a candidate; 1: off


@dataclass(frozen=True)
class QueryPlan:
    """What happens to a query vector after embedding; recorded in the index's build.json.

    Also the declaration of these `retrieval` settings (types and bounds; the settings section
    inherits them). The defaults here are the plan that changes nothing, which is what a build
    recorded before each stage existed (`from_record`); the pipeline's own defaults for
    `query_expansion_k` and `near_duplicate_floor` are the settings section's."""

    query_expansion_k: QueryExpansionK = 0
    expansion_alpha: Annotated[float, Field(ge=0.0)] = 3.0  # neighbour weight cosine ** alpha
    query_expansion_rounds: Annotated[int, Field(ge=1, le=5)] = 1  # >1: the expanded query expanded again
    rerank: str = "none"  # none | k_reciprocal
    rerank_depth: Annotated[int, Field(ge=1, le=10_000)] = 100  # candidates re-ranked / lifted
    rerank_k1: Annotated[int, Field(ge=1, le=100)] = 20  # neighbourhood size of the k-reciprocal sets
    near_duplicate_floor: NearDuplicateFloor = 1.0

    @property
    def depth(self) -> int:
        """Candidates fetched and reordered after the expanded search (0: none reordered)."""
        reordered = self.rerank != "none" or self.near_duplicate_floor < 1
        return self.rerank_depth if reordered else 0

    @classmethod
    def from_record(cls, record: dict | None) -> QueryPlan:
        return cls(**record) if record else cls()


def ranked_search(search: Searcher, stored: Callable[[np.ndarray], np.ndarray],
                  queries: np.ndarray, k: int, plan: QueryPlan,
                  reranker: KReciprocalReranker | None = None,
                  plain: Callable[[np.ndarray], np.ndarray] | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the k best per query after query expansion, re-ranking and
    near-duplicates first, as `plan` says. `search` and `stored` read the index (vectors already
    in its space); `plain` gives indexed vectors before database-side augmentation."""
    original = np.atleast_2d(queries).astype(np.float32)
    queries = original
    for _ in range(plan.query_expansion_rounds if plan.query_expansion_k else 0):
        queries = expand_queries(search, stored, queries, plan.query_expansion_k,
                                 plan.expansion_alpha)
    if not plan.depth:
        return search(queries, k)
    scores, positions = search(queries, max(k, plan.depth))
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_positions = np.full((len(queries), k), -1, np.int64)
    for row in range(len(queries)):
        row_scores, row_positions = scores[row], positions[row]
        if reranker is not None and plan.rerank != "none":
            row_scores, row_positions = reranker.rerank(row_scores, row_positions)
        if plain is not None and plan.near_duplicate_floor < 1:
            row_scores, row_positions = near_duplicates_first(
                original[row], row_scores, row_positions, plain, plan.near_duplicate_floor)
        n = min(k, len(row_positions))
        out_scores[row, :n] = row_scores[:n]
        out_positions[row, :n] = row_positions[:n]
    return out_scores, out_positions


def near_duplicates_first(query: np.ndarray, scores: np.ndarray, positions: np.ndarray,
                          plain: Callable[[np.ndarray], np.ndarray], floor: float
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Candidates re-scored by ``(score + w * max(0, cos_plain - floor)) / (1 + w * (1 - floor))``
    and sorted, where cos_plain is the cosine of the un-augmented query and candidate vectors."""
    found = positions >= 0
    scores, positions = scores[found], positions[found]
    if not len(positions):
        return scores, positions
    plain_cosines = plain(positions).astype(np.float32) @ query
    bonus = NEAR_DUPLICATE_WEIGHT * np.clip(plain_cosines - floor, 0, None)
    rescored = (scores + bonus) / (1 + NEAR_DUPLICATE_WEIGHT * (1 - floor))
    order = np.argsort(-rescored, kind="stable")
    return rescored[order].astype(np.float32), positions[order]


@dataclass(frozen=True)
class VectorTransform:
    """Model vectors -> index vectors: the projection head trained on the collection (or none),
    then the fitted whitening (or none). Stored as files beside the index, so each index version
    answers queries with the transform it was built with."""

    whitening: Whitening | None = None
    head: ProjectionHead | None = None

    @property
    def version(self) -> str:
        parts = [part.version for part in (self.head, self.whitening) if part is not None]
        return "+".join(parts) or "none"

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.atleast_2d(vectors).astype(np.float32, copy=False)
        if self.head:
            vectors = self.head.apply(vectors)
        return self.whitening.apply(vectors) if self.whitening else vectors

    def files(self) -> dict[str, bytes]:
        parts = {"whitening.npz": self.whitening, "projection_head.npz": self.head}
        return {name: part.to_bytes() for name, part in parts.items() if part is not None}

    @classmethod
    def from_files(cls, read: Callable[[str], bytes | None]) -> VectorTransform:
        """`read(name)` gives a file's bytes, or None where the transform has no such file."""
        whitening, head = read("whitening.npz"), read("projection_head.npz")
        return cls(Whitening.from_bytes(whitening) if whitening else None,
                   ProjectionHead.from_bytes(head) if head else None)

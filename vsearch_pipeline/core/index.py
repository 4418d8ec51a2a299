"""FAISS indexes over unit vectors (inner product = cosine), named and tuned as FAISS names them.

Index types and their parameters:
- ``flat``: exact search, no parameters.
- ``hnsw``: ``M`` (neighbours per node, default 32), ``efConstruction`` (default 200),
  ``efSearch`` (default 128).
- ``ivf-flat``: ``nlist`` (default 4*sqrt(n), at most n/39 so each list has training points),
  ``nprobe`` (default 16).
- ``ivf-pq``: ``nlist``, ``nprobe`` as above, ``M`` (PQ sub-quantizers; must divide the
  dimension; default the largest divisor <= 64), ``nbits`` (bits per code, default 8, lowered for
  small collections that cannot train 2**nbits centroids), ``opq`` (rotate with OPQ first),
  ``fast_scan`` (4-bit codes scanned with SIMD, FAISS's ``PQ{M}x4fs``; needs ``nbits`` 4 and an
  even ``M``).
- ``storage`` (hnsw): how the graph's vectors are stored, as the factory names it: ``Flat``
  (float32), ``SQfp16``, ``SQ8`` or ``SQ4`` (scalar-quantized, 2 to 8 times smaller).
- ``refine`` (any approximate type): wrap in ``IndexRefineFlat``, which keeps the exact vectors
  and re-ranks ``k_factor * k`` candidates of the base index by exact inner product. Quantized
  codes then only have to find the neighbours among the candidates, not order them, which is
  what lets a compact index reach high recall (see benchmarks/ann.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import faiss
import numpy as np

# declared in core.params, without FAISS: the settings build on them (and import them cheaply)
from vsearch_pipeline.core.params import IndexParams
from vsearch_pipeline.core.params import validate_index_params as validate_params

MIN_POINTS_PER_CENTROID = 39


def _largest_divisor(d: int, limit: int) -> int:
    return max(m for m in range(1, min(d, limit) + 1) if d % m == 0)


def resolve_params(params: IndexParams, n: int, d: int) -> IndexParams:
    """Fill the defaults that depend on the collection, so the recorded parameters are the real ones."""
    validate_params(params)
    if params.index_type == "hnsw":
        return replace(params, M=params.M or 32)
    if params.index_type == "flat":
        return params
    nlist = params.nlist or int(4 * math.sqrt(n))
    nlist = max(1, min(nlist, n // MIN_POINTS_PER_CENTROID or 1))
    resolved = replace(params, nlist=nlist, nprobe=min(params.nprobe, nlist))
    if params.index_type == "ivf-pq":
        m = params.M or _largest_divisor(d, 64)
        if d % m:
            raise ValueError(f"index.M={m} must divide the vector dimension {d}")
        nbits = min(params.nbits, max(1, int(math.log2(max(n, 2) / 4))))
        if params.fast_scan and (nbits != 4 or m % 2):
            raise ValueError(f"index.fast_scan needs nbits 4 and an even M; resolved nbits={nbits}, "
                             f"M={m} (fewer than 64 vectors lower nbits)")
        resolved = replace(resolved, M=m, nbits=nbits)
    return resolved


def factory_string(params: IndexParams, d: int) -> str:
    """The faiss.index_factory description of the resolved parameters."""
    return _base_factory(params) + (",RFlat" if params.refine else "")


def _base_factory(params: IndexParams) -> str:
    kind = params.index_type
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{params.M},{params.storage}"
    if kind == "ivf-flat":
        return f"IVF{params.nlist},Flat"
    prefix = f"OPQ{params.M}," if params.opq else ""
    if params.fast_scan:
        return f"{prefix}IVF{params.nlist},PQ{params.M}x4fs"
    return f"{prefix}IVF{params.nlist},PQ{params.M}x{params.nbits}np"  # np: skip polysemous training


def build_index(vectors: np.ndarray, params: IndexParams, seed: int = 0) -> faiss.Index:
    """Train (where the type needs it) and fill an index; `params` must be resolved."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    index = faiss.index_factory(d, factory_string(params, d), faiss.METRIC_INNER_PRODUCT)
    if params.index_type == "hnsw":
        faiss.downcast_index(base_index(index)).hnsw.efConstruction = params.efConstruction
    if not index.is_trained:
        index.train(_training_sample(vectors, seed))
    index.add(vectors)
    set_search_params(index, params)
    return index


def refill(index: faiss.Index, vectors: np.ndarray) -> faiss.Index:
    """The trained `index` holding `vectors` in place of what it held, position for position.
    An HNSW graph is kept and only its stored vectors replaced: database-side augmentation moves
    each vector a little towards its neighbours, so the graph built on the vectors before it
    still leads to the right ones (recall@10 at efSearch 128 0.943 against 0.927 for a second
    build, 100k generated vectors), and a second build was half of the index step at a million."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) != index.ntotal:
        raise ValueError(f"refill needs {index.ntotal} vectors, got {len(vectors)}")
    outer = faiss.downcast_index(index)
    base = faiss.downcast_index(base_index(index))
    if not isinstance(base, faiss.IndexHNSW):
        index.reset()  # trained parts kept
        index.add(vectors)
        return index
    storage = faiss.downcast_index(base.storage)
    storage.reset()
    if isinstance(storage, faiss.IndexScalarQuantizer):
        storage.train(_training_sample(vectors, seed=0))  # the quantizer's ranges, of these
    storage.add(vectors)
    if isinstance(outer, faiss.IndexRefine):  # its exact copies too
        refine = faiss.downcast_index(outer.refine_index)
        refine.reset()
        refine.add(vectors)
    return index


def _training_sample(vectors: np.ndarray, seed: int, limit: int = 200_000) -> np.ndarray:
    if len(vectors) <= limit:
        return vectors
    rows = np.random.default_rng(seed).choice(len(vectors), limit, replace=False)
    return vectors[np.sort(rows)]


def base_index(index: faiss.Index) -> faiss.Index:
    """The index that finds the candidates: under an IndexRefineFlat, its base."""
    refine = faiss.downcast_index(index)
    return refine.base_index if isinstance(refine, faiss.IndexRefine) else index


def set_search_params(index: faiss.Index, params: IndexParams) -> None:
    """Search-time parameters live on the index object, not in the file's header alone, so they
    are set again after every load. ParameterSpace does not see through IndexRefine to an HNSW
    base, hence the explicit unwrapping."""
    base = base_index(index)
    if base is not index:
        faiss.downcast_index(index).k_factor = params.k_factor
    if params.index_type == "hnsw":
        faiss.downcast_index(base).hnsw.efSearch = params.efSearch
    elif params.index_type in ("ivf-flat", "ivf-pq"):
        faiss.ParameterSpace().set_index_parameter(base, "nprobe", params.nprobe)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the k nearest, best first; positions -1 where fewer exist."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    return index.search(queries, min(k, max(index.ntotal, 1)))


def filtered_search(index: faiss.Index, params: IndexParams, queries: np.ndarray, k: int,
                    allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Like `search`, restricted to the positions in `allowed`, so a rare tag is found however
    far its images are from the query. HNSW cannot walk its graph through a sparse selection, so
    there the allowed vectors are scored exactly; the other types take an FAISS ID selector."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    allowed = np.ascontiguousarray(allowed, dtype=np.int64)
    if params.index_type == "hnsw":
        return _exact_among(index, queries, k, allowed)
    selector = faiss.IDSelectorBatch(allowed)
    if params.index_type == "flat":
        search_params = faiss.SearchParameters(sel=selector)
    elif not params.opq:
        search_params = faiss.SearchParametersIVF(sel=selector, nprobe=params.nprobe)
    else:
        search_params = faiss.SearchParametersPreTransform(
            index_params=faiss.SearchParametersIVF(sel=selector, nprobe=params.nprobe))
    if params.refine:  # the base finds candidates among the allowed; refine re-ranks those only
        search_params = faiss.IndexRefineSearchParameters(k_factor=params.k_factor,
                                                          base_index_params=search_params)
    k = max(1, min(k, len(allowed)))
    return index.search(queries, k, params=search_params)


def _exact_among(index: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ index.reconstruct_batch(allowed).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(allowed))]
    return np.take_along_axis(scores, order, axis=1), allowed[order]


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at_k(
    index: faiss.Index, vectors: np.ndarray, k: int = 10, n_queries: int = 1000, seed: int = 0
) -> float:
    """Share of the exact top-k that the index returns, over a sample of the indexed vectors."""
    k = min(k, len(vectors))
    rows = np.random.default_rng(seed).choice(len(vectors), min(n_queries, len(vectors)),
                                              replace=False)
    queries = vectors[rows]
    truth = exact_neighbours(vectors, queries, k)
    found = search(index, queries, k)[1]
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found, strict=True))
    return hits / (k * len(rows))


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))

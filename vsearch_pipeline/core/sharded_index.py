"""IVF indexes built shard by shard from the embedding Parquet shards, for collections whose vectors
do not fit in memory at once: the coarse quantizer (and PQ/OPQ) are trained on a uniform sample,
then the index is filled one record batch at a time. Recall is measured against an exact search
that also streams the shards.

Reading: every shard is read in record batches of `batch_rows` rows with ``pre_buffer=False`` and
a small read buffer. pyarrow's default (``pre_buffer=True``) fetches and keeps whole column chunks,
so a shard written as one row group (what ``ArtifactStore.write_parquet`` does up to 1Mi rows)
would be held whole while it is read.

Memory ceiling (n rows in the shards, d dimensions, S = sample_size, B = batch_rows, L = nlist;
`memory_ceiling` computes it)::

    peak  ~ R + batch + max(train, fill)
    R     = the interpreter with numpy, pyarrow and faiss loaded (~100 MiB; not torch: this
            module does not import core.embed)
    batch = 64 MiB + 8*B*d*4        reading: Parquet levels, Arrow values, the float32 copy and
                                    the rows kept, ~8x the batch's raw vectors, plus Arrow's
                                    kernels and allocator, which keeps what it once used (measured
                                    +113 MiB at B=4096, +170 at 8192, +233 at 16384, for d=320)
    train = S*d*4                   the training sample (float32)
          + S*12 + 16 MiB           k-means: one (score, label) per sample point; FAISS scores the
                                    points against the centroids through BLAS in blocks of
                                    4096 x 1024, never as an S x L matrix
          + 2*L*d*4                 the centroids and their update
          + ivf-pq: 2*P*d*4         P = min(S, 256 * 2**nbits) points subsampled for PQ and their
                                    residuals (IndexIVF::train_encoder_num_vectors)
          + opq: S*d*4 + 3*min(S, 65536)*d*4   the rotated sample and OPQ's own training copies
    fill  = 1.5*index + ids
    index = ivf-flat: n*(d*4 + 8)   the vectors and their int64 list ids
            ivf-pq:   n*(M*nbits/8 + 8)
            + L*d*4 for the quantizer. Each inverted list is a std::vector that doubles when it
            grows: measured 1.29x (one add) to 1.38x (batches of 16384) of the bytes, 2x at worst
    ids   = n*(88 + 34..80) bytes   the Python list of ids in index order (16-character str and
                                    its list slot: 88 B measured) and the set of ids seen (16 B
                                    per slot, 34 B per id measured at 1M, 80 while it resizes)

The sample is freed before filling starts, hence max(train, fill). Choosing the S sample rows
out of the n takes 8*n bytes for a moment when S > n/50 (numpy's tail shuffle). The id map and
the serialised index that a caller writes afterwards come on top (`serialize` copies the index).
`benchmarks/ivf_shard_memory.py` measures the peak and prints this prediction beside it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vsearch_pipeline.core.index import IndexParams, factory_string, resolve_params, search, set_search_params
from vsearch_pipeline.core.storage import ArtifactStore

SHARDED_TYPES = ("ivf-flat", "ivf-pq")
DEFAULT_BATCH_ROWS = 8192
DEFAULT_SAMPLE_SIZE = 200_000  # as core.index.build_index trains on
SAMPLE_POINTS_PER_LIST = 50  # FAISS wants at least 39 training points per inverted list
READ_BUFFER = 1 << 20


@contextmanager
def _parquet(store: ArtifactStore, path: str) -> Iterator[pq.ParquetFile]:
    with store.fs.open(store.path(path), "rb") as f:
        yield pq.ParquetFile(f, buffer_size=READ_BUFFER, pre_buffer=False)


def _batches(parquet: pq.ParquetFile, columns: list[str], batch_rows: int,
             row_groups: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
    return parquet.iter_batches(batch_size=batch_rows, columns=columns, row_groups=row_groups,
                                use_threads=False)


def _vectors(column: pa.FixedSizeListArray) -> np.ndarray:
    """A batch's vector column as (rows, dim) float32, as core.embed.table_vectors reads a shard
    (that module is not imported here: it loads torch, ~650 MiB of resident memory)."""
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)


def shard_row_counts(store: ArtifactStore, shard_paths: Sequence[str]) -> list[int]:
    """Rows in each shard, from the Parquet footers only (duplicated ids counted in each shard)."""
    return [store.parquet_rows(path) for path in shard_paths]


def vector_dim(store: ArtifactStore, shard_paths: Sequence[str]) -> int:
    """The vector dimension, from the first shard's schema."""
    if not shard_paths:
        raise ValueError("no embedding shards given")
    with _parquet(store, shard_paths[0]) as parquet:
        return parquet.schema_arrow.field("vector").type.list_size


def _sample_rows(total: int, size: int, seed: int) -> np.ndarray:
    """Sorted global row numbers; the same rows `core.index.build_index` trains on for a collection
    of `total` vectors, so without duplicated ids both builds train alike."""
    if size >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size, replace=False))


def sample_vectors(store: ArtifactStore, shard_paths: Sequence[str], size: int, seed: int = 0,
                   batch_rows: int = DEFAULT_BATCH_ROWS) -> np.ndarray:
    """A uniform random sample of `size` rows over all shards (all rows if there are fewer), in
    shard and row order, deterministic for a seed. Rows are drawn from the Parquet row counts, so
    an id stored in two shards can be drawn twice: harmless for training and for recall queries.
    Only the row groups holding drawn rows are read, one record batch at a time."""
    counts = shard_row_counts(store, shard_paths)
    return _sample(store, shard_paths, counts, vector_dim(store, shard_paths), size, seed, batch_rows)


def _sample(store: ArtifactStore, shard_paths: Sequence[str], counts: Sequence[int], d: int, size: int,
            seed: int, batch_rows: int) -> np.ndarray:
    rows = _sample_rows(sum(counts), size, seed)
    out = np.empty((len(rows), d), np.float32)
    shard_start = 0
    for path, count in zip(shard_paths, counts, strict=True):
        lo, hi = np.searchsorted(rows, [shard_start, shard_start + count])
        if hi > lo:
            _read_rows(store, path, rows[lo:hi] - shard_start, batch_rows, out[lo:hi])
        shard_start += count
    return out


def _read_rows(store: ArtifactStore, path: str, local_rows: np.ndarray, batch_rows: int,
               out: np.ndarray) -> None:
    """Copy the vectors at sorted row numbers of one shard into `out`, reading only the row
    groups that hold them."""
    filled = 0
    with _parquet(store, path) as parquet:
        group_start = 0
        for group in range(parquet.metadata.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            lo, hi = np.searchsorted(local_rows, [group_start, group_start + group_rows])
            wanted, batch_start = local_rows[lo:hi] - group_start, 0
            group_start += group_rows
            if hi == lo:
                continue
            for batch in _batches(parquet, ["vector"], batch_rows, [group]):
                b_lo, b_hi = np.searchsorted(wanted, [batch_start, batch_start + batch.num_rows])
                if b_hi > b_lo:
                    take = pa.array(wanted[b_lo:b_hi] - batch_start, pa.int64())
                    out[filled:filled + b_hi - b_lo] = _vectors(batch.column("vector").take(take))
                    filled += b_hi - b_lo
                batch_start += batch.num_rows


def iter_shard_vectors(store: ArtifactStore, shard_paths: Sequence[str],
                       batch_rows: int = DEFAULT_BATCH_ROWS, exclude: AbstractSet[str] = frozenset()
                       ) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, float32 vectors) of at most `batch_rows` rows at a time, shard by shard in the given
    order, each id once: the first shard holding an id wins, as in `layout.load_embeddings`. The
    ids already yielded are kept in a set (O(n) strings; see the memory ceiling above). Ids in
    `exclude` (images the source no longer holds) are skipped."""
    seen: set[str] = set(exclude)
    for path in shard_paths:
        with _parquet(store, path) as parquet:
            for batch in _batches(parquet, ["id", "vector"], batch_rows):
                ids = batch.column("id").to_pylist()
                keep = [i for i, image_id in enumerate(ids)
                        if image_id not in seen and not seen.add(image_id)]
                if not keep:
                    continue
                column = batch.column("vector")
                if len(keep) < len(ids):
                    ids = [ids[i] for i in keep]
                    column = column.take(pa.array(keep, pa.int64()))
                yield ids, _vectors(column)


def default_sample_size(n: int, nlist: int) -> int:
    """As many training vectors as `build_index` uses, more where nlist needs them, at most n."""
    return min(n, max(DEFAULT_SAMPLE_SIZE, SAMPLE_POINTS_PER_LIST * nlist))


def sharded_params(store: ArtifactStore, shard_paths: Sequence[str], params: IndexParams) -> IndexParams:
    """`params` resolved for the shards, n being their total row count from the Parquet metadata
    (ids stored in two shards count twice) and d their dimension: the parameters that
    `build_ivf_by_shards` builds with, to record as metadata. Resolving twice changes nothing."""
    return _resolve(store, shard_paths, params)[0]


def _resolve(store: ArtifactStore, shard_paths: Sequence[str], params: IndexParams
             ) -> tuple[IndexParams, list[int], int]:
    if params.index_type not in SHARDED_TYPES:
        raise ValueError(f"indexes are built shard by shard only for {SHARDED_TYPES}, "
                         f"not {params.index_type!r}: build that type from loaded vectors")
    if not shard_paths:
        raise ValueError("no embedding shards given")
    counts = shard_row_counts(store, shard_paths)
    if not sum(counts):
        raise ValueError("the embedding shards hold no rows")
    d = vector_dim(store, shard_paths)
    return resolve_params(params, sum(counts), d), counts, d


def build_ivf_by_shards(store: ArtifactStore, shard_paths: Sequence[str], params: IndexParams,
                        sample_size: int | None = None, batch_rows: int = DEFAULT_BATCH_ROWS,
                        seed: int = 0, exclude: AbstractSet[str] = frozenset()
                        ) -> tuple[faiss.Index, list[str]]:
    """An ivf-flat or ivf-pq (optionally OPQ) index over all shards without holding their vectors
    at once: trained on `sample_size` sampled rows (default `default_sample_size`), then filled
    one record batch at a time. Returns the index and the ids in index position order; the
    parameters it used are `sharded_params(store, shard_paths, params)`."""
    params, counts, d = _resolve(store, shard_paths, params)
    index = faiss.index_factory(d, factory_string(params, d), faiss.METRIC_INNER_PRODUCT)
    size = sample_size or default_sample_size(sum(counts), params.nlist)
    index.train(_sample(store, shard_paths, counts, d, size, seed, batch_rows))  # freed once trained
    ids: list[str] = []
    for batch_ids, vectors in iter_shard_vectors(store, shard_paths, batch_rows, exclude):
        index.add(vectors)
        ids.extend(batch_ids)
    set_search_params(index, params)
    return index, ids


def memory_ceiling(params: IndexParams, n: int, d: int, sample_size: int | None = None,
                   batch_rows: int = DEFAULT_BATCH_ROWS) -> dict[str, int]:
    """The module docstring's memory ceiling in bytes for resolved `params`, term by term, without
    the interpreter and its libraries: `peak` = `batch` + max(`train`, `fill`)."""
    nlist = params.nlist or 1
    sample = min(n, sample_size or default_sample_size(n, nlist))
    train = sample * d * 4 + sample * 12 + (16 << 20) + 2 * nlist * d * 4
    if params.index_type == "ivf-pq":
        train += 2 * min(sample, 256 << params.nbits) * d * 4
        if params.opq:
            train += sample * d * 4 + 3 * min(sample, 65536) * d * 4
    code = d * 4 if params.index_type == "ivf-flat" else -(-params.M * params.nbits // 8)
    index = n * (code + 8) + nlist * d * 4
    ids = n * (88 + 80)
    batch = (64 << 20) + 8 * batch_rows * d * 4
    fill = int(1.5 * index) + ids
    return {"batch": batch, "train": train, "index": index, "ids": ids, "fill": fill,
            "peak": batch + max(train, fill)}


def exact_topk_by_shards(store: ArtifactStore, shard_paths: Sequence[str], queries: np.ndarray, k: int,
                         batch_rows: int = DEFAULT_BATCH_ROWS, exclude: AbstractSet[str] = frozenset()
                         ) -> tuple[np.ndarray, list[list[str]]]:
    """Exact inner-product top-k over all shards (each id once, first shard wins), streamed: each
    batch's top-k is merged into one heap per query. Returns (scores, ids), best first; a row is
    shorter than k where the shards hold fewer than k ids."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    names: dict[int, str] = {}  # position -> id, for the positions that are in the heap
    position = 0
    for batch_ids, vectors in iter_shard_vectors(store, shard_paths, batch_rows, exclude):
        scores, found = faiss.knn(queries, vectors, min(k, len(batch_ids)), faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, found + position)
        names.update((position + int(i), batch_ids[i]) for i in np.unique(found))
        position += len(batch_ids)
        kept = set(np.unique(heap.I).tolist())
        names = {p: name for p, name in names.items() if p in kept}
    heap.finalize()
    width = min(k, position)
    return heap.D[:, :width], [[names[int(p)] for p in row[:width]] for row in heap.I]


def recall_by_shards(index: faiss.Index, index_ids: Sequence[str], store: ArtifactStore,
                     shard_paths: Sequence[str], k: int = 10, n_queries: int = 1000, seed: int = 0,
                     batch_rows: int = DEFAULT_BATCH_ROWS, exclude: AbstractSet[str] = frozenset()
                     ) -> float:
    """Share of the exact top-k that the index returns, for `n_queries` stored vectors sampled
    with `sample_vectors` (as `core.index.recall_at_k`, without loading every vector)."""
    k = min(k, index.ntotal)
    queries = sample_vectors(store, shard_paths, n_queries, seed, batch_rows)
    truth = exact_topk_by_shards(store, shard_paths, queries, k, batch_rows, exclude)[1]
    found = search(index, queries, k)[1]
    hits = sum(len(set(t) & {index_ids[p] for p in f if p >= 0}) for t, f in zip(truth, found, strict=True))
    return hits / (k * len(queries))

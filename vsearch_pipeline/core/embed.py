"""Turning image files into unit vectors in batches, decoding ahead of the model on threads."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.models import EmbeddingModel


@dataclass
class EmbeddingResult:
    ids: list[str]
    vectors: np.ndarray  # (len(ids), dim) float32, unit length
    failed: dict[str, str]  # id -> reason, for files that no longer decode
    labels: list[list[tuple[str, float]]]  # per id, predicted classes and probabilities


def _prepare(model: EmbeddingModel, read: Callable[[str], bytes], uri: str) -> torch.Tensor | str:
    """Read, decode and preprocess one file (on a worker thread); the reason when it fails.

    Large JPEGs decode at reduced scale (DCT scaling), down to the model's `decode_size` only:
    the speed of a reduced decode without moving the vectors away from a full-size decode."""
    try:
        image = decode_rgb(read(uri), min_size=model.decode_min_size)
    except (ImageError, OSError) as err:
        return str(err)
    return model.transform(image)


def bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Sequence, ahead: int) -> Iterator:
    """Like pool.map, in order, but with at most `ahead` results waiting: memory stays bounded
    however many items there are (pool.map would decode every image before the first batch)."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def embed_files(
    model: EmbeddingModel,
    ids: Sequence[str],
    uris: Sequence[str],
    read: Callable[[str], bytes],
    batch_size: int = 32,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> EmbeddingResult:
    """Embed the files at `uris` (one per id). Decoding of the next images overlaps inference."""
    done_ids: list[str] = []
    chunks: list[np.ndarray] = []
    labels: list[list[tuple[str, float]]] = []
    failed: dict[str, str] = {}
    tensors, kept = [], []

    def flush() -> None:
        if tensors:
            vectors, predicted = model.embed_and_label(torch.stack(tensors))
            chunks.append(vectors)
            labels.extend(predicted)
            done_ids.extend(kept)
            tensors.clear()
            kept.clear()
        if progress:
            progress(len(done_ids) + len(failed), len(ids))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        prepared = bounded_map(pool, lambda u: _prepare(model, read, u), uris, 2 * batch_size)
        for image_id, item in zip(ids, prepared, strict=True):
            if isinstance(item, str):
                failed[image_id] = item
            else:
                tensors.append(item)
                kept.append(image_id)
            if len(tensors) == batch_size:
                flush()
        flush()
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, model.dim), np.float32)
    return EmbeddingResult(done_ids, vectors, failed, labels)


def embeddings_table(ids: Sequence[str], vectors: np.ndarray, model: str, version: str,
                     labels: Sequence[Sequence[tuple[str, float]]] | None = None) -> pa.Table:
    """The shard layout: id, model, model_version, vector (fixed-size list of float32), and the
    predicted classes (`labels`, `label_probs`; empty lists for a model without a head)."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    labels = labels if labels is not None else [[] for _ in ids]
    return pa.table({
        "id": pa.array(list(ids), pa.string()),
        "model": pa.array([model] * len(ids), pa.string()),
        "model_version": pa.array([version] * len(ids), pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        "labels": pa.array([[name for name, _ in row] for row in labels], pa.list_(pa.string())),
        "label_probs": pa.array([[p for _, p in row] for row in labels], pa.list_(pa.float32())),
    })


def table_vectors(table: pa.Table) -> np.ndarray:
    """The vector column of a shard as an (n, dim) float32 array, without a Python loop."""
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)


def vector_problems(vectors: np.ndarray, tolerance: float = 1e-3) -> dict[str, int]:
    """Counts of non-finite and non-unit vectors, for the asset checks."""
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0), axis=1)
    return {
        "non_finite": int((~finite).sum()),
        "non_unit": int((finite & (np.abs(norms - 1) > tolerance)).sum()),
    }

"""Turning image files into unit vectors in batches, decoding ahead of the model on threads."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.models import EmbeddingModel, Prepared
from vsearch_pipeline.core.vectors import table_vectors as table_vectors  # where it lived before


@dataclass
class EmbeddingResult:
    ids: list[str]
    vectors: np.ndarray  # (len(ids), dim) float32, unit length
    failed: dict[str, str]  # id -> reason, for files that no longer decode
    labels: list[list[tuple[str, float]]]  # per id, predicted classes and probabilities
    # the copy model's vectors and predicted classes, row for row, when one was given
    copy_vectors: np.ndarray | None = None
    copy_labels: list[list[tuple[str, float]]] | None = None


def passes(models: Sequence[EmbeddingModel]) -> list[list[int]]:
    """The models grouped by network pass: positions of the models that one run serves."""
    groups: list[list[int]] = []
    for n, model in enumerate(models):
        group = next((g for g in groups if models[g[0]].shares_pass(model)), None)
        if group is None:
            groups.append([n])
        else:
            group.append(n)
    return groups


def _prepare(runs: Sequence[EmbeddingModel], read: Callable[[str], bytes], uri: str
             ) -> list[Prepared] | str:
    """Read and decode one file once, and preprocess it for each pass (on a worker thread); the
    reason when it fails.

    Large JPEGs decode at reduced scale (DCT scaling), down to the models' `decode_size` only:
    the speed of a reduced decode without moving the vectors away from a full-size decode."""
    try:
        image = decode_rgb(read(uri), min_size=max(m.decode_min_size for m in runs))
    except (ImageError, OSError) as err:
        return str(err)
    return [model.prepare(image) for model in runs]


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
    copy_model: EmbeddingModel | None = None,
) -> EmbeddingResult:
    """Embed the files at `uris` (one per id). Decoding of the next images overlaps inference.

    With a `copy_model` (the same network seeing another view) each file is decoded once and
    embedded by both, in one network pass when the two share it (`EmbeddingModel.shares_pass`);
    its vectors are `copy_vectors`, row for row with `vectors`."""
    models = [model] if copy_model is None else [model, copy_model]
    groups = passes(models)
    runs = [models[g[0]] for g in groups]
    done_ids: list[str] = []
    chunks: list[list[np.ndarray]] = [[] for _ in models]
    labels: list[list[list[tuple[str, float]]]] = [[] for _ in models]
    failed: dict[str, str] = {}
    tensors: list[list[Prepared]] = []
    kept: list[str] = []

    def flush() -> None:
        if tensors:
            for run, (group, each) in enumerate(zip(groups, runs, strict=True)):
                outputs = each.embed_views([t[run] for t in tensors], [models[n] for n in group])
                for n, (vectors, predicted) in zip(group, outputs, strict=True):
                    chunks[n].append(vectors)
                    labels[n].extend(predicted)
            done_ids.extend(kept)
            tensors.clear()
            kept.clear()
        if progress:
            progress(len(done_ids) + len(failed), len(ids))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        prepared = bounded_map(pool, lambda u: _prepare(runs, read, u), uris, 2 * batch_size)
        for image_id, item in zip(ids, prepared, strict=True):
            if isinstance(item, str):
                failed[image_id] = item
            else:
                tensors.append(item)
                kept.append(image_id)
            if len(tensors) == batch_size:
                flush()
        flush()
    stacked = [np.concatenate(c) if c else np.zeros((0, m.dim), np.float32)
               for c, m in zip(chunks, models, strict=True)]
    if copy_model is None:
        return EmbeddingResult(done_ids, stacked[0], failed, labels[0])
    return EmbeddingResult(done_ids, stacked[0], failed, labels[0], stacked[1], labels[1])


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


def vector_problems(vectors: np.ndarray, tolerance: float = 1e-3) -> dict[str, int]:
    """Counts of non-finite and non-unit vectors, for the asset checks."""
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0), axis=1)
    return {
        "non_finite": int((~finite).sum()),
        "non_unit": int((finite & (np.abs(norms - 1) > tolerance)).sum()),
    }

"""The embedding cache: vectors are kept by content id and model view, so that an image that any
shard of a view already holds is copied into a new batch's shard, never embedded twice. The
vectors a diverse subset embedded its whole batch with (`embed_batch`) are part of the cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from vsearch_pipeline.core.embed import embed_files, embeddings_table
from vsearch_pipeline.core.layout import (
    embeddings_dir,
    embeddings_path,
    subset_vectors_dir,
    subset_vectors_path,
)
from vsearch_pipeline.core.model_spec import ModelSpec
from vsearch_pipeline.core.models import EmbeddingModel
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.vectors import table_vectors


def cached_vectors(store: ArtifactStore, model_key: str, wanted: set[str]) -> pa.Table | None:
    """Rows already embedded by this model in any shard: nothing is embedded twice. A shard of
    the older layout, without predicted labels, is not reused (its images are embedded again)."""
    found = []
    shards = (store.list(embeddings_dir(model_key), ".parquet")
              + store.list(subset_vectors_dir(model_key), ".parquet"))
    for shard in shards:
        if "labels" not in store.read_parquet_schema(shard).names:
            continue
        ids = store.read_parquet(shard, columns=["id"]).column("id").to_pylist()
        rows = [i for i, image_id in enumerate(ids) if image_id in wanted]
        if rows:
            found.append(store.read_parquet(shard).take(rows))
            wanted = wanted - {ids[i] for i in rows}
    return pa.concat_tables(found, promote_options="default") if found else None


@dataclass
class ViewShard:
    """What one view's shard of the batch is made of: cached rows and newly embedded tables."""

    spec: ModelSpec
    parts: list[pa.Table] = field(default_factory=list)
    cached_ids: set[str] = field(default_factory=set)

    def table(self) -> pa.Table:
        if not self.parts:
            return embeddings_table([], np.zeros((0, 1)), "", "")
        return pa.concat_tables(self.parts, promote_options="default").replace_schema_metadata(None)


def view_shards(store: ArtifactStore, spec: ModelSpec, ids: list[str]) -> dict[str, ViewShard]:
    """The search view's shard and, when it differs, the copy view's, each with its cached rows
    (read once when the two are the same view)."""
    shards = {}
    for view in {spec.key: spec, spec.copy_spec.key: spec.copy_spec}.values():
        cached = cached_vectors(store, view.key, set(ids))
        shards[view.key] = ViewShard(
            view, [cached] if cached is not None else [],
            set(cached.column("id").to_pylist()) if cached is not None else set())
    return shards


def embed_missing(shards: dict[str, ViewShard], load: Callable[[ModelSpec], EmbeddingModel],
                  ids: list[str], uris: list[str], read: Callable[[str], bytes], batch_size: int,
                  progress: Callable[[int, int], None]) -> tuple[int, dict[str, str]]:
    """Embed each image into the views that lack it: one decode and one pass per view, images
    missing from both views embedded by both in the same pass. Returns (embedded, failed)."""
    embedded, failed = 0, {}
    for views, rows in _rows_by_missing_views(shards, ids).items():
        models = [load(shards[key].spec) for key in views]
        result = embed_files(models[0], [ids[n] for n in rows], [uris[n] for n in rows], read,
                             batch_size, progress=progress,
                             copy_model=models[1] if len(models) > 1 else None)
        outputs = [(result.vectors, result.labels), (result.copy_vectors, result.copy_labels)]
        for key, model, (vectors, labels) in zip(views, models, outputs, strict=False):
            shards[key].parts.append(
                embeddings_table(result.ids, vectors, model.name, model.version, labels))
        embedded += len(result.ids)
        failed |= result.failed
    return embedded, failed


def _rows_by_missing_views(shards: dict[str, ViewShard], ids: list[str]
                           ) -> dict[tuple[str, ...], list[int]]:
    """The rows of `ids` grouped by the views (shard keys) that lack them; rows no view lacks
    are left out."""
    missing = {key: {i for i in ids if i not in shard.cached_ids} for key, shard in shards.items()}
    groups: dict[tuple[str, ...], list[int]] = {}
    for n, image_id in enumerate(ids):
        views = tuple(key for key in shards if image_id in missing[key])
        if views:
            groups.setdefault(views, []).append(n)
    return groups


def subset_images(subset: pa.Table) -> tuple[list[str], list[str]]:
    """The distinct ids of a batch's subset, sorted, and the URI of each one's first file."""
    ids, first = np.unique(np.array(subset.column("id").to_pylist(), dtype=object),
                           return_index=True)
    uris = subset.column("uri").take(pa.array(first)).to_pylist()
    return ids.tolist(), uris


def write_view_shards(store: ArtifactStore, shards: dict[str, ViewShard], key: str) -> None:
    """Each view's shard of batch `key`, in `embeddings/<view>/<key>.parquet`."""
    for view_key, shard in shards.items():
        store.write_parquet(embeddings_path(view_key, key), shard.table())


def embed_batch(store: ArtifactStore, spec: ModelSpec, load: Callable[[ModelSpec], EmbeddingModel],
                ids: list[str], uris: list[str], read: Callable[[str], bytes], batch_size: int,
                progress: Callable[[int, int], None], key: str
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Vectors of the search view for every image of batch `key` (through the cache, both views
    embedded in one pass), kept in `subset/vectors/<view>/<key>.parquet` so that the embeddings
    step copies them. Returns (vectors of the embedded ids, a mask of `ids` that have one, the
    number embedded now)."""
    shards = view_shards(store, spec, ids)
    embedded, _ = embed_missing(shards, load, ids, uris, read, batch_size, progress)
    for view_key, shard in shards.items():
        store.write_parquet(subset_vectors_path(view_key, key), shard.table())
    table = shards[spec.key].table()
    position = {i: n for n, i in enumerate(table.column("id").to_pylist())}
    have = np.array([i in position for i in ids], bool)
    vectors = table_vectors(table)
    rows = [position[i] for i in ids if i in position]
    return vectors[rows] if len(rows) else np.zeros((0, vectors.shape[1] if vectors.ndim == 2
                                                        else 1), np.float32), have, embedded

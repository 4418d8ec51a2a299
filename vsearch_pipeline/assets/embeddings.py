"""Asset: one Parquet shard of unit vectors per ingest batch and model."""


import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    code_version,
    ingest_batches,
    markdown_table,
    progress_logger,
    run_keys,
)
from vsearch_pipeline.assets.subset import sampled_subset
from vsearch_pipeline.core.embed import (
    embed_files,
    embeddings_table,
    table_vectors,
    vector_problems,
)
from vsearch_pipeline.core.layout import embeddings_dir, embeddings_path, subset_path
from vsearch_pipeline.core.metrics_queue import queue_metrics
from vsearch_pipeline.core.model_spec import ModelSpec
from vsearch_pipeline.core.models import EmbeddingModel
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    ImageSource,
)

CHECKS = [
    AssetCheckSpec("every_image_embedded", asset="embeddings",
                   description="Every image of the subset has a vector."),
    AssetCheckSpec("vectors_finite_and_unit", asset="embeddings",
                   description="Every vector is finite and has unit length."),
]


def cached_vectors(store: ArtifactStore, model_key: str, wanted: set[str]) -> pa.Table:
    """Rows already embedded by this model in any shard: nothing is embedded twice. A shard of
    the older layout, without predicted labels, is not reused (its images are embedded again)."""
    found = []
    for shard in store.list(embeddings_dir(model_key), ".parquet"):
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
    missing = {key: {i for i in ids if i not in shard.cached_ids} for key, shard in shards.items()}
    groups: dict[tuple[str, ...], list[int]] = {}
    for n, image_id in enumerate(ids):
        views = tuple(key for key in shards if image_id in missing[key])
        if views:
            groups.setdefault(views, []).append(n)
    embedded, failed = 0, {}
    for views, rows in groups.items():
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


@asset(partitions_def=ingest_batches, deps=[sampled_subset], check_specs=CHECKS,
       code_version="3", group_name="embed", retry_policy=STORAGE_RETRY)
def embeddings(
    context: AssetExecutionContext,
    source: ImageSource,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
) -> MaterializeResult:
    """L2-normalised float32 vectors of the batch's subset, one Parquet shard per batch and model
    view, with each image's top predicted ImageNet classes where the model has a classifier head.

    Two views are embedded when the search view (`model.view`) is not the centre crop: the search
    vectors, and the centre-crop vectors that near-duplicate detection reads (the centre crop
    finds more cropped and rotated copies). Each file is decoded once for both.

    Vectors are cached by content id and model view: an image that any shard of this view already
    holds is copied, not embedded again. A model is loaded only when something is new.
    """
    store = storage.store
    key = context.partition_key
    subset = store.read_parquet(subset_path(key))
    ids, first = np.unique(np.array(subset.column("id").to_pylist(), dtype=object),
                           return_index=True)
    uris = subset.column("uri").take(pa.array(first)).to_pylist()
    ids = ids.tolist()
    shards = view_shards(store, model.spec, ids)
    start = time.perf_counter()
    embedded, failed = embed_missing(
        shards, lambda spec: model.model if spec == model.spec else model.copy_model,
        ids, uris, source.read, model.batch_size, progress_logger(context, "embeddings"))
    seconds = time.perf_counter() - start
    for view_key, shard in shards.items():
        store.write_parquet(embeddings_path(view_key, key), shard.table())
    search = shards[model.spec.key]
    table = search.table()
    cached_ids = search.cached_ids
    vectors = table_vectors(table)
    problems = vector_problems(vectors)
    missing = sorted(set(ids) - set(table.column("id").to_pylist()))
    figures = {"images": len(table), "embedded_now": embedded, "from_cache": len(cached_ids),
               "failed": len(failed), "seconds": round(seconds, 3),
               "images_per_second": round(embedded / seconds, 2) if embedded else 0.0}
    version = table.column("model_version")[0].as_py() if len(table) else ""
    queue_metrics(
        store, "embedding", run_keys(context),
        {"model": model.spec.key, "model_version": version, "precision": model.precision}, figures,
    )
    return MaterializeResult(
        metadata={
            **figures,
            "model": model.name, "model_key": model.spec.key, "model_version": version,
            "pretrained": model.pretrained or "", "view": model.spec.view, "device": model.device,
            "precision": model.precision, "batch_size": model.batch_size,
            "dimension": int(vectors.shape[1]) if len(vectors) else 0,
            "failed_images": markdown_table(
                [{"id": k, "reason": v} for k, v in sorted(failed.items())]),
            "path": store.uri(embeddings_path(model.spec.key, key)),
            "copy_view_path": store.uri(embeddings_path(model.spec.copy_spec.key, key)),
            "code_version": code_version(),
        },
        check_results=[
            AssetCheckResult(check_name="every_image_embedded", passed=not missing,
                             severity=AssetCheckSeverity.ERROR,
                             metadata={"missing": len(missing),
                                       "missing_ids": MetadataValue.json(missing[:50])}),
            AssetCheckResult(check_name="vectors_finite_and_unit",
                             passed=not any(problems.values()),
                             severity=AssetCheckSeverity.ERROR, metadata=problems),
        ],
    )


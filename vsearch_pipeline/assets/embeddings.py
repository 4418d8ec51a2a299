"""Asset: one Parquet shard of unit vectors per ingest batch and model."""


import time

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


@asset(partitions_def=ingest_batches, deps=[sampled_subset], check_specs=CHECKS,
       code_version="2", group_name="embed", retry_policy=STORAGE_RETRY)
def embeddings(
    context: AssetExecutionContext,
    source: ImageSource,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
) -> MaterializeResult:
    """L2-normalised float32 vectors of the batch's subset, one Parquet shard per batch and model,
    with each image's top predicted ImageNet classes where the model has a classifier head.

    Vectors are cached by content id and model: an image that any shard of this model already
    holds is copied, not embedded again. The model is loaded only when something is new.
    """
    store = storage.store
    key = context.partition_key
    subset = store.read_parquet(subset_path(key))
    ids, first = np.unique(np.array(subset.column("id").to_pylist(), dtype=object),
                           return_index=True)
    uris = subset.column("uri").take(pa.array(first)).to_pylist()
    ids = ids.tolist()
    cached = cached_vectors(store, model.spec.key, set(ids))
    cached_ids = set(cached.column("id").to_pylist()) if cached is not None else set()
    todo = [(i, u) for i, u in zip(ids, uris, strict=True) if i not in cached_ids]
    start = time.perf_counter()
    failed: dict[str, str] = {}
    parts = [cached] if cached is not None else []
    if todo:
        encoder = model.model
        result = embed_files(encoder, [t[0] for t in todo], [t[1] for t in todo], source.read,
                             model.batch_size, progress=progress_logger(context, "embeddings"))
        failed = result.failed
        parts.append(embeddings_table(result.ids, result.vectors, encoder.name, encoder.version,
                                      result.labels))
    seconds = time.perf_counter() - start
    table = (pa.concat_tables(parts, promote_options="default") if parts
             else embeddings_table([], np.zeros((0, 1)), "", ""))
    table = table.replace_schema_metadata(None)
    store.write_parquet(embeddings_path(model.spec.key, key), table)

    vectors = table_vectors(table)
    problems = vector_problems(vectors)
    missing = sorted(set(ids) - set(table.column("id").to_pylist()))
    embedded = len(todo) - len(failed)
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
            "pretrained": model.pretrained or "", "view": model.view, "device": model.device,
            "precision": model.precision, "batch_size": model.batch_size,
            "dimension": int(vectors.shape[1]) if len(vectors) else 0,
            "failed_images": markdown_table(
                [{"id": k, "reason": v} for k, v in sorted(failed.items())]),
            "path": store.uri(embeddings_path(model.spec.key, key)),
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


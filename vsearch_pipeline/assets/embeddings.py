"""Asset: one Parquet shard of unit vectors per ingest batch and model."""


import time

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
    setting,
)
from vsearch_pipeline.assets.subset import sampled_subset
from vsearch_pipeline.core.embed import vector_problems
from vsearch_pipeline.core.embedding_cache import (
    embed_missing,
    subset_images,
    view_shards,
    write_view_shards,
)
from vsearch_pipeline.core.layout import embeddings_path, subset_path
from vsearch_pipeline.core.metrics_queue import queue_metrics
from vsearch_pipeline.core.vectors import table_vectors
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


@asset(partitions_def=ingest_batches, deps=[sampled_subset], check_specs=CHECKS,
       code_version="3", retry_policy=STORAGE_RETRY)
def embeddings(
    context: AssetExecutionContext,
    source: ImageSource,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
) -> MaterializeResult:
    """L2-normalised float32 vectors of the batch's subset, one Parquet shard per batch and model
    view, with each image's top predicted ImageNet classes where the model has a classifier head.

    Two views are kept when the search view (`model.view`) is not the copy view: the search
    vectors, and the vectors that near-duplicate detection reads (the centre of the same feature
    map for the default model, the centre crop otherwise). Each file is decoded once for both,
    and run through the network once where the two views share the pass.

    Vectors are cached by content id and model view: an image that any shard of this view already
    holds is copied, not embedded again. A model is loaded only when something is new.
    """
    store = storage.store
    key = context.partition_key
    ids, uris = subset_images(store.read_parquet(subset_path(key)))
    shards = view_shards(store, model.spec, ids)
    start = time.perf_counter()
    embedded, failed = embed_missing(
        shards, lambda spec: model.model if spec == model.spec else model.copy_model,
        ids, uris, source.read, model.batch_size, progress_logger(context, "embeddings"))
    seconds = time.perf_counter() - start
    write_view_shards(store, shards, key)
    search = shards[model.spec.key]
    table = search.table()
    vectors = table_vectors(table)
    problems = vector_problems(vectors)
    missing = sorted(set(ids) - set(table.column("id").to_pylist()))
    figures = {"images": len(table), "embedded_now": embedded, "from_cache": len(search.cached_ids),
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
            "pretrained": model.pretrained or "", "view": model.spec.view, "int8": model.spec.int8,
            "device": model.device,
            "precision": model.precision, "batch_size": setting(model.batch_size),
            "dimension": setting(int(vectors.shape[1]) if len(vectors) else 0),
            "failed_images": markdown_table(
                [{"id": k, "reason": v} for k, v in sorted(failed.items())]),
            "path": store.uri(embeddings_path(model.spec.key, key)),
            "copy_view_path": store.uri(embeddings_path(model.spec.copy_spec.key, key)),
            "code_version": code_version(),
        },
        check_results=_check_results(missing, problems),
    )


def _check_results(missing: list[str], problems: dict[str, int]) -> list[AssetCheckResult]:
    return [
        AssetCheckResult(check_name="every_image_embedded", passed=not missing,
                         severity=AssetCheckSeverity.ERROR,
                         metadata={"missing": len(missing),
                                   "missing_ids": MetadataValue.json(missing[:50])}),
        AssetCheckResult(check_name="vectors_finite_and_unit",
                         passed=not any(problems.values()),
                         severity=AssetCheckSeverity.ERROR, metadata=problems),
    ]


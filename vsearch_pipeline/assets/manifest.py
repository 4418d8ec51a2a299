"""Asset: the raw image manifest of one ingest batch."""


import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    code_version,
    ingest_batches,
    markdown_table,
    progress_logger,
    run_keys,
)
from vsearch_pipeline.core.batches import batch_objects
from vsearch_pipeline.core.layout import manifest_path
from vsearch_pipeline.core.manifest import build_manifest, status_counts
from vsearch_pipeline.core.metrics_queue import queue_metrics
from vsearch_pipeline.resources import (
    ArtifactStorage,
    ImageSource,
    PipelineSettings,
)


@asset(partitions_def=ingest_batches, code_version="1",
       retry_policy=STORAGE_RETRY)
def raw_image_manifest(
    context: AssetExecutionContext,
    source: ImageSource,
    storage: ArtifactStorage,
    settings: PipelineSettings,
) -> MaterializeResult:
    """Every file of one ingest batch: content id, URI, bytes, SHA-256, size, format and status.

    A file that cannot be used (empty, corrupt, truncated, not an image, too many pixels) gets a
    status and a readable reason instead of failing the run. Batches are immutable: a batch whose
    manifest exists is never rewritten; new files arrive as a new batch.
    """
    store = storage.store
    key = context.partition_key
    target = manifest_path(key)
    if store.exists(target):
        table = store.read_parquet(target)
        context.log.info(f"batch {key} already has a manifest; batches are never rewritten")
        reused = True
        seconds = 0.0
    else:
        objects = batch_objects(store, key)
        start = time.perf_counter()
        table = build_manifest(objects, source.read, settings.manifest.max_pixels,
                               settings.manifest.read_workers,
                               progress_logger(context, "manifest"))
        seconds = time.perf_counter() - start
        store.write_parquet(target, table)
        reused = False
    counts = status_counts(table)
    bad = [r for r in table.to_pylist() if r["status"] != "ok"]
    queue_metrics(
        store, "manifest", run_keys(context), {},
        {"files": len(table), "seconds": seconds, **{f"status_{k}": v for k, v in counts.items()}},
    )
    return MaterializeResult(metadata={
        "files": len(table),
        "usable": counts.get("ok", 0),
        "unusable": len(table) - counts.get("ok", 0),
        "bytes": int(sum(table.column("bytes").to_pylist())),
        "seconds": round(seconds, 3),
        "files_per_second": round(len(table) / seconds, 1) if seconds else 0.0,
        "reused_existing": reused,
        "status_counts": MetadataValue.json(counts),
        "unusable_files": markdown_table(
            [{"path": r["path"], "status": r["status"], "reason": r["reason"]} for r in bad]),
        "path": store.uri(target),
        "code_version": code_version(),
    })

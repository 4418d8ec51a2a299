"""Asset: the sampled subset of one ingest batch."""


import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vsearch_pipeline.assets.common import STORAGE_RETRY, code_version, ingest_batches, run_keys
from vsearch_pipeline.assets.manifest import raw_image_manifest
from vsearch_pipeline.core.layout import manifest_path, subset_path
from vsearch_pipeline.core.metrics_queue import queue_metrics
from vsearch_pipeline.core.sampling import forced_mask, select_subset, unmatched_force_include
from vsearch_pipeline.resources import ArtifactStorage, PipelineSettings


@asset(partitions_def=ingest_batches, deps=[raw_image_manifest], code_version="1",
       retry_policy=STORAGE_RETRY)
def sampled_subset(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    settings: PipelineSettings,
) -> MaterializeResult:
    """The usable images of the batch chosen by `fraction` and `seed`, plus `force_include`.

    Each image is decided alone by a keyed hash of (seed, id), so the same settings always give
    the same subset and adding images never changes which of the older images are in. Forced
    images (by id, URI or path) are always in. The chosen list is stored with its settings.
    """
    store = storage.store
    config = settings.subset
    manifest = store.read_parquet(manifest_path(context.partition_key))
    usable = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    keys = list(zip(*(usable.column(c).to_pylist() for c in ("id", "uri", "path")), strict=True))
    forced = forced_mask(keys, config.force_include)
    chosen, scores = select_subset(usable.column("id").to_pylist(), config.fraction, config.seed,
                                   forced)
    subset = usable.select(["id", "uri", "path"]).filter(pa.array(chosen))
    subset = subset.append_column("forced", pa.array(forced[chosen]))
    subset = subset.append_column("score", pa.array(scores[chosen]))
    subset = subset.replace_schema_metadata({"vsearch.subset": json.dumps(config.model_dump())})
    store.write_parquet(subset_path(context.partition_key), subset)
    unmatched = unmatched_force_include(config.force_include, keys)
    if unmatched:
        context.log.warning(f"force_include entries not in this batch: {unmatched[:20]}")
    figures = {"usable": len(usable), "chosen": int(chosen.sum()), "forced": int(forced.sum())}
    queue_metrics(store, "subset", run_keys(context),
                                 {"fraction": str(config.fraction), "seed": str(config.seed)},
                                 figures)
    return MaterializeResult(metadata={
        **figures,
        "share_chosen": round(float(np.mean(chosen)), 4) if len(chosen) else 0.0,
        "config": MetadataValue.json(config.model_dump()),
        "force_include_not_in_batch": len(unmatched),
        "path": store.uri(subset_path(context.partition_key)),
        "code_version": code_version(),
    })

"""Asset: the sampled subset of one ingest batch."""


import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    code_version,
    ingest_batches,
    progress_logger,
    run_keys,
)
from vsearch_pipeline.assets.manifest import raw_image_manifest
from vsearch_pipeline.core.embedding_cache import embed_batch
from vsearch_pipeline.core.layout import manifest_path, subset_path
from vsearch_pipeline.core.metrics_queue import queue_metrics
from vsearch_pipeline.core.sampling import (
    forced_mask,
    select_diverse,
    select_subset,
    unmatched_force_include,
)
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    ImageSource,
    PipelineSettings,
)


@asset(partitions_def=ingest_batches, deps=[raw_image_manifest], code_version="2",
       retry_policy=STORAGE_RETRY)
def sampled_subset(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    settings: PipelineSettings,
    source: ImageSource,
    model: EmbeddingModelResource,
) -> MaterializeResult:
    """The usable images of the batch chosen by `fraction` and `seed`, plus `force_include`.

    By hash (`mode: hash`): each image is decided alone by a keyed hash of (seed, id), so the
    same settings always give the same subset and adding images never changes which of the
    older images are in. Diverse (`mode: diverse`): the batch is embedded whole (into the
    embedding cache, so the embeddings step copies the chosen ones) and `fraction` of it chosen
    to cover what its images show (core.sampling.select_diverse); decided per batch, so a new
    batch never changes an older one's. Forced images (by id, URI or path) are always in. The
    chosen list is stored with its settings.
    """
    store = storage.store
    config = settings.subset
    manifest = store.read_parquet(manifest_path(context.partition_key))
    usable = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    keys = list(zip(*(usable.column(c).to_pylist() for c in ("id", "uri", "path")), strict=True))
    forced = forced_mask(keys, config.force_include)
    ids = usable.column("id").to_pylist()
    embedded_now = 0
    if config.mode == "diverse":
        chosen, scores, embedded_now = _diverse(context, store, model, source, settings, usable,
                                                forced)
    else:
        chosen, scores = select_subset(ids, config.fraction, config.seed, forced)
    subset = usable.select(["id", "uri", "path"]).filter(pa.array(chosen))
    subset = subset.append_column("forced", pa.array(forced[chosen]))
    subset = subset.append_column("score", pa.array(scores[chosen]))
    subset = subset.replace_schema_metadata({"vsearch.subset": json.dumps(config.model_dump())})
    store.write_parquet(subset_path(context.partition_key), subset)
    unmatched = unmatched_force_include(config.force_include, keys)
    if unmatched:
        context.log.warning(f"force_include entries not in this batch: {unmatched[:20]}")
    figures = {"usable": len(usable), "chosen": int(chosen.sum()), "forced": int(forced.sum()),
               "embedded_for_choice": embedded_now}
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


def _diverse(context: AssetExecutionContext, store, model: EmbeddingModelResource,
             source: ImageSource, settings: PipelineSettings, usable: pa.Table,
             forced: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(chosen, pick order as the score, images embedded now) for the diverse mode; a file is
    in when its image is, and an image that did not embed only when forced."""
    config = settings.subset
    ids = usable.column("id").to_pylist()
    unique = sorted(set(ids))
    first_uri = dict(zip(reversed(ids), reversed(usable.column("uri").to_pylist()), strict=True))
    vectors, have, embedded = embed_batch(
        store, model.spec, lambda spec: model.model if spec == model.spec else model.copy_model,
        unique, [first_uri[i] for i in unique], source.read, model.batch_size,
        progress_logger(context, "subset embeddings"), context.partition_key)
    with_vector = [i for i, ok in zip(unique, have, strict=True) if ok]
    forced_ids = {i for i, f in zip(ids, forced, strict=True) if f}
    picked, order = select_diverse(with_vector, vectors, config.fraction, config.seed,
                                   np.array([i in forced_ids for i in with_vector], bool))
    rank = {i: int(o) for i, o, p in zip(with_vector, order, picked, strict=True) if p}
    chosen = np.array([i in rank or f for i, f in zip(ids, forced, strict=True)], bool)
    scores = np.array([rank.get(i, -1) for i in ids], np.float64)
    return chosen, scores, embedded

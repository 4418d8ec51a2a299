"""Assets: perceptual hashes per ingest batch, and near-duplicate groups over the collection."""


import time

import pyarrow as pa
from dagster import AssetExecutionContext, MaterializeResult, asset

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    artifact_version,
    code_version,
    ingest_batches,
    markdown_table,
    progress_logger,
    run_keys,
)
from vsearch_pipeline.assets.embeddings import embeddings
from vsearch_pipeline.assets.manifest import raw_image_manifest
from vsearch_pipeline.core.artifacts import image_locations, load_manifests
from vsearch_pipeline.core.duplicate_groups import (
    Grouping,
    PartialCopySearch,
    combined_grouping,
    group_rows,
    grouping_rule,
    keeper_mask,
    largest_groups,
    phash_grouping,
    write_groups,
)
from vsearch_pipeline.core.duplicate_keepers import files_by_id
from vsearch_pipeline.core.layout import duplicates_path, hashes_path, manifest_path
from vsearch_pipeline.core.metrics_queue import file_queued_metrics, queue_metrics
from vsearch_pipeline.core.partial_copies import image_reader
from vsearch_pipeline.core.phash_files import (
    all_hashes,
    compute_hashes,
    hashes_elsewhere,
    load_hashes,
    usable_uris,
    write_hashes,
)
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    ImageSource,
    MetricsDatabase,
    PipelineSettings,
)


@asset(partitions_def=ingest_batches, deps=[raw_image_manifest], code_version="2",
       retry_policy=STORAGE_RETRY)
def perceptual_hashes(
    context: AssetExecutionContext,
    source: ImageSource,
    storage: ArtifactStorage,
) -> MaterializeResult:
    """64-bit pHash of every usable image of the batch, in `hashes/<batch>.parquet` (id, phash).

    Hashes depend on the bytes alone, so an id that another batch's file already holds is not
    hashed again. The hashes live in artifact storage, where workers on any machine can write
    them; `near_duplicate_groups` loads them into the DuckDB table `perceptual_hashes`.
    """
    store = storage.store
    key = context.partition_key
    uris = usable_uris(store.read_parquet(manifest_path(key)))
    known = hashes_elsewhere(store, key, set(uris))
    todo = [i for i in uris if i not in known]
    start = time.perf_counter()
    computed = compute_hashes(todo, uris, source.read, progress_logger(context, "pHash"))
    seconds = time.perf_counter() - start
    hashed = write_hashes(store, key, [*known.items(), *computed.items()])
    failed = sum(v is None for v in computed.values())
    figures = {"hashed": len(hashed), "hashed_now": len(computed) - failed,
               "from_cache": len(known), "failed": failed, "seconds": round(seconds, 3)}
    queue_metrics(store, "hash", run_keys(context), {}, figures)
    return MaterializeResult(metadata={**figures, "hash": "phash (imagehash, 64 bits)",
                                       "path": store.uri(hashes_path(key)),
                                       "code_version": code_version()})


@asset(deps=[perceptual_hashes, embeddings], code_version="5",
       retry_policy=STORAGE_RETRY)
def near_duplicate_groups(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
    model: EmbeddingModelResource,
    source: ImageSource,
) -> MaterializeResult:
    """Groups of near-duplicate images, chained from near-duplicate pairs.

    `method: combined` (default): pHash pairs within `hamming_threshold` bits and each image's
    nearest images by embedding cosine are candidates; a pair is kept when it is much closer
    than what is ordinary around both images (contrast) and above a cosine floor, both
    thresholds chosen from the data (Otsu) unless set; see vsearch_pipeline.core.near_duplicates.
    Then the `partial_copy_checks` most similar pairs per image by the retrieval vectors that
    are not yet joined are checked for a crop (local features and agreeing pixels,
    vsearch_pipeline.core.partial_copies); the images of a pair are read again for it, and a
    pair checked once is not checked again (`partial_copies/checks.parquet`).
    Recomputed in full each time, but for the checks. `method: phash`: pHashes within
    `hamming_threshold` bits, found by multi-index hashing; when an earlier phash grouping with
    the same threshold exists, only the new hashes are checked against all the others
    (`mode: incremental`), same result.
    Groups replace the previous ones in the DuckDB table `near_duplicate_groups`, and
    `duplicates/<version>.parquet` holds every hashed image with its pHash and group (-1 for
    none): what the search service folds results and browses groups by.
    """
    rule = settings.near_duplicates
    store = storage.store
    db = metrics_db.db
    file_queued_metrics(store, db)
    load_hashes(store, db)
    ids, hashes = all_hashes(db)
    manifest = load_manifests(store)
    start = time.perf_counter()
    if rule.method == "phash":
        grouping = phash_grouping(store, ids, hashes, rule.hamming_threshold)
    else:
        search = PartialCopySearch(model.spec.key, rule.partial_copy_checks,
                                   image_reader(source.read, image_locations(manifest)),
                                   progress_logger(context, "partial-copy checks"))
        grouping = combined_grouping(
            store, model.spec.copy_spec.key, ids, hashes, hamming_threshold=rule.hamming_threshold,
            neighbours=rule.neighbours, contrast_threshold=rule.contrast_threshold,
            cosine_floor=rule.cosine_floor, partial_copies=search)
    seconds = time.perf_counter() - start
    grouped = {ids[i] for i in grouping.grouped()}
    keeper = keeper_mask(ids, grouping.labels, files_by_id(manifest, only=grouped))
    db.replace_duplicate_groups(group_rows(context.run.run_id, ids, grouping, keeper))
    path = duplicates_path(artifact_version(context))
    write_groups(store, path, ids, hashes, grouping.labels, keeper,
                 grouping_rule(rule.method, rule.hamming_threshold, grouping))
    sizes = grouping.sizes()
    figures = {"images": len(ids), **grouping.figures, "groups": len(sizes),
               "images_in_groups": len(grouping.grouped()),
               "largest_group": int(sizes.max()) if len(sizes) else 0,
               "seconds": round(seconds, 3)}
    db.record_metrics("hash", run_keys(context),
                      {"hamming_threshold": str(rule.hamming_threshold), "method": rule.method},
                      figures)
    return MaterializeResult(metadata={
        **figures, "mode": grouping.mode, "method": rule.method,
        "hamming_threshold": rule.hamming_threshold, **grouping.notes,
        "largest_groups": markdown_table(_group_rows(ids, grouping, manifest)),
        "storage_root": storage.root, "artifact": path, "path": store.uri(path),
        "code_version": code_version(),
    })


def _group_rows(ids: list[str], grouping: Grouping, manifest: pa.Table) -> list[dict]:
    sizes = grouping.sizes()
    if not len(sizes):
        return []
    return largest_groups(ids, grouping.labels, sizes, image_locations(manifest))

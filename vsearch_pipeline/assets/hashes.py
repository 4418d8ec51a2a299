"""Assets: perceptual hashes per ingest batch, and near-duplicate groups over the collection."""


import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.hashing import group_edges, group_labels, near_duplicate_pairs, phash64
from vsearch_pipeline.core.layout import (
    HASHES,
    hashes_path,
    image_locations,
    load_embeddings,
    load_manifests,
    manifest_path,
)
from vsearch_pipeline.core.metrics_queue import file_queued_metrics, queue_metrics
from vsearch_pipeline.core.near_duplicates import MIN_IMAGES_TO_CHOOSE, combined_near_duplicates
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import insert_rows
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    ImageSource,
    MetricsDatabase,
    PipelineSettings,
)
from vsearch_pipeline.settings import NearDuplicateSettings

HASH_DECODE_SIZE = 64  # pHash looks at a 32x32 thumbnail; decode JPEGs no larger than needed


def _phash_file(read: Callable[[str], bytes], uri: str) -> int | None:
    try:
        return phash64(decode_rgb(read(uri), min_size=HASH_DECODE_SIZE))
    except (ImageError, OSError):
        return None


@asset(partitions_def=ingest_batches, deps=[raw_image_manifest], code_version="2",
       group_name="dedup", retry_policy=STORAGE_RETRY)
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
    manifest = store.read_parquet(manifest_path(key))
    usable = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    first = dict(zip(usable.column("id").to_pylist(), usable.column("uri").to_pylist(),
                     strict=True))
    known = _hashes_elsewhere(store, key, set(first))
    todo = [i for i in first if i not in known]
    start = time.perf_counter()
    report = progress_logger(context, "pHash")
    computed = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for n, (image_id, value) in enumerate(
                zip(todo, pool.map(lambda i: _phash_file(source.read, first[i]), todo), strict=True)):
            computed[image_id] = value
            report(n + 1, len(todo))
    seconds = time.perf_counter() - start
    hashed = {i: v for i, v in {**known, **computed}.items() if v is not None}
    store.write_parquet(hashes_path(key), pa.table({
        "id": pa.array(list(hashed), pa.string()),
        "phash": pa.array(list(hashed.values()), pa.uint64())}))
    failed = sum(v is None for v in computed.values())
    figures = {"hashed": len(hashed), "hashed_now": len(computed) - failed,
               "from_cache": len(known), "failed": failed, "seconds": round(seconds, 3)}
    queue_metrics(store, "hash", run_keys(context), {}, figures)
    return MaterializeResult(metadata={**figures, "hash": "phash (imagehash, 64 bits)",
                                       "path": store.uri(hashes_path(key)),
                                       "code_version": code_version()})


def _hashes_elsewhere(store: ArtifactStore, key: str, wanted: set[str]) -> dict[str, int]:
    """pHashes of the wanted ids that other batches' hash files already hold."""
    found: dict[str, int] = {}
    for path in store.list(HASHES, ".parquet"):
        if path == hashes_path(key) or not wanted:
            continue
        table = store.read_parquet(path)
        for image_id, value in zip(*(table.column(c).to_pylist() for c in ("id", "phash")),
                                   strict=True):
            if image_id in wanted:
                found[image_id] = value
                wanted.discard(image_id)
    return found


def load_hashes(store: ArtifactStore, db) -> None:
    """Refill the DuckDB table `perceptual_hashes` from every batch's hash file."""
    tables = []
    for path in store.list(HASHES, ".parquet"):
        table = store.read_parquet(path)
        partition = path.rsplit("/", 1)[-1].removesuffix(".parquet")
        # typed, so that a batch with no usable image (an empty table) still concatenates
        labels = pa.array([partition] * len(table), pa.string())
        tables.append(table.append_column("partition", labels))
    with db.transaction() as con:
        con.execute("DELETE FROM perceptual_hashes")
        if tables:
            con.register("hash_files", pa.concat_tables(tables))
            con.execute("INSERT INTO perceptual_hashes SELECT id, partition, phash FROM hash_files")
            con.unregister("hash_files")


@dataclass
class Grouping:
    """What one way of grouping found: a group per image (-1: none), its figures and notes."""

    labels: np.ndarray
    mode: str
    figures: dict[str, float]
    notes: dict[str, str] = field(default_factory=dict)


@asset(deps=[perceptual_hashes, embeddings], code_version="3", group_name="dedup",
       retry_policy=STORAGE_RETRY)
def near_duplicate_groups(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
    model: EmbeddingModelResource,
) -> MaterializeResult:
    """Groups of near-duplicate images, chained from near-duplicate pairs.

    `method: combined` (default): pHash pairs within `hamming_threshold` bits and each image's
    nearest images by embedding cosine are candidates; a pair is kept when it is much closer
    than what is ordinary around both images (contrast) and above a cosine floor, both
    thresholds chosen from the data (Otsu) unless set; see vsearch_pipeline.core.near_duplicates.
    Recomputed in full each time. `method: phash`: pHashes within `hamming_threshold` bits, found
    by multi-index hashing; when an earlier phash grouping with the same threshold exists, only
    the new hashes are checked against all the others (`mode: incremental`), same result.
    Groups replace the previous ones in the DuckDB table `near_duplicate_groups`, and
    `duplicates/<version>.parquet` holds every hashed image with its pHash and group (-1 for
    none): what the search service folds results and browses groups by.
    """
    rule = settings.near_duplicates
    file_queued_metrics(storage.store, metrics_db.db)
    load_hashes(storage.store, metrics_db.db)
    with metrics_db.db.connect() as con:
        ids, hashes = _all_hashes(con)
    start = time.perf_counter()
    if rule.method == "phash":
        grouping = _phash_grouping(storage.store, ids, hashes, rule.hamming_threshold)
    else:
        grouping = _combined_grouping(storage.store, model.spec.copy_spec.key, ids, hashes, rule)
    seconds = time.perf_counter() - start
    labels = grouping.labels
    grouped = np.flatnonzero(labels >= 0)
    with metrics_db.db.transaction() as con:
        con.execute("DELETE FROM near_duplicate_groups")
        insert_rows(con, "near_duplicate_groups",
                    [(context.run.run_id, ids[i], int(labels[i])) for i in grouped])
    sizes = np.bincount(labels[grouped]) if len(grouped) else np.zeros(0, int)
    path = f"duplicates/{artifact_version(context)}.parquet"
    storage.store.write_parquet(path, pa.table({
        "id": pa.array(ids, pa.string()), "phash": pa.array(hashes, pa.uint64()),
        "group": pa.array(labels, pa.int64())},
        metadata={"vsearch.hamming_threshold": str(rule.hamming_threshold),
                  "vsearch.method": rule.method}))
    figures = {"images": len(ids), **grouping.figures, "groups": len(sizes),
               "images_in_groups": len(grouped),
               "largest_group": int(sizes.max()) if len(sizes) else 0,
               "seconds": round(seconds, 3)}
    metrics_db.db.record_metrics("hash", run_keys(context),
                                 {"hamming_threshold": str(rule.hamming_threshold),
                                  "method": rule.method}, figures)
    return MaterializeResult(metadata={
        **figures, "mode": grouping.mode, "method": rule.method,
        "hamming_threshold": rule.hamming_threshold, **grouping.notes,
        "largest_groups": markdown_table(_group_rows(storage, ids, labels, sizes)),
        "storage_root": storage.root, "artifact": path, "path": storage.store.uri(path),
        "code_version": code_version(),
    })


def _phash_grouping(store: ArtifactStore, ids: list[str], hashes: np.ndarray,
                    threshold: int) -> Grouping:
    """pHashes within `threshold` bits; only new hashes checked when earlier groups exist."""
    previous = _previous_groups(store, threshold)
    if previous is None:
        mode, is_new = "full", np.ones(len(ids), dtype=bool)
        pairs = near_duplicate_pairs(hashes, threshold)
        edges = pairs[:, :2]
    else:
        mode = "incremental"
        is_new = np.array([i not in previous for i in ids], dtype=bool)
        pairs = near_duplicate_pairs(hashes, threshold, touching=is_new)
        old_labels = np.array([previous.get(i, -1) for i in ids], dtype=np.int64)
        edges = np.concatenate([pairs[:, :2], group_edges(old_labels)])
    return Grouping(group_labels(len(ids), edges), mode,
                    {"checked_now": int(is_new.sum()), "new_pairs": len(pairs)})


def _combined_grouping(store: ArtifactStore, model_key: str, ids: list[str], hashes: np.ndarray,
                       rule: NearDuplicateSettings) -> Grouping:
    """pHash and embedding signals together (core.near_duplicates), over the whole collection.

    Images without a vector of the model (outside the sampled subset) are paired by pHash alone."""
    vectors, positions = _vectors_of(store, model_key, ids)
    result = combined_near_duplicates(
        hashes, vectors, positions, rule.hamming_threshold, rule.neighbours,
        rule.contrast_threshold, rule.cosine_floor)
    figures = {"checked_now": len(ids), "new_pairs": len(result.pairs),
               "with_vectors": len(positions), "candidate_pairs": result.candidates,
               "pairs_by_contrast": result.by_contrast, "pairs_by_phash": result.by_phash}
    chosen = result.thresholds
    if chosen is None:
        notes = {"threshold_choice": f"pHash alone: fewer than {MIN_IMAGES_TO_CHOOSE} images "
                                     "with vectors to choose thresholds from"}
    else:
        figures |= {"contrast_threshold": round(chosen.contrast, 4),
                    "cosine_floor": round(chosen.cosine_floor, 4), "strict_bits": chosen.strict_bits}
        notes = {"threshold_choice": chosen.chosen_by}
    notes["model"] = model_key
    return Grouping(group_labels(len(ids), result.pairs), "full", figures, notes)


def _vectors_of(store: ArtifactStore, model_key: str, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The model's vectors of the hashed images, and each one's position in `ids`."""
    try:
        vector_ids, vectors, _ = load_embeddings(store, model_key)
    except ValueError:  # nothing embedded yet: pHash alone
        return np.empty((0, 1), np.float32), np.empty(0, np.int64)
    position = {image_id: i for i, image_id in enumerate(ids)}
    rows = [(row, position[i]) for row, i in enumerate(vector_ids) if i in position]
    keep = np.array([r for r, _ in rows], dtype=np.int64)
    return vectors[keep], np.array([p for _, p in rows], dtype=np.int64)


def _previous_groups(store: ArtifactStore, threshold: int) -> dict[str, int] | None:
    """Id -> group of the latest groups artifact when pHash alone made it with this threshold."""
    for path in reversed(store.list("duplicates", ".parquet")):
        table = store.read_parquet(path)
        made = table.schema.metadata or {}
        made_with = made.get(b"vsearch.hamming_threshold")
        if made_with is None or int(made_with) != threshold \
                or made.get(b"vsearch.method", b"phash") != b"phash":
            return None
        return dict(zip(table.column("id").to_pylist(), table.column("group").to_pylist(),
                        strict=True))
    return None


def _all_hashes(con) -> tuple[list[str], np.ndarray]:
    rows = con.execute(
        "SELECT id, any_value(phash) FROM perceptual_hashes GROUP BY id ORDER BY id").fetchall()
    return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.uint64)


def _group_rows(storage: ArtifactStorage, ids: list[str], labels: np.ndarray,
                sizes: np.ndarray) -> list[dict]:
    if not len(sizes):
        return []
    manifest = load_manifests(storage.store)
    where = image_locations(manifest)
    rows = []
    for group in np.argsort(-sizes, kind="stable")[:20]:
        members = [where.get(ids[i], ("", ids[i]))[1] for i in np.flatnonzero(labels == group)]
        rows.append({"group": int(group), "size": int(sizes[group]),
                     "members": ", ".join(members[:6]) + (" ..." if len(members) > 6 else "")})
    return rows

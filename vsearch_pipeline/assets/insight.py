"""Asset: what a curator looks at beyond search: the odd ones, likely label mistakes, poor files."""


import os
import time

import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vsearch_pipeline.assets.clusters import clusters
from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    artifact_version,
    code_version,
    collection_embeddings,
    markdown_table,
    run_keys,
    setting,
)
from vsearch_pipeline.assets.hashes import near_duplicate_groups
from vsearch_pipeline.core.artifacts import load_manifests
from vsearch_pipeline.core.catalog import latest_clusters
from vsearch_pipeline.core.image_quality import QUALITY_FLAGS
from vsearch_pipeline.core.insight import collection_insight_table, quality_table
from vsearch_pipeline.core.label_review import LABEL_NEIGHBOURS, image_labels, review_labels
from vsearch_pipeline.core.layout import insight_path
from vsearch_pipeline.core.near_duplicates import nearest_neighbours
from vsearch_pipeline.core.uniqueness import outlier_distances, uniqueness_scores
from vsearch_pipeline.resources import (
    ArtifactStorage,
    CurationDatabase,
    EmbeddingModelResource,
    MetricsDatabase,
    PipelineSettings,
)


@asset(deps=[clusters, near_duplicate_groups], code_version="1", retry_policy=STORAGE_RETRY)
def collection_insight(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
    metrics_db: MetricsDatabase,
    curation_db: CurationDatabase,
    settings: PipelineSettings,
) -> MaterializeResult:
    """Per image: how unique it is among its 10 nearest images and how far it lies from the
    collection beyond them (its 10th to 200th nearest in a sample of 20,000: the odd ones;
    core.uniqueness), whether
    its label (its folder, or a `label:` tag) disagrees with its 20 nearest images' labels and
    which label they suggest (core.label_review), and the
    quality flags of its file (core.image_quality: blurry, dark, bright, tiny) from the figures
    the manifest measured.

    Written to `insight/<model>/<version>.parquet` and the DuckDB tables `image_insight` and
    `image_quality` (the whole collection each run), with counts in `insight_metrics`.
    """
    store, config = storage.store, settings.insight
    ids, vectors, _ = collection_embeddings(store, model.spec.key)
    manifest = load_manifests(store)
    start = time.perf_counter()
    cosine, rows = nearest_neighbours(vectors, min(LABEL_NEIGHBOURS, max(len(ids) - 1, 1)))
    neighbour_seconds = time.perf_counter() - start
    scores = uniqueness_scores(cosine, outlier_distances(vectors, settings.clusters.seed))
    paths = _first_paths(manifest, ids)
    tags = _tags(curation_db, ids)
    review = review_labels(image_labels(paths, tags), cosine, rows, config.label_confidence)
    quality = quality_table(manifest, config.thresholds())
    table = collection_insight_table(ids, paths, scores, review,
                                     _cluster_labels(store, model, ids), quality)
    version = artifact_version(context)
    store.write_parquet(insight_path(model.spec.key, version), table)
    metrics_db.db.replace_table("image_insight", table)
    metrics_db.db.replace_table("image_quality", quality)
    seconds = time.perf_counter() - start
    flag_counts = {f"quality_{flag}": int(sum(flag in f for f in quality.column("flags").to_pylist()))
                   for flag in QUALITY_FLAGS}
    figures = {"images": len(ids), "labelled": sum(label is not None for label in review.labels),
               "label_mistakes": int(review.flagged.sum()), **flag_counts,
               "neighbour_seconds": neighbour_seconds, "seconds": seconds}
    metrics_db.db.record_metrics("insight", run_keys(context), {"model": model.spec.key},
                                 figures)
    odd = np.argsort(-scores.outlier, kind="stable")[:15]
    return MaterializeResult(metadata={
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()},
        "label_confidence": setting(config.label_confidence),
        "most_unique": markdown_table([{"path": paths[i], "uniqueness": float(scores.uniqueness[i])}
                                       for i in np.argsort(-scores.uniqueness, kind="stable")[:15]]),
        "thresholds": MetadataValue.json(config.model_dump()),
        "odd_ones": markdown_table([{"path": paths[i], "outlier": float(scores.outlier[i]),
                                     "uniqueness": float(scores.uniqueness[i])} for i in odd]),
        "label_mistakes_found": markdown_table([
            {"path": paths[i], "label": review.labels[i], "suggested": review.suggested[i],
             "confidence": float(review.confidence[i])} for i in review.flagged_rows()[:20]]),
        "path": store.uri(insight_path(model.spec.key, version)),
        "model_key": model.spec.key, "code_version": code_version(),
    })


def _first_paths(manifest: pa.Table, ids: list[str]) -> list[str]:
    where: dict[str, str] = {}
    for image_id, path in zip(manifest.column("id").to_pylist(),
                              manifest.column("path").to_pylist(), strict=True):
        if image_id is not None:
            where.setdefault(image_id, path)
    return [where.get(i, i) for i in ids]


def _tags(curation_db: CurationDatabase, ids: list[str]) -> list[list[str]]:
    db = curation_db.db
    by_id: dict[str, list[str]] = {}
    if os.path.exists(db.path):
        for tag, image_id in db.all_tags():
            by_id.setdefault(image_id, []).append(tag)
    return [by_id.get(i, []) for i in ids]


def _cluster_labels(store, model: EmbeddingModelResource, ids: list[str]) -> np.ndarray:
    path = latest_clusters(store, model.spec.key)
    found: dict[str, int] = {}
    if path is not None:
        table = store.read_parquet(path, columns=["id", "label"])
        found = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist(),
                         strict=True))
    return np.array([found.get(i, -1) for i in ids], np.int64)

"""Asset: cluster labels of every embedded image, with their quality figures."""


import time

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
    artifact_version,
    code_version,
    collection_embeddings,
    markdown_table,
    run_keys,
    setting,
)
from vsearch_pipeline.assets.embeddings import embeddings
from vsearch_pipeline.core.artifacts import image_locations, load_grounding_sets, load_manifests
from vsearch_pipeline.core.cluster import cluster_labels
from vsearch_pipeline.core.cluster_figures import grounding_figures, keyed_figures, largest_clusters
from vsearch_pipeline.core.drift import drifted
from vsearch_pipeline.core.layout import clusters_path
from vsearch_pipeline.core.metrics import cluster_metrics
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    MetricsDatabase,
    PipelineSettings,
)

DRIFT_CHECK = AssetCheckSpec(
    "cluster_metrics_stable", asset="clusters",
    description="Cluster count, noise share, silhouette and grounding figures moved by at most "
                "clusters.drift_tolerance since the previous run (a warning, not a failure).")


@asset(deps=[embeddings], code_version="1", check_specs=[DRIFT_CHECK],
       retry_policy=STORAGE_RETRY)
def clusters(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
) -> MaterializeResult:
    """HDBSCAN or KMeans labels (optionally after PCA or UMAP) for every embedded image.

    Figures: number of clusters, noise share, cosine silhouette, and against each grounding set
    purity, adjusted Rand index, NMI and coverage. Labels go to `clusters/<model>/<version>.parquet`.
    """
    store = storage.store
    config = settings.clusters
    ids, vectors, _ = collection_embeddings(store, model.spec.key)
    start = time.perf_counter()
    labels = cluster_labels(vectors, config.params())
    seconds = time.perf_counter() - start
    path = clusters_path(model.spec.key, artifact_version(context))
    store.write_parquet(path, pa.table({"id": ids, "label": labels}))

    keys = {"model": model.spec.key, "method": config.method, "reduce": config.reduce,
            "params": config.model_dump()}
    overall = cluster_metrics(vectors, labels, seed=config.seed)
    previous = metrics_db.db.previous_cluster_figures(model.spec.key, context.run.run_id)
    metrics_db.db.record_metrics("cluster", run_keys(context), keys,
                                 {**overall, "seconds": seconds})
    per_set = []
    manifest = load_manifests(store)
    for grounding in load_grounding_sets(settings.evaluation.grounding_sets, manifest):
        figures = grounding_figures(labels, ids, grounding)
        metrics_db.db.record_metrics("cluster", run_keys(context),
                                     {**keys, "grounding_set": grounding.name}, figures)
        per_set.append({"grounding_set": grounding.name, **figures})
    drift = drifted(previous, keyed_figures(overall, per_set), config.drift_tolerance)
    return MaterializeResult(check_results=[_drift_check(drift, bool(previous),
                                                         config.drift_tolerance)], metadata={
        **{k: _plain(v) for k, v in overall.items()}, "images": len(ids),
        "seconds": round(seconds, 3), "method": config.method, "reduce": config.reduce,
        "config": MetadataValue.json(config.model_dump()),
        "grounding": markdown_table(per_set),
        "largest_clusters": markdown_table(largest_clusters(labels, ids, image_locations(manifest))),
        "path": store.uri(path), "storage_root": storage.root, "artifact": path,
        "model_key": model.spec.key, "code_version": code_version(),
    })


def _drift_check(drift: list[dict], compared: bool, tolerance: float) -> AssetCheckResult:
    return AssetCheckResult(
        check_name="cluster_metrics_stable", passed=not any(r["drifted"] for r in drift),
        severity=AssetCheckSeverity.WARN,
        metadata={"compared_with_previous": compared,
                  "drifted": MetadataValue.json([r["metric"] for r in drift if r["drifted"]]),
                  "tolerance": setting(tolerance), "figures": markdown_table(drift)})


def _plain(value: float) -> float | int:
    return value if isinstance(value, int) else round(float(value), 4)

"""Asset: cluster labels of every embedded image, with their quality figures."""


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
    artifact_version,
    code_version,
    collection_embeddings,
    markdown_table,
    run_keys,
)
from vsearch_pipeline.assets.embeddings import embeddings
from vsearch_pipeline.core.cluster import cluster_labels
from vsearch_pipeline.core.drift import drifted
from vsearch_pipeline.core.layout import image_locations, load_grounding_sets, load_manifests
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


@asset(deps=[embeddings], code_version="1", group_name="cluster", check_specs=[DRIFT_CHECK],
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
    path = f"clusters/{model.spec.key}/{artifact_version(context)}.parquet"
    store.write_parquet(path, pa.table({"id": ids, "label": labels}))

    keys = {"model": model.spec.key, "method": config.method, "reduce": config.reduce,
            "params": config.model_dump()}
    overall = cluster_metrics(vectors, labels, seed=config.seed)
    previous = _previous_figures(metrics_db, model.spec.key, context.run.run_id)
    metrics_db.db.record_metrics("cluster", run_keys(context), keys,
                                 {**overall, "seconds": seconds})
    per_set = []
    manifest = load_manifests(store)
    for grounding in load_grounding_sets(settings.evaluation.grounding_sets, manifest):
        figures = cluster_metrics(None, labels, grounding.labels_for(ids))
        figures = {k: v for k, v in figures.items() if k not in ("silhouette", "n_clusters",
                                                                 "noise_share")}
        metrics_db.db.record_metrics("cluster", run_keys(context),
                                     {**keys, "grounding_set": grounding.name}, figures)
        per_set.append({"grounding_set": grounding.name, **figures})
    current = {**overall, **{f"{r['grounding_set']}:{k}": v for r in per_set
                             for k, v in r.items() if k != "grounding_set"}}
    drift = drifted(previous, current, config.drift_tolerance)
    return MaterializeResult(check_results=[AssetCheckResult(
        check_name="cluster_metrics_stable", passed=not any(r["drifted"] for r in drift),
        severity=AssetCheckSeverity.WARN,
        metadata={"compared_with_previous": bool(previous),
                  "drifted": MetadataValue.json([r["metric"] for r in drift if r["drifted"]]),
                  "tolerance": config.drift_tolerance, "figures": markdown_table(drift)},
    )], metadata={
        **{k: _plain(v) for k, v in overall.items()}, "images": len(ids),
        "seconds": round(seconds, 3), "method": config.method, "reduce": config.reduce,
        "config": MetadataValue.json(config.model_dump()),
        "grounding": markdown_table(per_set),
        "largest_clusters": markdown_table(_largest(labels, ids, manifest)),
        "path": store.uri(path), "storage_root": storage.root, "artifact": path,
        "model_key": model.spec.key, "code_version": code_version(),
    })


def _previous_figures(metrics_db: MetricsDatabase, model_key: str, run_id: str
                      ) -> dict[str, float]:
    """The figures of the latest earlier clusters run of this model, keyed like `current`
    (overall names, and `<grounding set>:<name>` per grounding set)."""
    with metrics_db.db.connect() as con:
        rows = con.execute(
            """
            WITH last AS (
                SELECT run_id FROM cluster_metrics WHERE model = ? AND run_id <> ?
                ORDER BY recorded_at DESC LIMIT 1)
            SELECT grounding_set, metric, value FROM cluster_metrics
            WHERE run_id = (SELECT run_id FROM last) AND metric <> 'seconds'
            """, [model_key, run_id]).fetchall()
    return {(f"{g}:{m}" if g else m): v for g, m, v in rows}


def _plain(value: float) -> float | int:
    return value if isinstance(value, int) else round(float(value), 4)


def _largest(labels: np.ndarray, ids: list[str], manifest: pa.Table) -> list[dict]:
    where = image_locations(manifest)
    found = labels[labels >= 0]
    if not len(found):
        return []
    sizes = np.bincount(found)
    rows = []
    for label in np.argsort(-sizes, kind="stable")[:15]:
        members = [where.get(ids[i], ("", ids[i]))[1] for i in np.flatnonzero(labels == label)[:4]]
        rows.append({"label": int(label), "size": int(sizes[label]),
                     "examples": ", ".join(members)})
    return rows

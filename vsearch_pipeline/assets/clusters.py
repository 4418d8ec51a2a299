"""Asset: cluster labels of every embedded image, with their quality figures."""


import base64
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
from vsearch_pipeline.core.catalog import latest_clusters
from vsearch_pipeline.core.cluster import JOINED_BY, cluster_images
from vsearch_pipeline.core.cluster_figures import grounding_figures, keyed_figures, largest_clusters
from vsearch_pipeline.core.drift import drifted
from vsearch_pipeline.core.layout import clusters_path, map_picture_path
from vsearch_pipeline.core.map_layout import Layout, layout_collection, map_png
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


@asset(deps=[embeddings], code_version="3", check_specs=[DRIFT_CHECK],
       retry_policy=STORAGE_RETRY)
def clusters(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
) -> MaterializeResult:
    """A cluster for every embedded image that is not an outlier: HDBSCAN (after PCA or UMAP)
    with its minimum cluster size chosen from the data, the images it leaves clustered again on
    their own and then given to the cluster their neighbours vote for (core.cluster.
    covering_hdbscan); or KMeans.

    The map is laid out with them (core.map_layout): UMAP of the clustered vectors (PCA for a
    small collection), each image kept where the previous map put it and new ones placed among
    the images they look like.

    Figures: number of clusters, outlier (noise) share, how the images joined, the chosen
    minimum size, cosine silhouette, and against each grounding set purity, adjusted Rand index,
    NMI and coverage; the map as a picture. Labels go to `clusters/<model>/<version>.parquet`
    (-1: an outlier) with how each image joined (`joined_by`) and its place on the map (`x`,
    `y`), and to the DuckDB table `cluster_members`.
    """
    store = storage.store
    config = settings.clusters
    ids, vectors, _ = collection_embeddings(store, model.spec.key)
    start = time.perf_counter()
    clustering = cluster_images(vectors, config.params())
    labels = clustering.labels
    seconds = time.perf_counter() - start
    version = artifact_version(context)
    start = time.perf_counter()
    layout = layout_collection(clustering.reduced, config.map, config.seed,
                               previous_places(store, model.spec.key), ids)
    map_seconds = time.perf_counter() - start
    picture = map_png(layout.xy, labels)
    store.write_bytes(map_picture_path(model.spec.key, version), picture)
    path = clusters_path(model.spec.key, version)
    joined_by = [JOINED_BY[c] for c in clustering.joined_by]
    store.write_parquet(path, pa.table({"id": ids, "label": labels, "joined_by": joined_by,
                                        "x": layout.xy[:, 0], "y": layout.xy[:, 1]}))
    metrics_db.db.replace_cluster_members(model.spec.key, [
        (context.run.run_id, model.spec.key, i, int(label), how)
        for i, label, how in zip(ids, labels, joined_by, strict=True)])

    keys = {"model": model.spec.key, "method": config.method, "reduce": config.reduce,
            "params": config.model_dump()}
    overall = cluster_metrics(vectors, labels, seed=config.seed)
    previous = metrics_db.db.previous_cluster_figures(model.spec.key, context.run.run_id)
    joined = clustering.counts()
    metrics_db.db.record_metrics("cluster", run_keys(context), keys,
                                 {**overall, "seconds": seconds, **joined,
                                  "min_cluster_size": clustering.min_cluster_size or 0})
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
        "outliers": joined["outlier"], "joined_by_density": joined["density"],
        "joined_by_second_pass": joined["second_pass"],
        "joined_by_neighbours": joined["neighbours"],
        "min_cluster_size": clustering.min_cluster_size or 0,
        "min_cluster_size_chosen_by": clustering.chosen_by,
        "seconds": round(seconds, 3), "method": config.method, "reduce": config.reduce,
        **_map_metadata(layout, map_seconds, picture, store.uri(map_picture_path(
            model.spec.key, version))),
        "config": MetadataValue.json(config.model_dump()),
        "grounding": markdown_table(per_set),
        "largest_clusters": markdown_table(largest_clusters(labels, ids, image_locations(manifest))),
        "path": store.uri(path), "storage_root": storage.root, "artifact": path,
        "model_key": model.spec.key, "code_version": code_version(),
    })


def previous_places(store, model_key: str) -> dict[str, tuple[float, float]] | None:
    """Where the newest earlier clustering put each image on the map (None: no map yet)."""
    path = latest_clusters(store, model_key)
    if path is None or "x" not in store.read_parquet_schema(path).names:
        return None
    table = store.read_parquet(path, columns=["id", "x", "y"])
    return dict(zip(table.column("id").to_pylist(),
                    zip(table.column("x").to_pylist(), table.column("y").to_pylist(),
                        strict=True), strict=True))


def _map_metadata(layout: Layout, seconds: float, picture: bytes, uri: str) -> dict:
    encoded = base64.b64encode(picture).decode()
    return {"map": MetadataValue.md(f"![map of the collection](data:image/png;base64,{encoded})"),
            "map_method": layout.method, "map_placed": layout.placed, "map_kept": layout.kept,
            "map_seconds": round(seconds, 3), "map_picture": uri}


def _drift_check(drift: list[dict], compared: bool, tolerance: float) -> AssetCheckResult:
    return AssetCheckResult(
        check_name="cluster_metrics_stable", passed=not any(r["drifted"] for r in drift),
        severity=AssetCheckSeverity.WARN,
        metadata={"compared_with_previous": compared,
                  "drifted": MetadataValue.json([r["metric"] for r in drift if r["drifted"]]),
                  "tolerance": setting(tolerance), "figures": markdown_table(drift)})


def _plain(value: float) -> float | int:
    return value if isinstance(value, int) else round(float(value), 4)

"""Asset: the FAISS index over every embedding of the configured model, with its id map."""


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

from vsearch_pipeline.assets.common import artifact_version, code_version, run_keys
from vsearch_pipeline.assets.embeddings import embeddings
from vsearch_pipeline.core.index import (
    build_index,
    factory_string,
    recall_at_k,
    resolve_params,
    serialize,
)
from vsearch_pipeline.core.layout import (
    image_locations,
    index_dir,
    load_embeddings,
    load_labels,
    load_manifests,
)
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    MetricsDatabase,
    PipelineSettings,
)

RECALL_K = 10


@asset(
    deps=[embeddings], code_version="2", group_name="index",
    check_specs=[AssetCheckSpec("recall_above_bound", asset="faiss_index",
                                description="Recall@10 against exact search >= index.min_recall.")],
)
def faiss_index(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
) -> MaterializeResult:
    """A FAISS index (flat, hnsw, ivf-flat or ivf-pq) of the model's vectors, inner-product metric.

    Written as `index.faiss` beside `ids.parquet` (position -> id, URI, path) and `build.json`
    (the resolved parameters). Recall@10 against exact search on a sample of the indexed
    vectors is measured at build time; below `index.min_recall` the check fails.
    """
    store = storage.store
    config = settings.index
    ids, vectors, model_version = load_embeddings(store, model.spec.key)
    params = resolve_params(config.params(), len(ids), vectors.shape[1])
    start = time.perf_counter()
    index = build_index(vectors, params)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    recall = recall_at_k(index, vectors, RECALL_K, config.recall_queries)
    recall_seconds = time.perf_counter() - start

    version = artifact_version(context)
    folder = index_dir(model.spec.key, version)
    store.write_parquet(f"{folder}/ids.parquet",
                        _id_map(store, ids, load_labels(store, model.spec.key)))
    build = {"version": version, "model": model.name, "model_key": model.spec.key,
             "model_version": model_version, "pretrained": model.pretrained,
             "dimension": int(vectors.shape[1]), "count": len(ids),
             "factory": factory_string(params, vectors.shape[1]), "params": params.as_dict(),
             "recall_at_10": recall, "code_version": code_version()}
    store.write_json(f"{folder}/build.json", build)
    store.write_bytes(f"{folder}/index.faiss", serialize(index))

    figures = {"vectors": len(ids), "recall_at_10": round(recall, 4),
               "build_seconds": round(build_seconds, 3), "recall_seconds": round(recall_seconds, 3)}
    metrics_db.db.record_metrics(
        "index", run_keys(context),
        {"model": model.spec.key, "index_type": params.index_type, "index_version": version,
         "params": params.as_dict()}, figures)
    return MaterializeResult(
        metadata={**figures, "index_type": params.index_type, "factory": build["factory"],
                  "params": MetadataValue.json(params.as_dict()), "dimension": build["dimension"],
                  "model": model.name, "model_key": model.spec.key,
                  "model_version": model_version, "version": version,
                  "storage_root": storage.root, "index_dir": folder,
                  "path": store.uri(f"{folder}/index.faiss"), "code_version": code_version()},
        check_results=[AssetCheckResult(
            check_name="recall_above_bound", passed=recall >= config.min_recall,
            severity=AssetCheckSeverity.ERROR,
            metadata={"recall_at_10": recall, "min_recall": config.min_recall})],
    )


def _id_map(store, ids: list[str], labels: dict[str, tuple[list[str], list[float]]]) -> pa.Table:
    """Position in the index -> id, with the URI and path of the image's first file and its
    predicted classes (what text search reads when the model has no text tower)."""
    where = image_locations(load_manifests(store))
    return pa.table({"position": pa.array(range(len(ids)), pa.int64()),
                     "id": pa.array(ids, pa.string()),
                     "uri": pa.array([where.get(i, ("", ""))[0] for i in ids], pa.string()),
                     "path": pa.array([where.get(i, ("", ""))[1] for i in ids], pa.string()),
                     "labels": pa.array([labels.get(i, ([], []))[0] for i in ids],
                                        pa.list_(pa.string())),
                     "label_probs": pa.array([labels.get(i, ([], []))[1] for i in ids],
                                             pa.list_(pa.float32()))})

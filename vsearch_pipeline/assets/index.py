"""Asset: the FAISS index over every embedding of the configured model, with its id map."""


import time
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    artifact_version,
    code_version,
    collection_embeddings,
    run_keys,
)
from vsearch_pipeline.assets.embeddings import embeddings
from vsearch_pipeline.assets.retrieval import retrieval_transform
from vsearch_pipeline.core.embed import table_vectors
from vsearch_pipeline.core.index import (
    IndexParams,
    build_index,
    deserialize,
    factory_string,
    recall_at_k,
    resolve_params,
    search,
    serialize,
    set_search_params,
)
from vsearch_pipeline.core.index_plan import FULL, plan_build
from vsearch_pipeline.core.layout import (
    GRAPH_FILE,
    PLAIN_VECTORS_FILE,
    embeddings_dir,
    image_locations,
    index_dir,
    latest_index_build,
    latest_transform,
    live_ids,
    load_folder_graph,
    load_folder_plain_vectors,
    load_folder_transform,
    load_labels,
    load_manifests,
    manifest_path,
    plain_vectors_bytes,
)
from vsearch_pipeline.core.metrics_queue import file_queued_metrics
from vsearch_pipeline.core.retrieval import (
    NeighbourGraph,
    QueryPlan,
    VectorTransform,
    augment,
    augment_database,
    neighbour_graph,
)
from vsearch_pipeline.core.sharded_index import (
    SHARDED_TYPES,
    build_ivf_by_shards,
    recall_by_shards,
    sharded_params,
)
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    ImageSource,
    MetricsDatabase,
    PipelineSettings,
)

RECALL_K = 10
NO_NEW_ROWS = pa.table({"id": pa.array([], pa.string()), "model_version": pa.array([], pa.string()),
                        "labels": pa.array([], pa.list_(pa.string())),
                        "label_probs": pa.array([], pa.list_(pa.float32())),
                        "partition": pa.array([], pa.string())})  # every column _add_new reads


class IndexBuildConfig(Config):
    full_rebuild: bool = False
    """Train from scratch even when the new vectors could be added (the rebuild schedule sets it)."""


@dataclass
class BuiltIndex:
    index: faiss.Index
    id_map: pa.Table
    params: IndexParams
    recall: float
    recall_version: str  # the build whose vectors the recall was measured on
    trained_count: int
    trained_version: str
    added: int
    removed: int
    model_version: str
    transform: VectorTransform = VectorTransform()
    graph: NeighbourGraph | None = None
    plain: np.ndarray | None = None  # the vectors before DBA, kept when they were augmented


@asset(
    deps=[embeddings, retrieval_transform], code_version="4", group_name="index", retry_policy=STORAGE_RETRY,
    check_specs=[AssetCheckSpec("recall_above_bound", asset="faiss_index",
                                description="Recall@10 against exact search >= index.min_recall.")],
)
def faiss_index(
    context: AssetExecutionContext,
    config: IndexBuildConfig,
    source: ImageSource,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
) -> MaterializeResult:
    """A FAISS index (flat, hnsw, ivf-flat or ivf-pq) of the model's vectors, inner-product metric.

    Each materialization is a new version folder: `index.faiss`, `ids.parquet` (position -> id,
    URI, path, predicted classes) and `build.json` (resolved parameters, mode, figures). When
    only new shards arrived, the previous version is loaded and the new vectors are added
    (`mode: incremental`); a full build (`mode: full`) trains from scratch on what the source
    still holds, on schedule, on request, or once the collection grew past
    `index.rebuild_growth_ratio` since the last training. Recall@10 against exact search is
    measured at each full build; below `index.min_recall` the check fails.
    """
    store = storage.store
    file_queued_metrics(store, metrics_db.db)
    model_key = model.spec.key
    shards = store.list(embeddings_dir(model_key), ".parquet")
    if not shards:
        raise ValueError(f"no embeddings for model {model_key!r} yet")
    previous = latest_index_build(store, model_key)
    new = _new_rows(store, previous, shards)
    requested = settings.index.params().as_dict()
    model_version = (new.column("model_version")[0].as_py() if len(new)
                     else (previous or {}).get("model_version", ""))
    transform = _latest_transform(store, model_key)
    retrieval = _retrieval_record(settings, transform)
    plan = plan_build(previous, requested, model_version, len(new),
                      settings.index.rebuild_growth_ratio, config.full_rebuild, retrieval)
    context.log.info(f"index build: {plan.mode} ({plan.reason})")
    version = artifact_version(context)
    start = time.perf_counter()
    if plan.mode == FULL:
        built = _full_build(store, model_key, settings, source.list(), version, transform,
                            retrieval)
    else:
        built = _add_new(store, previous, new, retrieval)
    seconds = time.perf_counter() - start

    folder = index_dir(model_key, version)
    count = int(built.index.ntotal)
    build = {"version": version, "model": model.name, "model_key": model_key,
             "model_version": built.model_version, "pretrained": model.pretrained,
             "view": model.spec.view,
             "dimension": int(built.index.d), "count": count,
             "factory": factory_string(built.params, built.index.d),
             "params": built.params.as_dict(), "requested_params": requested,
             "mode": plan.mode, "reason": plan.reason,
             "base_version": previous["version"] if previous and plan.mode != FULL else None,
             "added": built.added, "removed": built.removed, "shards": shards,
             "trained_count": built.trained_count, "trained_version": built.trained_version,
             "recall_at_10": built.recall, "recall_measured_on": built.recall_version,
             "retrieval": retrieval,
             "build_seconds": round(seconds, 3), "code_version": code_version()}
    store.write_parquet(f"{folder}/ids.parquet", built.id_map)
    store.write_bytes(f"{folder}/index.faiss", serialize(built.index))
    for name, data in built.transform.files().items():
        store.write_bytes(f"{folder}/{name}", data)
    if built.graph is not None:
        store.write_bytes(f"{folder}/{GRAPH_FILE}", built.graph.to_bytes())
    if built.plain is not None:
        store.write_bytes(f"{folder}/{PLAIN_VECTORS_FILE}", plain_vectors_bytes(built.plain))
    store.write_json(f"{folder}/build.json", build)  # last: a version folder is whole once it has this

    figures = {"vectors": count, "added": built.added, "removed": built.removed,
               "recall_at_10": round(built.recall, 4), "build_seconds": round(seconds, 3)}
    metrics_db.db.record_metrics(
        "index", run_keys(context),
        {"model": model_key, "index_type": built.params.index_type, "index_version": version,
         "params": built.params.as_dict(), "mode": plan.mode}, figures)
    return MaterializeResult(
        metadata={**figures, "mode": plan.mode, "reason": plan.reason,
                  "base_version": build["base_version"] or "",
                  "trained_count": built.trained_count, "trained_version": built.trained_version,
                  "recall_measured_on": built.recall_version,
                  "retrieval": MetadataValue.json(retrieval),
                  "index_type": built.params.index_type, "factory": build["factory"],
                  "params": MetadataValue.json(built.params.as_dict()),
                  "dimension": build["dimension"], "model": model.name, "model_key": model_key,
                  "model_version": built.model_version, "version": version,
                  "storage_root": storage.root, "index_dir": folder,
                  "path": store.uri(f"{folder}/index.faiss"), "code_version": code_version()},
        check_results=[AssetCheckResult(
            check_name="recall_above_bound", passed=built.recall >= settings.index.min_recall,
            severity=AssetCheckSeverity.ERROR,
            metadata={"recall_at_10": built.recall, "min_recall": settings.index.min_recall,
                      "measured_on": built.recall_version})],
    )


def _full_build(store: ArtifactStore, model_key: str, settings: PipelineSettings,
                listing: list, version: str, transform: VectorTransform,
                retrieval: dict) -> BuiltIndex:
    """Train and fill from every shard, keeping only images the source still holds. IVF types
    are trained on a sample and filled shard by shard, never holding every vector at once."""
    config = settings.index
    manifest = load_manifests(store)
    live = live_ids(manifest, listing)
    if config.index_type in SHARDED_TYPES:
        return _full_build_by_shards(store, model_key, config, manifest, live, version)
    ids, vectors, model_version = collection_embeddings(store, model_key)
    keep = np.array([i in live for i in ids], dtype=bool)
    removed = int((~keep).sum())
    ids = [i for i, k in zip(ids, keep, strict=True) if k]
    vectors = vectors[keep]
    if not ids:
        raise ValueError("none of the embedded images is in the source any more")
    vectors = transform.apply(vectors)
    params = resolve_params(config.params(), len(ids), vectors.shape[1])
    index = build_index(vectors, params)
    plain = None
    if retrieval["database_augmentation_k"]:
        plain = vectors
        near = neighbour_graph(lambda q, k: search(index, q, k), vectors,
                               retrieval["database_augmentation_k"])
        vectors = augment_database(vectors, near.positions, near.scores,
                                   retrieval["query_plan"]["expansion_alpha"])
        index = build_index(vectors, params)
    graph = None  # for re-ranking: neighbours among the vectors as indexed, augmented or not
    if retrieval["graph_k"]:
        graph = neighbour_graph(lambda q, k: search(index, q, k), vectors, retrieval["graph_k"])
    recall = recall_at_k(index, vectors, RECALL_K, config.recall_queries)
    id_map = _id_map(ids, image_locations(manifest), load_labels(store, model_key))
    return BuiltIndex(index, id_map, params, recall, version, len(ids), version, len(ids),
                      removed, model_version, transform, graph, plain)


def _full_build_by_shards(store: ArtifactStore, model_key: str, config, manifest: pa.Table,
                          live: set[str], version: str) -> BuiltIndex:
    shards = store.list(embeddings_dir(model_key), ".parquet")
    embedded = {i for s in shards for i in store.read_parquet(s, columns=["id"]).column("id").to_pylist()}
    gone = embedded - live
    index, ids = build_ivf_by_shards(store, shards, config.params(), exclude=gone)
    params = sharded_params(store, shards, config.params())
    recall = recall_by_shards(index, ids, store, shards, RECALL_K, config.recall_queries,
                              exclude=gone)
    model_version = store.read_parquet(shards[-1], columns=["model_version"]).column(
        "model_version")[0].as_py()
    id_map = _id_map(ids, image_locations(manifest), load_labels(store, model_key))
    return BuiltIndex(index, id_map, params, recall, version, len(ids), version, len(ids),
                      len(gone), model_version)


def _add_new(store: ArtifactStore, previous: dict, new: pa.Table, retrieval: dict) -> BuiltIndex:
    """The previous version's index with the new rows appended (positions continue). New
    vectors go through the previous version's transform; with database-side augmentation each
    is augmented from its neighbours among the indexed vectors (a full build redoes them all)."""
    folder = index_dir(previous["model_key"], previous["version"])
    index = deserialize(store.read_bytes(f"{folder}/index.faiss"))
    params = IndexParams(**previous["params"])
    set_search_params(index, params)
    transform = load_folder_transform(store, folder)
    graph = load_folder_graph(store, folder)
    plain = load_folder_plain_vectors(store, folder)
    if len(new):
        new_plain = transform.apply(table_vectors(new))
        vectors, graph = _augment_new(index, new_plain, graph, retrieval)
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        if plain is not None:
            plain = np.concatenate([plain, new_plain.astype(plain.dtype)])
    old_map = store.read_parquet(f"{folder}/ids.parquet")
    partitions = sorted({p for p in new.column("partition").to_pylist()})
    where = image_locations(pa.concat_tables([store.read_parquet(manifest_path(p))
                                              for p in partitions])) if partitions else {}
    labels = {i: (names or [], probs or []) for i, names, probs in zip(
        *(new.column(c).to_pylist() for c in ("id", "labels", "label_probs")), strict=True)}
    added_map = _id_map(new.column("id").to_pylist(), where, labels, first=len(old_map))
    return BuiltIndex(index, pa.concat_tables([old_map, added_map.cast(old_map.schema)]), params,
                      float(previous["recall_at_10"]),
                      previous.get("recall_measured_on") or previous["version"],
                      int(previous["trained_count"]), previous["trained_version"], len(new), 0,
                      previous["model_version"], transform, graph, plain)


def _new_rows(store: ArtifactStore, previous: dict | None, shards: list[str]) -> pa.Table:
    """Rows of the shards the previous build did not include, minus ids it already holds
    (each id once, first shard wins), with a `partition` column."""
    columns = ["id", "vector", "model_version", "labels", "label_probs"]
    if previous is None or "shards" not in previous:
        return NO_NEW_ROWS
    done = set(previous["shards"])
    folder = index_dir(previous["model_key"], previous["version"])
    seen = set(store.read_parquet(f"{folder}/ids.parquet", columns=["id"]).column("id").to_pylist())
    parts = []
    for shard in shards:
        if shard in done:
            continue
        table = store.read_parquet(shard, columns=columns)
        keep = [i for i, image_id in enumerate(table.column("id").to_pylist())
                if image_id not in seen and not seen.add(image_id)]
        table = table.take(pa.array(keep, pa.int64()))
        key = shard.rsplit("/", 1)[-1].removesuffix(".parquet")
        parts.append(table.append_column("partition", pa.array([key] * len(table), pa.string())))
    if not parts:
        return NO_NEW_ROWS
    return pa.concat_tables(parts)


def _id_map(ids: list[str], where: dict[str, tuple[str, str]],
            labels: dict[str, tuple[list[str], list[float]]], first: int = 0) -> pa.Table:
    """Position in the index -> id, with the URI and path of the image's first file and its
    predicted classes (what text search reads when the model has no text tower)."""
    return pa.table({"position": pa.array(range(first, first + len(ids)), pa.int64()),
                     "id": pa.array(ids, pa.string()),
                     "uri": pa.array([where.get(i, ("", ""))[0] for i in ids], pa.string()),
                     "path": pa.array([where.get(i, ("", ""))[1] for i in ids], pa.string()),
                     "labels": pa.array([labels.get(i, ([], []))[0] for i in ids],
                                        pa.list_(pa.string())),
                     "label_probs": pa.array([labels.get(i, ([], []))[1] for i in ids],
                                             pa.list_(pa.float32()))})


def _latest_transform(store: ArtifactStore, model_key: str) -> VectorTransform:
    record = latest_transform(store, model_key)
    return load_folder_transform(store, record["folder"]) if record else VectorTransform()


def _retrieval_record(settings: PipelineSettings, transform: VectorTransform) -> dict:
    """What the build applies and what queries of it do. Types built shard by shard (and
    PQ codes, which hold no exact vectors) take the raw vectors and plain search."""
    retrieval = settings.retrieval
    if settings.index.index_type in SHARDED_TYPES:
        return {"transform": {"version": "none", "whitening_dims": 0},
                "database_augmentation_k": 0, "graph_k": 0,
                "query_plan": QueryPlan().__dict__,
                "note": f"{settings.index.index_type} is built by shards: no post-processing"}
    plan = retrieval.query_plan()
    graph_k = retrieval.rerank_k1 if plan.rerank != "none" else 0
    whitening_dims = transform.whitening.dims if transform.whitening else 0
    head_version = transform.head.version if transform.head else None
    return {"transform": {"version": transform.version, "whitening_dims": whitening_dims,
                          "head_version": head_version},
            "database_augmentation_k": retrieval.database_augmentation_k, "graph_k": graph_k,
            "query_plan": plan.__dict__}


def _augment_new(index, vectors: np.ndarray, graph: NeighbourGraph | None, retrieval: dict
                 ) -> tuple[np.ndarray, NeighbourGraph | None]:
    """New vectors augmented (DBA) from their neighbours among the indexed vectors, and their
    rows of the re-ranking graph."""
    dba_k = retrieval["database_augmentation_k"]
    if dba_k:
        scores, positions = search(index, vectors, dba_k)
        present = positions >= 0
        stored = index.reconstruct_batch(np.where(present, positions, 0).ravel())
        vectors = augment(vectors, stored.reshape(len(vectors), dba_k, -1),
                          np.where(present, scores, 0), retrieval["query_plan"]["expansion_alpha"])
    if graph is not None:
        scores, positions = search(index, vectors, graph.positions.shape[1])
        graph = NeighbourGraph(np.concatenate([graph.positions, positions.astype(np.int64)]),
                               np.concatenate([graph.scores, np.where(positions >= 0, scores, 0)
                                               .astype(np.float32)]))
    return vectors, graph

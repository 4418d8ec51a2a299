"""Building an index version: a full build (all vectors at once, or IVF types shard by shard),
or the previous version with the new vectors added; and writing its folder.

An index version's folder holds `index.faiss`, `ids.parquet` (position -> id, URI, path,
predicted classes), the transform's files, the re-ranking graph and the vectors before
database-side augmentation (when there are), and `build.json`, written last: a folder is whole
once it has it (`layout.latest_index_build` reads only whole ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from vsearch_pipeline.core.artifacts import (
    image_locations,
    live_ids,
    load_embeddings,
    load_folder_graph,
    load_folder_plain_vectors,
    load_folder_transform,
    load_labels,
    load_manifests,
)
from vsearch_pipeline.core.index import (
    IndexParams,
    build_index,
    deserialize,
    factory_string,
    recall_at_k,
    refill,
    resolve_params,
    search,
    serialize,
    set_search_params,
)
from vsearch_pipeline.core.index_plan import FULL, BuildPlan
from vsearch_pipeline.core.layout import (
    BUILD_FILE,
    BUILD_FORMAT,
    GRAPH_FILE,
    IDS_FILE,
    INDEX_FILE,
    PLAIN_VECTORS_FILE,
    artifact_key,
    embeddings_dir,
    index_dir,
    manifest_path,
)
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
from vsearch_pipeline.core.sources import SourceObject
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.vectors import Int8Rows, table_vectors

RECALL_K = 10
NO_NEW_ROWS = pa.table({"id": pa.array([], pa.string()), "model_version": pa.array([], pa.string()),
                        "labels": pa.array([], pa.list_(pa.string())),
                        "label_probs": pa.array([], pa.list_(pa.float32())),
                        "partition": pa.array([], pa.string())})  # every column add_new reads
NEW_ROW_COLUMNS = ["id", "vector", "model_version", "labels", "label_probs"]


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
    plain: Int8Rows | None = None  # the vectors before DBA, kept when they were augmented


@dataclass(frozen=True)
class ModelIdentity:
    """What a build record says of the model whose vectors it indexes."""

    name: str
    key: str
    pretrained: str | None
    view: str
    int8: bool


def embedding_shards(store: ArtifactStore, model_key: str) -> list[str]:
    """Every embeddings shard of the model; ValueError when there is none yet."""
    shards = store.list(embeddings_dir(model_key), ".parquet")
    if not shards:
        raise ValueError(f"no embeddings for model {model_key!r} yet")
    return shards


def incoming_model_version(new: pa.Table, previous: dict | None) -> str:
    """The model version of the new rows; the previous build's when nothing is new."""
    if len(new):
        return new.column("model_version")[0].as_py()
    return (previous or {}).get("model_version", "")


def retrieval_record(index_type: str, transform: VectorTransform, plan: QueryPlan,
                     database_augmentation_k: int, rerank_k1: int) -> dict:
    """What the build applies and what queries of it do. Types built shard by shard (and
    PQ codes, which hold no exact vectors) take the raw vectors and plain search."""
    if index_type in SHARDED_TYPES:
        return {"transform": {"version": "none", "whitening_dims": 0},
                "database_augmentation_k": 0, "graph_k": 0,
                "query_plan": QueryPlan().__dict__,
                "note": f"{index_type} is built by shards: no post-processing"}
    graph_k = rerank_k1 if plan.rerank != "none" else 0
    whitening_dims = transform.whitening.dims if transform.whitening else 0
    head_version = transform.head.version if transform.head else None
    return {"transform": {"version": transform.version, "whitening_dims": whitening_dims,
                          "head_version": head_version},
            "database_augmentation_k": database_augmentation_k, "graph_k": graph_k,
            "query_plan": plan.__dict__}


def full_build(store: ArtifactStore, model_key: str, params: IndexParams, recall_queries: int,
               listing: Sequence[SourceObject], version: str, transform: VectorTransform,
               retrieval: dict) -> BuiltIndex:
    """Train and fill from every shard, keeping only images the source still holds. IVF types
    are trained on a sample and filled shard by shard, never holding every vector at once.
    `layout.NoEmbeddingsError` when no vector of the model exists."""
    manifest = load_manifests(store)
    live = live_ids(manifest, listing)
    if params.index_type in SHARDED_TYPES:
        return full_build_by_shards(store, model_key, params, recall_queries, manifest, live,
                                    version)
    ids, vectors, model_version = load_embeddings(store, model_key)
    keep = np.array([i in live for i in ids], dtype=bool)
    removed = int((~keep).sum())
    ids = [i for i, k in zip(ids, keep, strict=True) if k]
    if not ids:
        raise ValueError("none of the embedded images is in the source any more")
    vectors = transform.apply(vectors[keep] if removed else vectors)  # no copy of them all
    params = resolve_params(params, len(ids), vectors.shape[1])
    index, vectors, plain = _augmented_index(vectors, params, retrieval)
    graph = None  # for re-ranking: neighbours among the vectors as indexed, augmented or not
    if retrieval["graph_k"]:
        graph = neighbour_graph(lambda q, k: search(index, q, k), vectors, retrieval["graph_k"])
    recall = recall_at_k(index, vectors, RECALL_K, recall_queries)
    id_map = make_id_map(ids, image_locations(manifest), load_labels(store, model_key))
    return BuiltIndex(index, id_map, params, recall, version, len(ids), version, len(ids),
                      removed, model_version, transform, graph, plain)


def _augmented_index(vectors: np.ndarray, params: IndexParams, retrieval: dict
                     ) -> tuple[faiss.Index, np.ndarray, Int8Rows | None]:
    """The index of `vectors`; with database-side augmentation, of the vectors augmented from
    their neighbours in the first index, which is then refilled with them (`index.refill`), not
    built a second time. Returns (index, the vectors as indexed, the vectors before augmentation
    or None)."""
    index = build_index(vectors, params)
    dba_k = retrieval["database_augmentation_k"]
    if not dba_k:
        return index, vectors, None
    near = neighbour_graph(lambda q, k: search(index, q, k), vectors, dba_k)
    augmented = augment_database(vectors, near.positions, near.scores,
                                 retrieval["query_plan"]["expansion_alpha"])
    return refill(index, augmented), augmented, Int8Rows.of(vectors)


def full_build_by_shards(store: ArtifactStore, model_key: str, params: IndexParams,
                         recall_queries: int, manifest: pa.Table, live: set[str],
                         version: str) -> BuiltIndex:
    """An IVF index trained on a sample and filled shard by shard, without the images the
    source no longer holds."""
    shards = store.list(embeddings_dir(model_key), ".parquet")
    embedded = {i for s in shards
                for i in store.read_parquet(s, columns=["id"]).column("id").to_pylist()}
    gone = embedded - live
    index, ids = build_ivf_by_shards(store, shards, params, exclude=gone)
    resolved = sharded_params(store, shards, params)
    recall = recall_by_shards(index, ids, store, shards, RECALL_K, recall_queries, exclude=gone)
    model_version = store.read_parquet(shards[-1], columns=["model_version"]).column(
        "model_version")[0].as_py()
    id_map = make_id_map(ids, image_locations(manifest), load_labels(store, model_key))
    return BuiltIndex(index, id_map, resolved, recall, version, len(ids), version, len(ids),
                      len(gone), model_version)


def add_new(store: ArtifactStore, previous: dict, new: pa.Table, retrieval: dict) -> BuiltIndex:
    """The previous version's index with the new rows appended (positions continue). New
    vectors go through the previous version's transform; with database-side augmentation each
    is augmented from its neighbours among the indexed vectors (a full build redoes them all)."""
    folder = index_dir(previous["model_key"], previous["version"])
    index = deserialize(store.read_bytes(f"{folder}/{INDEX_FILE}"))
    params = IndexParams(**previous["params"])
    set_search_params(index, params)
    transform = load_folder_transform(store, folder)
    graph = load_folder_graph(store, folder)
    plain = load_folder_plain_vectors(store, folder)
    if len(new):
        new_plain = transform.apply(table_vectors(new))
        vectors, graph = augment_new(index, new_plain, graph, retrieval)
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        if plain is not None:
            plain = plain.append(new_plain)
    old_map = store.read_parquet(f"{folder}/{IDS_FILE}")
    added_map = _new_rows_id_map(store, new, first=len(old_map))
    return BuiltIndex(index, pa.concat_tables([old_map, added_map.cast(old_map.schema)]), params,
                      float(previous["recall_at_10"]),
                      previous.get("recall_measured_on") or previous["version"],
                      int(previous["trained_count"]), previous["trained_version"], len(new), 0,
                      previous["model_version"], transform, graph, plain)


def _new_rows_id_map(store: ArtifactStore, new: pa.Table, first: int) -> pa.Table:
    """The id map of the new rows, from position `first` on: locations from their batches'
    manifests, predicted classes from the rows themselves."""
    partitions = sorted({p for p in new.column("partition").to_pylist()})
    where = image_locations(pa.concat_tables([store.read_parquet(manifest_path(p))
                                              for p in partitions])) if partitions else {}
    labels = {i: (names or [], probs or []) for i, names, probs in zip(
        *(new.column(c).to_pylist() for c in ("id", "labels", "label_probs")), strict=True)}
    return make_id_map(new.column("id").to_pylist(), where, labels, first=first)


def new_rows(store: ArtifactStore, previous: dict | None, shards: list[str]) -> pa.Table:
    """Rows of the shards the previous build did not include, minus ids it already holds
    (each id once, first shard wins), with a `partition` column."""
    if previous is None or "shards" not in previous:
        return NO_NEW_ROWS
    done = set(previous["shards"])
    folder = index_dir(previous["model_key"], previous["version"])
    seen = set(store.read_parquet(f"{folder}/{IDS_FILE}", columns=["id"]).column("id").to_pylist())
    parts = []
    for shard in shards:
        if shard in done:
            continue
        table = store.read_parquet(shard, columns=NEW_ROW_COLUMNS)
        keep = [i for i, image_id in enumerate(table.column("id").to_pylist())
                if image_id not in seen and not seen.add(image_id)]
        table = table.take(pa.array(keep, pa.int64()))
        key = artifact_key(shard)
        parts.append(table.append_column("partition", pa.array([key] * len(table), pa.string())))
    if not parts:
        return NO_NEW_ROWS
    return pa.concat_tables(parts)


def make_id_map(ids: list[str], where: dict[str, tuple[str, str]],
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


def augment_new(index: faiss.Index, vectors: np.ndarray, graph: NeighbourGraph | None,
                retrieval: dict) -> tuple[np.ndarray, NeighbourGraph | None]:
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


def build_record(built: BuiltIndex, *, version: str, model: ModelIdentity, plan: BuildPlan,
                 previous: dict | None, requested: dict, shards: list[str], retrieval: dict,
                 seconds: float, code_version: str) -> dict:
    """The build record (build.json): resolved parameters, mode, figures, what it came from."""
    return {"format": BUILD_FORMAT, "version": version, "model": model.name, "model_key": model.key,
            "model_version": built.model_version, "pretrained": model.pretrained,
            "view": model.view, "int8": model.int8,
            "dimension": int(built.index.d), "count": int(built.index.ntotal),
            "factory": factory_string(built.params, built.index.d),
            "params": built.params.as_dict(), "requested_params": requested,
            "mode": plan.mode, "reason": plan.reason,
            "base_version": previous["version"] if previous and plan.mode != FULL else None,
            "added": built.added, "removed": built.removed, "shards": shards,
            "trained_count": built.trained_count, "trained_version": built.trained_version,
            "recall_at_10": built.recall, "recall_measured_on": built.recall_version,
            "retrieval": retrieval,
            "build_seconds": round(seconds, 3), "code_version": code_version}


def write_index_version(store: ArtifactStore, folder: str, built: BuiltIndex, record: dict) -> None:
    """Every file of an index version, the build record last: a folder is whole once it has it."""
    store.write_parquet(f"{folder}/{IDS_FILE}", built.id_map)
    store.write_bytes(f"{folder}/{INDEX_FILE}", serialize(built.index))
    for name, data in built.transform.files().items():
        store.write_bytes(f"{folder}/{name}", data)
    if built.graph is not None:
        store.write_bytes(f"{folder}/{GRAPH_FILE}", built.graph.to_bytes())
    if built.plain is not None:
        store.write_bytes(f"{folder}/{PLAIN_VECTORS_FILE}", built.plain.to_bytes())
    store.write_json(f"{folder}/{BUILD_FILE}", record)

"""Finding and loading what the pipeline materialized, through the Dagster instance's records.

Shared by the evaluation asset, the `vsearch search` command and the search service: an index
is found by its materialization (never by guessing file names) and loaded with its id map and
build parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import faiss
import numpy as np
import pyarrow as pa
from dagster import AssetKey, DagsterInstance

from vsearch_pipeline.core.index import IndexParams, deserialize, search, set_search_params
from vsearch_pipeline.core.layout import (
    load_folder_graph,
    load_folder_plain_vectors,
    load_folder_transform,
)
from vsearch_pipeline.core.retrieval import (
    KReciprocalReranker,
    NeighbourGraph,
    QueryPlan,
    VectorTransform,
    ranked_search,
)
from vsearch_pipeline.core.storage import ArtifactStore

INDEX_ASSET = AssetKey("faiss_index")
CLUSTERS_ASSET = AssetKey("clusters")
DUPLICATES_ASSET = AssetKey("near_duplicate_groups")


@dataclass
class LoadedIndex:
    index: faiss.Index
    id_map: pa.Table
    build: dict
    transform: VectorTransform = field(default_factory=VectorTransform)
    graph: NeighbourGraph | None = None
    plain: np.ndarray | None = None  # (n, d) float16, the vectors before DBA; None: as stored

    @cached_property
    def query_plan(self) -> QueryPlan:
        return QueryPlan.from_record((self.build.get("retrieval") or {}).get("query_plan"))

    @cached_property
    def reranker(self) -> KReciprocalReranker | None:
        if self.query_plan.rerank == "none" or self.graph is None:
            return None
        return KReciprocalReranker(self.graph, self.query_plan.rerank_k1)

    def stored_vectors(self, positions: np.ndarray) -> np.ndarray:
        return self.index.reconstruct_batch(np.ascontiguousarray(positions, dtype=np.int64))

    def plain_vectors(self, positions: np.ndarray) -> np.ndarray:
        """Indexed vectors before database-side augmentation (in the transform's space)."""
        if self.plain is None:
            return self.stored_vectors(positions)
        return self.plain[np.asarray(positions, dtype=np.int64)].astype(np.float32)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the k best for vectors already in the index's space (model
        vectors through `transform`), with the build's query plan (expansion, re-ranking,
        near-duplicates first)."""
        return ranked_search(lambda q, n: search(self.index, q, n), self.stored_vectors,
                             vectors, k, self.query_plan, self.reranker, self.plain_vectors)

    @cached_property
    def ids(self) -> list[str]:
        return self.id_map.column("id").to_pylist()

    @cached_property
    def position_of(self) -> dict[str, int]:
        return {image_id: pos for pos, image_id in enumerate(self.ids)}

    @cached_property
    def ids_by_path(self) -> list[str]:
        """Every id, in the order of its file's path (how a gallery lists them)."""
        paths = self.paths
        return [self.ids[p] for p in sorted(range(len(paths)), key=lambda p: (paths[p] or "", p))]

    @cached_property
    def paths(self) -> list[str]:
        return self.id_map.column("path").to_pylist()

    @cached_property
    def labels(self) -> list[list[str]]:
        """Per position, the model's guesses of the image's ImageNet class, best first (none for
        a model without a classifier head)."""
        if "labels" not in self.id_map.column_names:
            return [[] for _ in self.ids]
        return [names or [] for names in self.id_map.column("labels").to_pylist()]

    def labels_of(self, image_id: str) -> list[str]:
        position = self.position_of.get(image_id)
        return self.labels[position] if position is not None else []

    @property
    def version(self) -> str:
        return self.build["version"]


def metadata_value(metadata: Mapping, key: str) -> str:
    entry = metadata[key]
    return getattr(entry, "value", entry)


def load_index_artifacts(store: ArtifactStore, metadata: Mapping) -> LoadedIndex:
    """The index, id map and build record named by a faiss_index materialization's metadata."""
    folder = metadata_value(metadata, "index_dir")
    build = store.read_json(f"{folder}/build.json")
    index = deserialize(store.read_bytes(f"{folder}/index.faiss"))
    id_map = store.read_parquet(f"{folder}/ids.parquet")
    if index.ntotal != len(id_map):
        raise ValueError(f"index {folder}: {index.ntotal} vectors but {len(id_map)} ids")
    params = IndexParams(**build["params"])
    set_search_params(index, params)
    if params.index_type == "ivf-flat":
        faiss.extract_index_ivf(index).make_direct_map()  # query expansion reads stored vectors
    return LoadedIndex(index, id_map, build, load_folder_transform(store, folder),
                       load_folder_graph(store, folder), load_folder_plain_vectors(store, folder))


def latest_index_metadata(instance: DagsterInstance) -> Mapping:
    event = instance.get_latest_materialization_event(INDEX_ASSET)
    if event is None or event.asset_materialization is None:
        raise LookupError("no faiss_index has been materialized yet: run `vsearch materialize`")
    return event.asset_materialization.metadata


def latest_metadata(instance: DagsterInstance, key: AssetKey) -> Mapping | None:
    """The metadata of an asset's latest materialization, or None when it has none."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    return event.asset_materialization.metadata


def index_metadata_by_version(instance: DagsterInstance, version: str, limit: int = 1000
                              ) -> Mapping:
    """The metadata of the faiss_index materialization with this version (for pinning)."""
    records = instance.fetch_materializations(INDEX_ASSET, limit=limit).records
    for record in records:
        metadata = record.asset_materialization.metadata
        if metadata_value(metadata, "version") == version:
            return metadata
    raise LookupError(f"no faiss_index materialization has version {version!r}")

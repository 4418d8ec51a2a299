"""Finding and loading what the pipeline wrote, from the records it keeps beside the artifacts.

Shared by the evaluation asset, the `vsearch search` command and the search service. An index
version is found by its build record (`build.json`, written last into its folder, so a folder
with one is whole), never by Dagster metadata: metadata is for people, and renaming a key there
must not break a reader. Clusters and near-duplicate groups are found as the newest file of
their folder (core.duplicate_groups.duplicates_rule reads how the groups were made).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa

from vsearch_pipeline.core import artifacts, layout
from vsearch_pipeline.core.retrieval import (
    KReciprocalReranker,
    NeighbourGraph,
    QueryPlan,
    VectorTransform,
    ranked_search,
)
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.vectors import Int8Rows


class NoIndexError(LookupError):
    """No complete index version of the model is in the storage yet (or none of that version)."""


@dataclass
class LoadedIndex:
    index: object  # a faiss.Index (faiss is imported when an index is loaded, not before)
    id_map: pa.Table
    build: dict
    transform: VectorTransform = field(default_factory=VectorTransform)
    graph: NeighbourGraph | None = None
    plain: Int8Rows | None = None  # the vectors before DBA (one byte a dimension); None: as stored

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
        return self.plain.rows(positions)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the k best for vectors already in the index's space (model
        vectors through `transform`), with the build's query plan (expansion, re-ranking,
        near-duplicates first)."""
        from vsearch_pipeline.core.index import search

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

    @property
    def folder(self) -> str:
        return layout.index_dir(self.build["model_key"], self.build["version"])


class ArtifactRecords:
    """What there is to serve in one storage: the index versions of one model, its newest
    clustering and the newest near-duplicate groups, as the pipeline's records name them."""

    def __init__(self, store: ArtifactStore, model_key: str) -> None:
        self.store, self.model_key = store, model_key

    def index_build(self, version: str | None = None) -> dict:
        """The build record of that version, or of the newest when version is None; LookupError
        when there is none."""
        if version is None:
            return latest_index(self.store, self.model_key)
        return index_of_version(self.store, self.model_key, version)

    def views(self) -> tuple[str | None, str | None, str | None]:
        """The newest clusters file, duplicate groups file and insight file (None where there
        is none)."""
        return (latest_clusters(self.store, self.model_key), latest_duplicates(self.store),
                latest_insight(self.store, self.model_key))


def latest_index(store: ArtifactStore, model_key: str) -> dict:
    """The build record of the newest complete index version of a model."""
    build = artifacts.latest_index_build(store, model_key)
    if build is None:
        raise NoIndexError(f"no index of model {model_key!r} in {store.root} yet: run "
                           "`vsearch materialize`")
    return checked_build(build)


def index_of_version(store: ArtifactStore, model_key: str, version: str) -> dict:
    """The build record of one index version of a model (for pinning)."""
    path = f"{layout.index_dir(model_key, version)}/{layout.BUILD_FILE}"
    if "/" in version or version in ("", ".", "..") or not store.exists(path):
        raise NoIndexError(f"no index of model {model_key!r} has version {version!r}")
    return checked_build(store.read_json(path))


def checked_build(build: dict) -> dict:
    found = build.get("format", 1)
    if found != layout.BUILD_FORMAT:
        raise ValueError(f"index {build.get('version')} has a build record of format {found}; "
                         f"this version of vsearch reads format {layout.BUILD_FORMAT}")
    return build


def load_index(store: ArtifactStore, build: dict) -> LoadedIndex:
    """The index, id map, transform, graph and plain vectors of the version `build` records."""
    import faiss

    from vsearch_pipeline.core.index import IndexParams, deserialize, set_search_params

    folder = layout.index_dir(build["model_key"], build["version"])
    index = deserialize(store.read_bytes(f"{folder}/{layout.INDEX_FILE}"))
    id_map = store.read_parquet(f"{folder}/{layout.IDS_FILE}")
    if index.ntotal != len(id_map):
        raise ValueError(f"index {folder}: {index.ntotal} vectors but {len(id_map)} ids")
    params = IndexParams(**build["params"])
    set_search_params(index, params)
    if params.index_type == "ivf-flat":
        faiss.extract_index_ivf(index).make_direct_map()  # query expansion reads stored vectors
    return LoadedIndex(index, id_map, build, artifacts.load_folder_transform(store, folder),
                       artifacts.load_folder_graph(store, folder),
                       artifacts.load_folder_plain_vectors(store, folder))


def latest_clusters(store: ArtifactStore, model_key: str) -> str | None:
    """The newest clustering of a model's vectors (`clusters/<model>/<version>.parquet`)."""
    files = store.list(f"{layout.CLUSTERS}/{model_key}", ".parquet")
    return files[-1] if files else None


def latest_insight(store: ArtifactStore, model_key: str) -> str | None:
    """The newest insight file of a model's vectors (`insight/<model>/<version>.parquet`)."""
    files = store.list(f"{layout.INSIGHT}/{model_key}", ".parquet")
    return files[-1] if files else None


def latest_duplicates(store: ArtifactStore) -> str | None:
    """The newest near-duplicate groups (`duplicates/<version>.parquet`)."""
    files = store.list(layout.DUPLICATES, ".parquet")
    return files[-1] if files else None

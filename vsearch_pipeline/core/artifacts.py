"""Reading what the pipeline wrote, shared by every consumer (the assets, the `vsearch` command
and the search service): manifests, embeddings, the records of transforms, heads and index
versions, grounding sets. Where each of them lives is `vsearch_pipeline.core.layout`'s."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vsearch_pipeline.core.grounding import ResolvedGrounding, parse_grounding, resolve_grounding
from vsearch_pipeline.core.layout import (
    BUILD_FILE,
    FLOAT16_PLAIN_VECTORS_FILE,
    GRAPH_FILE,
    HEAD_FILE,
    HEAD_RECORD_FILE,
    HEADS,
    INDEXES,
    MANIFESTS,
    PLAIN_VECTORS_FILE,
    TRANSFORM_RECORD_FILE,
    TRANSFORMS,
    embeddings_dir,
    manifest_path,
)
from vsearch_pipeline.core.manifest import complete_manifest
from vsearch_pipeline.core.retrieval import NeighbourGraph, ProjectionHead, VectorTransform
from vsearch_pipeline.core.sources import SourceObject
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.vectors import Int8Rows, table_vectors


def latest_transform(store: ArtifactStore, model_key: str) -> dict | None:
    """The record (transform.json) of the newest complete retrieval transform of a model."""
    return _latest_record(store, f"{TRANSFORMS}/{model_key}", TRANSFORM_RECORD_FILE)


def load_latest_transform(store: ArtifactStore, model_key: str) -> VectorTransform:
    """The newest complete transform of a model; the identity when none is fitted yet."""
    record = latest_transform(store, model_key)
    return load_folder_transform(store, record["folder"]) if record else VectorTransform()


def latest_head(store: ArtifactStore, model_key: str) -> dict | None:
    """The record (head.json) of the newest complete projection head trained for a model."""
    return _latest_record(store, f"{HEADS}/{model_key}", HEAD_RECORD_FILE)


def load_head(store: ArtifactStore, record: dict) -> ProjectionHead:
    return ProjectionHead.from_bytes(store.read_bytes(f"{record['folder']}/{HEAD_FILE}"))


def _latest_record(store: ArtifactStore, root: str, name: str) -> dict | None:
    """The record `name` of the newest version folder under `root` that has one: the record is
    written last, so a folder without it is an unfinished write."""
    for folder in reversed(store.list_folders(root)):
        if store.exists(f"{folder}/{name}"):
            return store.read_json(f"{folder}/{name}")
    return None


def load_folder_transform(store: ArtifactStore, folder: str) -> VectorTransform:
    """The transform whose files lie in `folder` (a transform's or an index version's)."""
    return VectorTransform.from_files(
        lambda name: store.read_bytes(f"{folder}/{name}") if store.exists(f"{folder}/{name}")
        else None)


def load_folder_graph(store: ArtifactStore, folder: str) -> NeighbourGraph | None:
    path = f"{folder}/{GRAPH_FILE}"
    return NeighbourGraph.from_bytes(store.read_bytes(path)) if store.exists(path) else None


def load_folder_plain_vectors(store: ArtifactStore, folder: str) -> Int8Rows | None:
    """The indexed vectors before DBA of an index version, when it augmented them (an older
    version's float16 file is read too)."""
    path = f"{folder}/{PLAIN_VECTORS_FILE}"
    if store.exists(path):
        return Int8Rows.from_bytes(store.read_bytes(path))
    older = f"{folder}/{FLOAT16_PLAIN_VECTORS_FILE}"
    return Int8Rows.of(np.load(io.BytesIO(store.read_bytes(older)))) if store.exists(older) else None


def latest_index_build(store: ArtifactStore, model_key: str) -> dict | None:
    """The build record (build.json) of the newest complete index version of a model."""
    return _latest_record(store, f"{INDEXES}/{model_key}", BUILD_FILE)


def manifest_partitions(store: ArtifactStore) -> list[str]:
    return [Path(p).stem for p in store.list(MANIFESTS, ".parquet")]


def load_manifests(store: ArtifactStore) -> pa.Table:
    """Every partition's manifest, with a `partition` column, in partition order."""
    tables = []
    for key in manifest_partitions(store):
        table = complete_manifest(store.read_parquet(manifest_path(key)))
        tables.append(table.append_column("partition", pa.array([key] * len(table))))
    if not tables:
        raise ValueError("no manifest partitions are materialized yet")
    return pa.concat_tables(tables)


def image_locations(manifest: pa.Table) -> dict[str, tuple[str, str]]:
    """Id -> (URI, path) of the first file with that content."""
    where: dict[str, tuple[str, str]] = {}
    for image_id, uri, path in zip(*(manifest.column(c).to_pylist() for c in ("id", "uri", "path")),
                                   strict=True):
        if image_id is not None:
            where.setdefault(image_id, (uri, path))
    return where


def live_ids(manifest: pa.Table, listing: Sequence[SourceObject]) -> set[str]:
    """Ids of usable files that the source still holds in the version the manifest read:
    a deleted file's image, or the old version of an overwritten one, is not live."""
    present = {(o.uri, o.version) for o in listing}
    columns = (manifest.column(c).to_pylist() for c in ("id", "uri", "version", "status"))
    return {i for i, uri, version, status in zip(*columns, strict=True)
            if status == "ok" and (uri, version) in present}


def reference_lookup(manifest: pa.Table) -> dict[str, str]:
    """Id, URI or relative path -> image id: how grounding sets and force_include name images."""
    lookup: dict[str, str] = {}
    ok = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    for image_id, uri, path in zip(*(ok.column(c).to_pylist() for c in ("id", "uri", "path")),
                                   strict=True):
        lookup.setdefault(image_id, image_id)
        lookup.setdefault(uri, image_id)
        lookup.setdefault(path, image_id)
    return lookup


class NoEmbeddingsError(ValueError):
    """The collection has no vector of this model: no file of any batch was embedded."""


def load_embeddings(store: ArtifactStore, model_key: str) -> tuple[list[str], np.ndarray, str]:
    """All shards of one model, each id once (first shard wins); and the model version.

    The vectors go into one array sized from the shards' footers, so that loading a million
    of them needs their own memory plus one shard's, not twice theirs."""
    shards = store.list(embeddings_dir(model_key), ".parquet")
    total = sum(store.parquet_rows(shard) for shard in shards)
    ids: list[str] = []
    seen: set[str] = set()
    vectors: np.ndarray | None = None
    model_version = ""
    for shard in shards:
        table = store.read_parquet(shard)
        if not len(table):
            continue
        model_version = table.column("model_version")[0].as_py()
        keep = pa.array([i for i, image_id in enumerate(table.column("id").to_pylist())
                         if image_id not in seen and not seen.add(image_id)], pa.int64())
        if not len(keep):  # a shard can hold only images that an earlier shard already has
            continue
        rows = table_vectors(table.take(keep) if len(keep) < len(table) else table)
        if vectors is None:
            vectors = np.empty((total, rows.shape[1]), np.float32)
        vectors[len(ids):len(ids) + len(rows)] = rows
        ids.extend(table.column("id").take(keep).to_pylist())
    if vectors is None:
        raise NoEmbeddingsError(f"no embeddings for model {model_key!r} yet: no file of any ingest "
                                f"batch was embedded (the manifest gives each file's status and "
                                f"reason)")
    return ids, vectors if len(ids) == total else vectors[:len(ids)].copy(), model_version


def load_labels(store: ArtifactStore, model_key: str
                ) -> dict[str, tuple[list[str], list[float]]]:
    """Id -> the predicted classes stored with its vector (best first) and their probabilities,
    where the model has a classifier head."""
    labels: dict[str, tuple[list[str], list[float]]] = {}
    for shard in store.list(embeddings_dir(model_key), ".parquet"):
        if "labels" not in store.read_parquet_schema(shard).names:  # written before labels were kept
            continue
        table = store.read_parquet(shard, columns=["id", "labels", "label_probs"])
        columns = (table.column(c).to_pylist() for c in ("id", "labels", "label_probs"))
        for image_id, names, probs in zip(*columns, strict=True):
            if names:
                labels.setdefault(image_id, (names, probs))
    return labels


def load_grounding_sets(paths: Sequence[str], manifest: pa.Table) -> list[ResolvedGrounding]:
    """Each grounding set file, read through fsspec and resolved to image ids."""
    lookup = reference_lookup(manifest)
    resolved = []
    for path in paths:
        with fsspec.open(path, "rb") as f:
            data = f.read()
        grounding = parse_grounding(Path(path).stem, data, path)
        resolved.append(resolve_grounding(grounding, lookup))
    return resolved

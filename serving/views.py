"""The clustering and the near-duplicate groups, as the service browses them and folds results by.

Both are the newest files the pipeline wrote (vsearch_pipeline.core.catalog finds them); either
may be missing, and then its endpoints say so and results are not folded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vsearch_pipeline.core.catalog import duplicates_threshold
from vsearch_pipeline.core.storage import ArtifactStore


@dataclass(frozen=True)
class CollectionViews:
    identity: tuple[str | None, str | None] = (None, None)  # (clusters, duplicates) artifacts
    phash: Mapping[str, int] = field(default_factory=dict)
    fold_threshold: int | None = None  # the pipeline's Hamming threshold; None: no duplicates yet
    duplicate_groups: list[list[str]] = field(default_factory=list)  # largest first
    cluster_members: Mapping[int, list[str]] = field(default_factory=dict)  # largest first
    noise: list[str] = field(default_factory=list)  # clustered as noise (label -1)


def load_views(store: ArtifactStore, clusters: str | None, duplicates: str | None
               ) -> CollectionViews:
    """Read the clusters file and the duplicate groups file (either may be None)."""
    members: dict[int, list[str]] = {}
    if clusters is not None:
        table = store.read_parquet(clusters)
        for image_id, label in zip(table.column("id").to_pylist(), table.column("label").to_pylist(),
                                   strict=True):
            members.setdefault(int(label), []).append(image_id)
    noise = members.pop(-1, [])
    phash: dict[str, int] = {}
    groups: dict[int, list[str]] = {}
    threshold = None
    if duplicates is not None:
        table = store.read_parquet(duplicates)
        columns = (table.column(c).to_pylist() for c in ("id", "phash", "group"))
        for image_id, value, group in zip(*columns, strict=True):
            phash[image_id] = value
            if group >= 0:
                groups.setdefault(group, []).append(image_id)
        threshold = duplicates_threshold(table)
    by_size = sorted(members.items(), key=lambda item: (-len(item[1]), item[0]))
    return CollectionViews(
        identity=(clusters, duplicates), phash=phash, fold_threshold=threshold,
        duplicate_groups=sorted(groups.values(), key=lambda g: (-len(g), g[0])),
        cluster_members=dict(by_size), noise=noise)

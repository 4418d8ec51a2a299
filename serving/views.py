"""The clustering and the near-duplicate groups, as the service browses them and folds results by.

Both are the newest files the pipeline wrote (vsearch_pipeline.core.catalog finds them); either
may be missing, and then its endpoints say so and results are not folded. The groups are the
pipeline's decision (`duplicates/<version>.parquet`), read as they are: the duplicates tab, the
folding of every result list and the tags given to a folded card all follow that one rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vsearch_pipeline.core.duplicate_groups import duplicates_rule, read_groups
from vsearch_pipeline.core.storage import ArtifactStore


@dataclass(frozen=True)
class CollectionViews:
    identity: tuple[str | None, str | None] = (None, None)  # (clusters, duplicates) artifacts
    duplicate_groups: list[list[str]] = field(default_factory=list)  # largest first
    group_of: Mapping[str, int] = field(default_factory=dict)  # id -> its group's place above
    duplicate_rule: dict | None = None  # what decided the groups; None: no groups file yet
    suggested_keepers: list[str | None] = field(default_factory=list)  # per group: the rule's
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
    ordered: list[list[str]] = []
    keepers: list[str | None] = []
    rule = None
    if duplicates is not None:
        table = store.read_parquet(duplicates)
        ordered, keepers = read_groups(table)
        rule = duplicates_rule(table)
    by_size = sorted(members.items(), key=lambda item: (-len(item[1]), item[0]))
    return CollectionViews(
        identity=(clusters, duplicates), duplicate_groups=ordered,
        group_of={i: number for number, group in enumerate(ordered) for i in group},
        duplicate_rule=rule, suggested_keepers=keepers, cluster_members=dict(by_size),
        noise=noise)

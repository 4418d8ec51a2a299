"""The clustering (with its map), the near-duplicate groups and the insight (odd ones, label
mistakes, quality flags), as the service browses them and folds results by.

Each is the newest file the pipeline wrote (vsearch_pipeline.core.catalog finds them); any
may be missing, and then its endpoints say so and results are not folded. The groups are the
pipeline's decision (`duplicates/<version>.parquet`), read as they are: the duplicates tab, the
folding of every result list and the tags given to a folded card all follow that one rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa

from vsearch_pipeline.core.duplicate_groups import duplicates_rule, read_groups
from vsearch_pipeline.core.storage import ArtifactStore


@dataclass(frozen=True)
class CollectionMap:
    """The clustering's map: every clustered image's place, and its cluster."""

    ids: list[str] = field(default_factory=list)
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    cluster: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Insight:
    """The insight asset's rows, as the odd-ones, label-mistake and quality views read them."""

    odd_ones: list[str] = field(default_factory=list)  # by outlier score, the oddest first
    scores: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # (outlier, uniqueness)
    label_mistakes: list[dict] = field(default_factory=list)  # most confident first
    labels: Mapping[str, str] = field(default_factory=dict)  # id -> label (folder or tag)
    quality_flags: Mapping[str, list[str]] = field(default_factory=dict)  # only flagged ids


@dataclass(frozen=True)
class CollectionViews:
    identity: tuple[str | None, ...] = (None, None, None)  # clusters, duplicates, insight
    duplicate_groups: list[list[str]] = field(default_factory=list)  # largest first
    group_of: Mapping[str, int] = field(default_factory=dict)  # id -> its group's place above
    duplicate_rule: dict | None = None  # what decided the groups; None: no groups file yet
    suggested_keepers: list[str | None] = field(default_factory=list)  # per group: the rule's
    cluster_members: Mapping[int, list[str]] = field(default_factory=dict)  # largest first
    noise: list[str] = field(default_factory=list)  # clustered as noise (label -1)
    map: CollectionMap = field(default_factory=CollectionMap)
    insight: Insight | None = None  # None: no insight file yet


def load_views(store: ArtifactStore, clusters: str | None, duplicates: str | None,
               insight: str | None = None) -> CollectionViews:
    """Read the clusters file, the duplicate groups file and the insight file (any may be
    None)."""
    members: dict[int, list[str]] = {}
    places = CollectionMap()
    if clusters is not None:
        table = store.read_parquet(clusters)
        ids, labels = table.column("id").to_pylist(), table.column("label").to_pylist()
        for image_id, label in zip(ids, labels, strict=True):
            members.setdefault(int(label), []).append(image_id)
        if "x" in table.column_names:  # clusterings before the map have no places
            places = CollectionMap(ids, table.column("x").to_pylist(),
                                   table.column("y").to_pylist(), labels)
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
        identity=(clusters, duplicates, insight), duplicate_groups=ordered,
        group_of={i: number for number, group in enumerate(ordered) for i in group},
        duplicate_rule=rule, suggested_keepers=keepers, cluster_members=dict(by_size),
        noise=noise, map=places,
        insight=read_insight(store.read_parquet(insight)) if insight is not None else None)


INSIGHT_COLUMNS = {"id", "outlier", "uniqueness", "label", "suggested_label", "label_confidence",
                   "label_flagged", "quality_flags"}


def read_insight(table: pa.Table) -> Insight | None:
    """The insight rows; None for a file written before these columns (the next run mends it)."""
    if not set(table.column_names) >= INSIGHT_COLUMNS:
        return None
    rows = table.to_pylist()
    odd = sorted(rows, key=lambda r: -r["outlier"])
    mistakes = sorted((r for r in rows if r["label_flagged"]),
                      key=lambda r: -r["label_confidence"])
    return Insight(
        odd_ones=[r["id"] for r in odd],
        scores={r["id"]: (r["outlier"], r["uniqueness"]) for r in rows},
        label_mistakes=[{"id": r["id"], "label": r["label"], "suggested": r["suggested_label"],
                         "confidence": round(r["label_confidence"], 3)} for r in mistakes],
        labels={r["id"]: r["label"] for r in rows if r["label"] is not None},
        quality_flags={r["id"]: r["quality_flags"] for r in rows if r["quality_flags"]})

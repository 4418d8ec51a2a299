"""The tables of the insight asset: one row per image (uniqueness, label review, cluster) and
one row per usable file (its quality figures and flags)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vsearch_pipeline.core.image_quality import QualityThresholds
from vsearch_pipeline.core.label_review import LabelReview
from vsearch_pipeline.core.manifest import QUALITY_COLUMNS
from vsearch_pipeline.core.uniqueness import Uniqueness


def collection_insight_table(ids: list[str], paths: list[str], scores: Uniqueness,
                             review: LabelReview, cluster_labels: np.ndarray,
                             quality: pa.Table) -> pa.Table:
    """One row per image; its quality flags are those of its first file in `quality`."""
    flags: dict[str, list[str]] = {}
    for image_id, found in zip(quality.column("id").to_pylist(),
                               quality.column("flags").to_pylist(), strict=True):
        flags.setdefault(image_id, found)
    return pa.table({
        "id": ids, "path": paths, "cluster": pa.array(cluster_labels, pa.int64()),
        "uniqueness": pa.array(scores.uniqueness, pa.float32()),
        "outlier": pa.array(scores.outlier, pa.float32()),
        "neighbour_distance": pa.array(scores.distance, pa.float32()),
        "label": pa.array(review.labels, pa.string()),
        "suggested_label": pa.array(review.suggested, pa.string()),
        "label_confidence": pa.array(review.confidence, pa.float32()),
        "own_label_share": pa.array(review.own_share, pa.float32()),
        "label_flagged": pa.array(review.flagged, pa.bool_()),
        "quality_flags": pa.array([flags.get(i, []) for i in ids], pa.list_(pa.string())),
    })


def quality_table(manifest: pa.Table, thresholds: QualityThresholds) -> pa.Table:
    """Every usable file with its quality figures and the flags the thresholds give them."""
    usable = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    table = usable.select(["id", "path", "partition", "format", "bytes", "width", "height",
                           *QUALITY_COLUMNS])
    flags = [thresholds.flags(row) for row in table.select(
        ["sharpness", "brightness", "width", "height"]).to_pylist()]
    return table.append_column("flags", pa.array(flags, pa.list_(pa.string())))

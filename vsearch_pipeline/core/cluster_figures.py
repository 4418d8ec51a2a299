"""The figures of a clustering beyond the overall ones: against each grounding set, keyed for
the drift check, and the largest clusters with example members."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vsearch_pipeline.core.grounding import ResolvedGrounding
from vsearch_pipeline.core.metrics import cluster_metrics

OVERALL_ONLY = ("silhouette", "n_clusters", "noise_share")  # not measured per grounding set


def grounding_figures(labels: np.ndarray, ids: list[str], grounding: ResolvedGrounding
                      ) -> dict[str, float]:
    """Purity, adjusted Rand index, NMI and coverage of the labels against one grounding set."""
    figures = cluster_metrics(None, labels, grounding.labels_for(ids))
    return {k: v for k, v in figures.items() if k not in OVERALL_ONLY}


def keyed_figures(overall: dict[str, float], per_set: Sequence[dict]) -> dict[str, float]:
    """Overall figures by name and each grounding set's as `<grounding set>:<name>`: how the
    drift check compares runs (`MetricsDB.previous_cluster_figures` reads them so)."""
    return {**overall, **{f"{r['grounding_set']}:{k}": v for r in per_set
                          for k, v in r.items() if k != "grounding_set"}}


def largest_clusters(labels: np.ndarray, ids: list[str], where: dict[str, tuple[str, str]],
                     limit: int = 15, examples: int = 4) -> list[dict]:
    """The `limit` largest clusters, each with the paths of its first members (an id without a
    file stands for itself)."""
    found = labels[labels >= 0]
    if not len(found):
        return []
    sizes = np.bincount(found)
    rows = []
    for label in np.argsort(-sizes, kind="stable")[:limit]:
        members = [where.get(ids[i], ("", ids[i]))[1]
                   for i in np.flatnonzero(labels == label)[:examples]]
        rows.append({"label": int(label), "size": int(sizes[label]),
                     "examples": ", ".join(members)})
    return rows

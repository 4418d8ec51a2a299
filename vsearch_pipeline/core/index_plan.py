"""Whether the next index is a full build or the previous index with the new vectors added.

Adding is cheap and gives exactly the index a full build would for `flat`, and the same
graph-insertion for `hnsw`. For `ivf-*` the centroids (and PQ codebooks) were trained on the
collection as it was, so once the collection has grown past `rebuild_growth_ratio` of what they
were trained on, they are trained again. A full build also drops images no longer in the source.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL = "full"
INCREMENTAL = "incremental"


@dataclass(frozen=True)
class BuildPlan:
    mode: str
    reason: str


def plan_build(previous: dict | None, requested_params: dict, model_version: str,
               new_vectors: int, growth_ratio: float, full_requested: bool,
               retrieval: dict | None = None) -> BuildPlan:
    """Decide from the previous build's record (its build.json) and what changed since."""
    if previous is None:
        return BuildPlan(FULL, "no earlier index of this model")
    if full_requested:
        return BuildPlan(FULL, "full rebuild requested (schedule or run config)")
    if "shards" not in previous or "requested_params" not in previous:
        return BuildPlan(FULL, "the earlier index was built before incremental updates")
    if previous["model_version"] != model_version:
        return BuildPlan(FULL, f"model version changed ({previous['model_version']} -> {model_version})")
    if previous["requested_params"] != requested_params:
        return BuildPlan(FULL, "index parameters changed")
    if previous.get("retrieval") != retrieval:
        return BuildPlan(FULL, "the retrieval transform or settings changed")
    trained = max(int(previous["trained_count"]), 1)
    grown = (int(previous["count"]) + new_vectors) / trained - 1
    if grown > growth_ratio:
        return BuildPlan(FULL, f"the collection grew {grown:.0%} since the index was trained on "
                               f"{trained} vectors (limit {growth_ratio:.0%})")
    return BuildPlan(INCREMENTAL, f"{new_vectors} new vectors added to {previous['version']}")

"""Did the clustering change more than expected since the previous run?

Shares (noise share, silhouette, purity, adjusted Rand, NMI, coverage) drift when they move by
more than `tolerance` in absolute terms; the number of clusters when it changes by more than
`tolerance` relative to the previous count. A growing collection moves these slowly; a jump
means the data or the settings changed under the clusters (a bad batch, a new model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

RELATIVE = ("n_clusters",)


def drifted(previous: Mapping[str, float], current: Mapping[str, float], tolerance: float
            ) -> list[dict]:
    """One row per figure present in both runs: before, after, change, and whether it drifted."""
    rows = []
    for name in sorted(set(previous) & set(current)):
        before, after = float(previous[name]), float(current[name])
        if math.isnan(before) or math.isnan(after):
            continue
        scale = max(abs(before), 1.0) if name in RELATIVE else 1.0
        change = abs(after - before) / scale
        rows.append({"metric": name, "previous": before, "current": after,
                     "change": round(change, 4), "drifted": change > tolerance})
    return rows

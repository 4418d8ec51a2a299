"""Figures of per-partition steps, queued in artifact storage until the collection step files
them into DuckDB.

Per-partition steps may run on other machines (a Dask or Kubernetes executor) that cannot open
the DuckDB file on the machine that owns it. So they write each record as a small JSON file
under `metrics/queue/`, which every worker can reach, and the collection assets, which run
where the DuckDB file is, move the queue into the tables. Filing a record twice is harmless:
its rows replace those with the same run, asset and partition.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import uuid
from collections.abc import Mapping

from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import MetricsDB

QUEUE = "metrics/queue"


def queue_metrics(store: ArtifactStore, kind: str, run: Mapping[str, str | None],
                  keys: Mapping[str, object], metrics: Mapping[str, float]) -> str:
    recorded_at = dt.datetime.now(dt.UTC)
    name = f"{recorded_at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.json"
    path = posixpath.join(QUEUE, name)
    store.write_json(path, {"kind": kind, "run": dict(run), "keys": dict(keys),
                            "metrics": {k: float(v) for k, v in metrics.items()},
                            "recorded_at": recorded_at.replace(tzinfo=None).isoformat()})
    return path


def file_queued_metrics(store: ArtifactStore, db: MetricsDB) -> int:
    """Move every queued record into DuckDB; returns how many were filed."""
    filed = 0
    for path in store.list(QUEUE, ".json"):
        try:
            record = store.read_json(path)
        except FileNotFoundError:  # filed by a concurrent step in the meantime
            continue
        db.record_metrics(record["kind"], record["run"], record["keys"], record["metrics"],
                          recorded_at=dt.datetime.fromisoformat(record["recorded_at"]),
                          replace=True)
        store.delete(path)
        filed += 1
    return filed

"""Ingest batches: the frozen file lists that partitions are made of.

A batch is written once, as `batches/<key>.json`, before its partition exists, so that its
manifest is the same however often it is computed. The command line and the sensors both
record batches here, and both skip a file whose URI and version are already in a batch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from vsearch_pipeline.core.layout import BATCHES, batch_path
from vsearch_pipeline.core.sources import SourceObject
from vsearch_pipeline.core.storage import ArtifactStore


def stored_batches(store: ArtifactStore) -> dict[str, dict]:
    return {Path(p).stem: store.read_json(p) for p in store.list(BATCHES, ".json")}


def known_versions(batches: dict[str, dict]) -> set[tuple[str, str]]:
    return {(o["uri"], o["version"]) for b in batches.values() for o in b["objects"]}


def unbatched(objects: Sequence[SourceObject], batches: dict[str, dict]) -> list[SourceObject]:
    """The objects whose URI and version no batch holds yet."""
    known = known_versions(batches)
    return [o for o in objects if (o.uri, o.version) not in known]


def batch_key(number: int) -> str:
    return f"b{number:05d}"


def record_batch(store: ArtifactStore, key: str, objects: Sequence[SourceObject],
                 source_uri: str, trigger: str) -> str:
    """Freeze a batch's file list under `key`; `trigger` says what found the files."""
    store.write_json(batch_path(key), {
        "key": key, "source": source_uri, "trigger": trigger,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "objects": [asdict(o) for o in objects],
    })
    return key


def batch_objects(store: ArtifactStore, key: str) -> list[SourceObject]:
    return [SourceObject(**o) for o in store.read_json(batch_path(key))["objects"]]

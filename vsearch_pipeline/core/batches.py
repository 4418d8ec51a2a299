"""Ingest batches: the frozen file lists that partitions are made of.

A batch is written once, as `batches/<key>.json`, before its partition exists, so that its
manifest is the same however often it is computed. The command line and the sensors both
record batches here, and both skip a file whose URI and version are already in a batch.

A batch file is read by whatever version of vsearch runs later, so nothing in one may block a
run: an entry written by an earlier version with a raw non-UTF-8 name is read in the recorded
form (`core.names`), the form the listing gives now, so the file is neither lost nor taken
twice; an entry this code cannot use becomes an `UnusableEntry` (a manifest row `unreadable`,
with the reason) and the rest of the batch goes on; a batch file that cannot be read at all
keeps its key, and its files, known to no batch any more, come in again with the next batch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from vsearch_pipeline.core.layout import BATCHES, batch_path
from vsearch_pipeline.core.names import recorded_path, recorded_uri, text_safe
from vsearch_pipeline.core.sources import SourceObject
from vsearch_pipeline.core.storage import ArtifactStore


@dataclass(frozen=True)
class UnusableEntry:
    """An entry of a batch file that this code cannot use, and why."""

    uri: str
    path: str
    version: str
    reason: str
    size: int = 0


BatchEntry = SourceObject | UnusableEntry


def stored_batches(store: ArtifactStore) -> dict[str, dict]:
    """Every stored batch record by key; one that cannot be read has no objects and says why
    under `unreadable`."""
    return {Path(p).stem: _read_batch(store, p) for p in store.list(BATCHES, ".json")}


def _read_batch(store: ArtifactStore, relpath: str) -> dict:
    try:
        batch = store.read_json(relpath)
    except ValueError as err:  # not JSON, or not UTF-8
        return {"objects": [], "unreadable": f"the batch file {relpath} is not JSON ({err})"}
    if not isinstance(batch, dict) or not isinstance(batch.get("objects"), list):
        return {"objects": [], "unreadable": f"the batch file {relpath} holds no list of objects"}
    return batch


def batch_entries(batch: dict) -> list[BatchEntry]:
    """The files of a batch record, their names in the recorded form."""
    return [_entry(raw) for raw in batch["objects"]]


def _entry(raw: object) -> BatchEntry:
    try:
        return SourceObject(uri=recorded_uri(_text(raw, "uri")), path=recorded_path(_text(raw, "path")),
                            size=int(raw["size"]), version=str(raw["version"]),
                            modified=float(raw.get("modified") or 0.0))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        why = f"{type(err).__name__}: {err}"
        return UnusableEntry(_salvaged(raw, "uri"), _salvaged(raw, "path"),
                             _salvaged(raw, "version"),
                             text_safe(f"this entry of the batch file cannot be used ({why}); "
                                       f"it was written by another version of vsearch, or "
                                       f"damaged"))


def _text(raw: dict, key: str) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is a {type(value).__name__}, not text")
    return value


def _salvaged(raw: object, key: str) -> str:
    """What an unusable entry says for `key`, as safe text ('' when it says nothing)."""
    value = raw.get(key) if isinstance(raw, dict) else None
    return "" if value is None else text_safe(str(value))


def known_versions(batches: dict[str, dict]) -> set[tuple[str, str]]:
    return {(o.uri, o.version) for b in batches.values() for o in batch_entries(b)
            if isinstance(o, SourceObject)}


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


def batch_objects(store: ArtifactStore, key: str) -> list[BatchEntry]:
    """The files of one batch; a batch file that cannot be read is one unusable entry."""
    relpath = batch_path(key)
    batch = _read_batch(store, relpath)
    if "unreadable" in batch:
        return [UnusableEntry(store.uri(relpath), relpath, "", batch["unreadable"])]
    return batch_entries(batch)

"""Backing up and restoring a home: a consistent copy, taken while the pipeline and the service run.

How each part of a home is copied:

- `dagster/`, the Dagster instance: each SQLite file (`*.db`) through SQLite's online backup API,
  which copies a consistent snapshot while runs write; every other file as it is. (An instance on
  PostgreSQL is backed up with `pg_dump`; only its local files are copied here.)
- `*.duckdb` (figures, hashes, groups; tags, search log, clicks): copied while this process holds
  a read-only connection. DuckDB grants one only while no process has the file open for writing,
  and keeps writers out until it is closed; the pipeline and the service wait and retry
  (`MetricsDB`), so the copy is a committed state.
- `artifacts/`: every artifact is written once under a hidden temporary name and renamed into
  place, never changed afterwards; the copy takes the named files and skips the temporary ones.
- the other files of the home (`vsearch.yaml`, `serving_pin`, a keys file kept there): as they are.

The order is the instance, then the DuckDB files, then the artifacts. A materialization is
recorded in the instance only after its files are written, so every version the copied instance
knows has all its files in the copy. `backup.json` lists every file copied, with its size.

A restore copies a backup back into a home that does not exist yet (or is empty), at the path the
backup was taken from: the instance records each version's storage root by its absolute path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from vsearch_pipeline.core.layout import ARTIFACTS_DIR, INSTANCE_DIR
from vsearch_pipeline.core.store import MetricsDB

MANIFEST = "backup.json"


def backup_home(home: Path, dest: Path, storage_root: str,
                say: Callable[[str], None] = print) -> dict:
    """Copy `home` (and its artifacts at `storage_root`) into the new folder `dest`; returns the
    backup's manifest (also written to `dest/backup.json`)."""
    home, dest = home.resolve(), dest.resolve()
    if not (home / INSTANCE_DIR).is_dir():
        raise FileNotFoundError(f"{home} is not a vsearch home (no {INSTANCE_DIR}/ in it)")
    _require_empty(dest, "backup destination")
    dest.mkdir(parents=True, exist_ok=True)
    copied: list[dict] = []
    copied += _copy_instance(home / INSTANCE_DIR, dest / INSTANCE_DIR)
    say(f"instance: {len(copied)} files")
    databases = sorted(home.glob("*.duckdb"))
    for database in databases:
        copied += _copy_duckdb(database, dest / database.name)
    say(f"DuckDB: {', '.join(d.name for d in databases) or 'none'}")
    copied += _copy_loose_files(home, dest)
    artifacts_inside = _is_local(storage_root) and Path(storage_root).resolve() == home / ARTIFACTS_DIR
    if artifacts_inside:
        artifacts = _copy_tree(home / ARTIFACTS_DIR, dest / ARTIFACTS_DIR)
        say(f"artifacts: {len(artifacts)} files, {sum(f['bytes'] for f in artifacts)} bytes")
        copied += artifacts
    else:
        say(f"artifacts at {storage_root} are outside the home and not copied: back them up "
            "where they live (a versioned bucket, or a copy of that folder)")
    manifest = {"home": str(home), "storage_root": storage_root,
                "artifacts_copied": artifacts_inside,
                "taken_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "files": [{**f, "path": os.path.relpath(f["path"], dest)} for f in copied]}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def restore_home(backup: Path, home: Path | None = None, say: Callable[[str], None] = print) -> Path:
    """Copy a backup into `home` (default: where it was taken from), which must not hold anything
    yet; every file is checked against the backup's manifest first. Returns the home."""
    backup = backup.resolve()
    manifest = json.loads((backup / MANIFEST).read_text())
    home = (home or Path(manifest["home"])).resolve()
    if str(home) != manifest["home"] and manifest["artifacts_copied"]:
        raise ValueError(f"this backup was taken from {manifest['home']}: restore it there (move "
                         f"what is there aside first); its index versions record their files by "
                         f"that path, so a copy at {home} would not find them")
    _require_empty(home, "home to restore into")
    missing = [f["path"] for f in manifest["files"]
               if not (backup / f["path"]).is_file() or (backup / f["path"]).stat().st_size != f["bytes"]]
    if missing:
        raise ValueError(f"the backup at {backup} is damaged: {len(missing)} files missing or of "
                         f"the wrong size, e.g. {missing[:5]}")
    for entry in manifest["files"]:
        target = home / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(backup / entry["path"], target)
    say(f"restored {len(manifest['files'])} files into {home} (backup taken {manifest['taken_at']})")
    return home


def _copy_instance(source: Path, dest: Path) -> list[dict]:
    """SQLite files through the online backup API (their -wal/-shm/-journal files are already in
    what it copies), every other file as it is."""
    def copy(path: Path, target: Path) -> bool:
        if path.name.endswith(("-wal", "-shm", "-journal")):
            return False
        if path.suffix == ".db":
            _copy_sqlite(path, target)
        else:
            shutil.copy2(path, target)
        return True

    return _copy_tree(source, dest, copy)


def _copy_sqlite(source: Path, target: Path) -> None:
    with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src, \
            contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def _copy_duckdb(source: Path, target: Path) -> list[dict]:
    with MetricsDB(str(source)).connect(read_only=True):
        shutil.copy2(source, target)
        wal = source.with_name(source.name + ".wal")
        if wal.exists():
            shutil.copy2(wal, target.with_name(target.name + ".wal"))
            return [_entry(target), _entry(target.with_name(target.name + ".wal"))]
    return [_entry(target)]


def _copy_loose_files(home: Path, dest: Path) -> list[dict]:
    copied = []
    for path in sorted(home.iterdir()):
        if path.is_file() and not path.name.startswith(".") and ".duckdb" not in path.name:
            shutil.copy2(path, dest / path.name)
            copied.append(_entry(dest / path.name))
    return copied


def _copy_tree(source: Path, dest: Path,
               copy: Callable[[Path, Path], bool] = lambda p, t: shutil.copy2(p, t) is not None
               ) -> list[dict]:
    """Every file under `source` (hidden ones left out) to the same place under `dest` by
    `copy(path, target)`, which returns whether it copied the file."""
    copied = []
    for path in _files(source):
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy(path, target):
            copied.append(_entry(target))
    return copied


def _files(root: Path) -> Iterator[Path]:
    """Every file under root, hidden ones (temporary names of writes in progress) left out."""
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(folder) / name


def _entry(path: Path) -> dict:
    return {"path": str(path), "bytes": path.stat().st_size}


def _require_empty(path: Path, what: str) -> None:
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"the {what} {path} is not empty: give a new folder")


def _is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")

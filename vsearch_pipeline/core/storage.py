"""Local folders and S3 prefixes behind one interface (fsspec), with writes that are never half-done.

A reader must never see a partly written artifact: local files are written under a temporary
name and renamed into place; an S3 PUT is atomic by itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def storage_options(uri: str, endpoint_url: str | None) -> dict[str, Any]:
    """fsspec options for a URI: the S3 endpoint (any S3-compatible server) when one is set."""
    if uri.startswith("s3://") and endpoint_url:
        return {"endpoint_url": endpoint_url}
    return {}


def filesystem(uri: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the protocol-less root path for a local path or an s3:// URI."""
    fs, root = fsspec.core.url_to_fs(uri, **storage_options(uri, endpoint_url))
    return fs, root.rstrip("/")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol or "local" in fs.protocol


def write_atomically(path: str, data: bytes) -> None:
    """Write a local file under a hidden temporary name beside it, then rename it into place.

    The temporary name starts with a dot, so a source listing running meanwhile skips it, and it
    is in the same folder, so the rename is atomic (same filesystem). The data is on disk before
    the rename and the rename before this returns (the folder is synced too), so after a crash
    or power loss the file holds either its old or its new content. A failed write (a full
    disk) leaves the old file as it was and no temporary file, and its error names the file.
    """
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.part-{uuid.uuid4().hex}")
    try:
        os.makedirs(folder or ".", exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_folder(folder or ".")
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), path) from err  # "...: '<path>'"
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _sync_folder(folder: str) -> None:
    """Make a rename in `folder` durable (POSIX needs the folder itself synced for that)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ArtifactStore:
    """Where the pipeline's files live: a local folder or an s3:// prefix."""

    root: str
    endpoint_url: str | None = None
    fs: fsspec.AbstractFileSystem = field(init=False, repr=False)
    base: str = field(init=False)

    def __post_init__(self) -> None:
        self.fs, self.base = filesystem(self.root, self.endpoint_url)

    def path(self, relpath: str) -> str:
        return posixpath.join(self.base, relpath)

    def uri(self, relpath: str) -> str:
        """Full URI of an artifact, as recorded in metadata."""
        path = self.path(relpath)
        return path if is_local(self.fs) else f"{self.fs.protocol[0]}://{path}"

    def exists(self, relpath: str) -> bool:
        return self.fs.exists(self.path(relpath))

    def list(self, relpath: str, suffix: str = "") -> list[str]:
        """Relative paths of the files directly under a folder, sorted."""
        names = self._entries(relpath, "file")
        return sorted(posixpath.join(relpath, n) for n in names if n.endswith(suffix))

    def list_folders(self, relpath: str) -> list[str]:
        """Relative paths of the folders directly under a folder, sorted."""
        return sorted(posixpath.join(relpath, n) for n in self._entries(relpath, "directory"))

    def _entries(self, relpath: str, kind: str) -> list[str]:
        folder = self.path(relpath)
        self.fs.invalidate_cache(folder)  # another process may have written since
        if not self.fs.exists(folder):
            return []
        entries = self.fs.ls(folder, detail=True)
        return [posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == kind]

    def write_bytes(self, relpath: str, data: bytes) -> str:
        path = self.path(relpath)
        if not is_local(self.fs):
            self.fs.pipe_file(path, data)
            return self.uri(relpath)
        write_atomically(path, data)
        return self.uri(relpath)

    def delete(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(relpath))

    def read_bytes(self, relpath: str) -> bytes:
        return self.fs.cat_file(self.path(relpath))

    def write_json(self, relpath: str, value: Any) -> str:
        return self.write_bytes(relpath, json.dumps(value, indent=2, sort_keys=True).encode())

    def read_json(self, relpath: str) -> Any:
        return json.loads(self.read_bytes(relpath))

    def write_parquet(self, relpath: str, table: pa.Table) -> str:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        return self.write_bytes(relpath, buffer.getvalue())

    def read_parquet(self, relpath: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(relpath)), columns=columns)

    def read_parquet_schema(self, relpath: str) -> pa.Schema:
        with self.fs.open(self.path(relpath), "rb") as f:
            return pq.read_schema(f)

    def parquet_rows(self, relpath: str) -> int:
        """Rows of a Parquet artifact, from its footer alone."""
        with self.fs.open(self.path(relpath), "rb") as f:
            return pq.read_metadata(f).num_rows

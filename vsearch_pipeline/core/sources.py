"""Listing and reading the images under a source: a local folder or an s3:// prefix."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from vsearch_pipeline.core.storage import filesystem, is_local


@dataclass(frozen=True)
class SourceObject:
    """One file under a source. `version` changes when the file is overwritten."""

    uri: str
    path: str  # relative to the source root, with forward slashes
    size: int
    version: str
    modified: float = 0.0  # seconds since the epoch: local mtime, or S3 LastModified


def _version(info: dict) -> str:
    for key in ("ETag", "etag", "VersionId"):
        if info.get(key):
            return str(info[key]).strip('"')
    return f"{info.get('size', 0)}-{info.get('mtime', info.get('LastModified', ''))}"


def _modified(info: dict) -> float:
    if info.get("mtime") is not None:
        return float(info["mtime"])
    stamp = info.get("LastModified")
    return stamp.timestamp() if hasattr(stamp, "timestamp") else 0.0


def _is_hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def list_source(uri: str, endpoint_url: str | None = None) -> list[SourceObject]:
    """Every file under the source, recursively, sorted by path. Hidden files are skipped."""
    fs, root = filesystem(uri, endpoint_url)
    fs.invalidate_cache()  # objects may have been added by another client since last time
    if not fs.exists(root):
        raise FileNotFoundError(f"source {uri!r} does not exist")
    found = fs.find(root, detail=True)
    prefix = "" if is_local(fs) else f"{fs.protocol[0]}://"
    objects = []
    for full, info in found.items():
        if info.get("type") == "directory":
            continue
        rel = posixpath.relpath(full, root)
        if _is_hidden(rel):
            continue
        size = int(info.get("size") or 0)
        objects.append(SourceObject(prefix + full, rel, size, _version(info), _modified(info)))
    return sorted(objects, key=lambda o: o.path)


def read_object(uri: str, endpoint_url: str | None = None) -> bytes:
    fs, path = filesystem(uri, endpoint_url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        # s3fs sizes a file from its cached folder listing, which misses files added since
        fs.invalidate_cache(posixpath.dirname(path))
        return fs.cat_file(path)


def read_head(uri: str, size: int, endpoint_url: str | None = None) -> bytes:
    """The first `size` bytes of a file (one ranged GET on S3): enough to sniff its format."""
    fs, path = filesystem(uri, endpoint_url)
    return fs.cat_file(path, start=0, end=size)

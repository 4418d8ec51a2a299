"""Listing and reading the images under a source: a local folder or an s3:// prefix.

A local folder is listed defensively, because whatever it holds must end in the manifest as usable
or with its reason, and never hang or crash the listing: a symlink to a file is listed (read
through the link, versioned by its target); a symlink to a folder is not followed (it could loop,
or lead out of the collection); a dangling or looping symlink, a folder that cannot be listed and a
special file (a named pipe, a device) are listed so that reading them fails with the reason.

A name that is not valid UTF-8 is listed in its recorded form (`core.names`: its undecodable
bytes percent-escaped, the URI marked `file://`), and `read_object` and `read_head` open the
exact original file for it; nothing else ever sees the raw name.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass

import botocore.exceptions

from vsearch_pipeline.core.names import opened_uri, recorded_path, recorded_uri
from vsearch_pipeline.core.storage import filesystem, is_local


@dataclass(frozen=True)
class SourceObject:
    """One file under a source. `version` changes when the file is overwritten. `uri` and
    `path` are in their recorded form (valid text; see `core.names`)."""

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
    if is_local(fs):
        return sorted(_list_local(root), key=lambda o: o.path)
    prefix = f"{fs.protocol[0]}://"
    objects = []
    for full, info in fs.find(root, detail=True).items():
        if info.get("type") == "directory":
            continue
        rel = posixpath.relpath(full, root)
        if _is_hidden(rel):
            continue
        size = int(info.get("size") or 0)
        objects.append(SourceObject(recorded_uri(prefix + full), recorded_path(rel), size,
                                    _version(info), _modified(info)))
    return sorted(objects, key=lambda o: o.path)


def _list_local(root: str) -> list[SourceObject]:
    """Every non-hidden entry under a local folder that is not a folder, plus the folders that
    could not be listed (no permission): those are entries of their own rather than left out in
    silence. Symlinked folders are not entered."""
    objects: list[SourceObject] = []

    def unlisted(err: OSError) -> None:
        if err.filename is None or os.path.samefile(err.filename, root):
            raise err
        objects.append(_local_object(root, os.fspath(err.filename)))

    for folder, dirs, files in os.walk(root, onerror=unlisted):
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and not os.path.islink(os.path.join(folder, d))]
        objects += [_local_object(root, os.path.join(folder, f)) for f in files
                    if not f.startswith(".")]
    return objects


def _local_object(root: str, path: str) -> SourceObject:
    """A local entry, through a symlink to its target's size and time (a changed target is a new
    version); a dangling or looping link is described by the link itself."""
    try:
        info = os.stat(path)
    except OSError:
        info = os.lstat(path)
    rel = posixpath.relpath(path, root)
    return SourceObject(recorded_uri(path), recorded_path(rel), info.st_size,
                        f"{info.st_size}-{info.st_mtime}", info.st_mtime)


def _check_regular_file(path: str, uri: str) -> None:
    """Refuse what is not a regular file before opening it: reading a named pipe would wait
    forever, a device could be endless, and a folder here is one whose files could not be
    listed. Messages name the file by its recorded `uri`."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"a folder whose files could not be listed "
                                f"(check its permissions): {uri}")
    if not stat.S_ISREG(mode):
        raise OSError(f"not a regular file (a named pipe, socket or device): {uri}")


# Network failures and timeouts (several of which are OSErrors, as a corrupt file's error is)
UNREACHABLE = (TimeoutError, ConnectionError, botocore.exceptions.ConnectionError,
               botocore.exceptions.HTTPClientError)


class SourceUnreachableError(RuntimeError):
    """The source did not answer (a network error or a timeout, after the client's own retries).

    Not an OSError on purpose: readers record an OSError as the file's fault (`unreadable` in the
    manifest, which is never rewritten; skipped by the sensor), but an outage is nobody's fault,
    so it fails the step, which is retried, or the sensor tick, which runs again."""


def read_object(uri: str, endpoint_url: str | None = None) -> bytes:
    """The bytes of the file with this recorded URI (as listed, or as a manifest holds it)."""
    fs, path = filesystem(opened_uri(uri), endpoint_url)
    if is_local(fs):
        _check_regular_file(path, uri)
    try:
        return _reaching(uri, lambda: fs.cat_file(path))
    except FileNotFoundError:
        # s3fs sizes a file from its cached folder listing, which misses files added since
        fs.invalidate_cache(posixpath.dirname(path))
        return _reaching(uri, lambda: fs.cat_file(path))


def read_head(uri: str, size: int, endpoint_url: str | None = None) -> bytes:
    """The first `size` bytes of a file (one ranged GET on S3): enough to sniff its format."""
    fs, path = filesystem(opened_uri(uri), endpoint_url)
    if is_local(fs):
        _check_regular_file(path, uri)
    return _reaching(uri, lambda: fs.cat_file(path, start=0, end=size))


def _reaching(uri: str, read: Callable[[], bytes]) -> bytes:
    try:
        return read()
    except UNREACHABLE as err:
        raise SourceUnreachableError(f"the source did not answer for {uri}: {err}") from err

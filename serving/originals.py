"""The original files of the indexed images, as the source holds them now, not as it held them.

A source changes after it was indexed: a file is moved, deleted, truncated or overwritten with
other bytes. An id is the content hash of the bytes that were indexed, so the service serves a
file under an id only when its bytes still hash to that id (`read_original`), and says in every
result list whether each original is still there (`original_state`: one `stat` of a local file,
its size against the manifest's; no bytes are read, and a remote source is not asked at all,
since one request per listed result would cost more than the search itself).
"""

from __future__ import annotations

import hashlib
import os
from typing import NamedTuple

from vsearch_pipeline.core.names import opened_uri
from vsearch_pipeline.core.sources import read_object

LOCAL_PREFIX = "file://"


class SourceFile(NamedTuple):
    """One usable image of the manifest: where it is and what its bytes were when indexed."""

    uri: str
    format: str
    content_hash: str  # the SHA-256 of the indexed bytes (the id is its first 16 hex digits)
    size: int


class OriginalUnavailable(Exception):
    """The original of an indexed image cannot be served; `reason` says why, for the client."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.state, self.reason = state, reason


def _local_path(uri: str) -> str | None:
    """The local path of a recorded URI, or None for a remote one (s3://...)."""
    opened = opened_uri(uri)
    if opened.startswith(LOCAL_PREFIX):
        return opened[len(LOCAL_PREFIX):]
    return None if "://" in opened else opened


def original_state(file: SourceFile | None) -> str:
    """`present` (a local file of the indexed size), `missing`, `changed` (another size now) or
    `unchecked` (a remote source). Cheap enough for every result of every list."""
    if file is None:
        return "missing"
    path = _local_path(file.uri)
    if path is None:
        return "unchecked"
    try:
        size = os.stat(path).st_size
    except OSError:
        return "missing"
    return "present" if size == file.size else "changed"


def read_original(image_id: str, file: SourceFile, endpoint_url: str | None = None) -> bytes:
    """The original's bytes, only if they are still the indexed ones: OriginalUnavailable with
    state `missing` (moved, deleted, no longer readable) or `changed` (other bytes now)."""
    try:
        data = read_object(file.uri, endpoint_url)
    except FileNotFoundError:
        raise OriginalUnavailable("missing", f"the original of image {image_id} was moved or "
                                             "deleted from the source after it was indexed") from None
    except OSError as err:
        raise OriginalUnavailable("missing", f"the original of image {image_id} can no longer "
                                             f"be read: {err}") from None
    if hashlib.sha256(data).hexdigest() != file.content_hash:
        raise OriginalUnavailable("changed", f"the file of image {image_id} changed after it was "
                                             "indexed: its bytes are no longer this image (the "
                                             "next pipeline run indexes the new content)")
    return data

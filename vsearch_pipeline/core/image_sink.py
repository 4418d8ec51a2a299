"""Writing image bytes into a source (a local folder or an s3:// prefix) the way the sensor wants them.

Shared by the URL downloader and the service's upload endpoint, so that both name and write
files the same way:

- the name comes from the bytes: ``<first 16 hex of SHA-256>.<extension of the sniffed format>``
  (the pipeline's image id, see :func:`vsearch_pipeline.core.manifest.image_id`), so the same
  image arriving twice, from two URLs or two uploads, lands once;
- a reader never sees a half-written file: a local file is written under a hidden temporary name
  in the same folder (hidden names are skipped by the source listing) and renamed into place; an
  S3 object is a single PUT, atomic by itself.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field

import fsspec

from vsearch_pipeline.core.manifest import image_id
from vsearch_pipeline.core.storage import filesystem, is_local, write_atomically

# The formats `sniff_image_format` names, and the extension a file of each gets.
EXTENSIONS: dict[str, str] = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "TIFF": "tiff",
                              "WEBP": "webp", "BMP": "bmp", "AVIF": "avif"}


@dataclass(frozen=True)
class StoredImage:
    """Where an image landed. `existed` is True when the same bytes were already there."""

    id: str
    sha256: str
    path: str  # relative to the source root, with forward slashes
    uri: str
    format: str
    bytes: int
    existed: bool


def content_name(data: bytes, fmt: str) -> tuple[str, str]:
    """(sha256 hex, file name) of image bytes: the name is the image id plus the format's extension."""
    if fmt not in EXTENSIONS:
        raise ValueError(f"no file extension known for format {fmt!r}")
    digest = hashlib.sha256(data).hexdigest()
    return digest, f"{image_id(digest)}.{EXTENSIONS[fmt]}"


@dataclass
class ImageSink:
    """A folder of a source that images are written into, content-addressed and atomically.

    `prefix` is a sub-folder of the source (e.g. ``ingest``); the pipeline lists the whole
    source recursively, so anything written here is picked up as part of the collection.
    """

    source_uri: str
    endpoint_url: str | None = None
    prefix: str = ""
    fs: fsspec.AbstractFileSystem = field(init=False, repr=False)
    root: str = field(init=False)

    def __post_init__(self) -> None:
        self.fs, self.root = filesystem(self.source_uri, self.endpoint_url)
        self.prefix = self.prefix.strip("/")

    def put(self, data: bytes, fmt: str) -> StoredImage:
        """Write the bytes unless the same content is already there; say which happened."""
        digest, name = content_name(data, fmt)
        relpath = posixpath.join(self.prefix, name) if self.prefix else name
        full = posixpath.join(self.root, relpath)
        existed = self._exists(full)
        if not existed:
            self._write(full, data)
        return StoredImage(id=image_id(digest), sha256=digest, path=relpath, uri=self._uri(full),
                           format=fmt, bytes=len(data), existed=existed)

    def _exists(self, full: str) -> bool:
        if not is_local(self.fs):
            self.fs.invalidate_cache(posixpath.dirname(full))  # another client may have written it
        return self.fs.exists(full)

    def _write(self, full: str, data: bytes) -> None:
        if not is_local(self.fs):
            self.fs.pipe_file(full, data)  # one PUT: the object appears whole or not at all
            return
        write_atomically(full, data)

    def _uri(self, full: str) -> str:
        return full if is_local(self.fs) else f"{self.fs.protocol[0]}://{full}"

"""The raw image manifest: one row per file, with a content-derived id and a usable/why-not status."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from vsearch_pipeline.core.batches import BatchEntry, UnusableEntry
from vsearch_pipeline.core.decode import DEFAULT_MAX_PIXELS, ImageError, inspect_image
from vsearch_pipeline.core.image_quality import EMPTY_ROW, MEASURE_SIDE, measure_quality
from vsearch_pipeline.core.names import text_safe

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("uri", pa.string()),
        ("path", pa.string()),
        ("version", pa.string()),
        ("bytes", pa.int64()),
        ("content_hash", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        # image quality (core.image_quality), from the same decode; null for unusable files
        ("sharpness", pa.float32()),
        ("brightness", pa.float32()),
        ("contrast", pa.float32()),
        ("colourfulness", pa.float32()),
        ("jpeg_quality", pa.int16()),
        ("taken_at", pa.string()),
        ("camera", pa.string()),
    ]
)
QUALITY_COLUMNS = tuple(EMPTY_ROW)

ID_HEX_CHARS = 16


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_id(sha256_hex: str) -> str:
    """Ids come from the bytes, so a renamed or copied file keeps its id (64 bits of SHA-256)."""
    return sha256_hex[:ID_HEX_CHARS]


def manifest_row(obj: BatchEntry, read: Callable[[str], bytes], max_pixels: int) -> dict:
    """Read one file and describe it, its quality figures included (one decode for both); never
    raises for a bad file, the reason goes in the row.

    Reasons may quote a file name, so they are made storable text (`text_safe`)."""
    row = {"uri": obj.uri, "path": obj.path, "version": obj.version, "id": None,
           "bytes": obj.size, "content_hash": None, "width": None, "height": None,
           "format": None, "status": "ok", "reason": None, **EMPTY_ROW}
    if isinstance(obj, UnusableEntry):
        return row | {"status": "unreadable", "reason": obj.reason}
    try:
        data = read(obj.uri)
    except OSError as err:
        return row | {"status": "unreadable", "reason": text_safe(f"could not read the file: {err}")}
    digest = content_hash(data)
    row |= {"bytes": len(data), "content_hash": digest, "id": image_id(digest)}
    try:
        inspected = inspect_image(data, max_pixels, MEASURE_SIDE)
    except ImageError as err:
        return row | {"status": err.status, "reason": text_safe(err.reason)}
    info = inspected.info
    quality = measure_quality(inspected.opened, inspected.rgb)
    return row | {"width": info.width, "height": info.height, "format": info.format,
                  **quality.row()}


def build_manifest(
    objects: Iterable[BatchEntry],
    read: Callable[[str], bytes],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """Manifest rows for the objects, in their order; reading and decoding run on a thread pool."""
    objects = list(objects)
    rows = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, row in enumerate(pool.map(lambda o: manifest_row(o, read, max_pixels), objects)):
            rows.append(row)
            if progress:
                progress(done + 1, len(objects))
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def complete_manifest(table: pa.Table) -> pa.Table:
    """A manifest with every column of MANIFEST_SCHEMA: a batch read before the quality columns
    existed (batches are never rewritten) gets them as nulls."""
    for field in MANIFEST_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)


def status_counts(manifest: pa.Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in manifest.column("status").to_pylist():
        counts[status] = counts.get(status, 0) + 1
    return dict(sorted(counts.items()))

"""Perceptual hashes per ingest batch: computed once per content id, kept in artifact storage as
`hashes/<batch>.parquet` (id, phash), and loaded from there into the DuckDB table
`perceptual_hashes` that the near-duplicate grouping reads."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.hashing import phash64
from vsearch_pipeline.core.layout import HASHES, artifact_key, hashes_path
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import MetricsDB

HASH_DECODE_SIZE = 64  # pHash looks at a 32x32 thumbnail; decode JPEGs no larger than needed


def phash_file(read: Callable[[str], bytes], uri: str) -> int | None:
    """The pHash of the image at `uri`; None when it no longer reads or decodes."""
    try:
        return phash64(decode_rgb(read(uri), min_size=HASH_DECODE_SIZE))
    except (ImageError, OSError):
        return None


def usable_uris(manifest: pa.Table) -> dict[str, str]:
    """Id -> URI of each usable image of a batch's manifest (the last file, where several hold
    the same content: any of them hashes the same)."""
    usable = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    return dict(zip(usable.column("id").to_pylist(), usable.column("uri").to_pylist(),
                    strict=True))


def hashes_elsewhere(store: ArtifactStore, key: str, wanted: set[str]) -> dict[str, int]:
    """pHashes of the wanted ids that other batches' hash files already hold."""
    found: dict[str, int] = {}
    for path in store.list(HASHES, ".parquet"):
        if path == hashes_path(key) or not wanted:
            continue
        table = store.read_parquet(path)
        for image_id, value in zip(*(table.column(c).to_pylist() for c in ("id", "phash")),
                                   strict=True):
            if image_id in wanted:
                found[image_id] = value
                wanted.discard(image_id)
    return found


def compute_hashes(todo: list[str], uris: dict[str, str], read: Callable[[str], bytes],
                   progress: Callable[[int, int], None]) -> dict[str, int | None]:
    """Id -> pHash (None: failed) of each id of `todo`, read and hashed on two threads."""
    computed: dict[str, int | None] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for n, (image_id, value) in enumerate(
                zip(todo, pool.map(lambda i: phash_file(read, uris[i]), todo), strict=True)):
            computed[image_id] = value
            progress(n + 1, len(todo))
    return computed


def write_hashes(store: ArtifactStore, key: str, found: Iterable[tuple[str, int | None]]
                 ) -> dict[str, int]:
    """The batch's hash file, of the ids that have a hash; returns what it holds."""
    hashed = {i: v for i, v in found if v is not None}
    store.write_parquet(hashes_path(key), pa.table({
        "id": pa.array(list(hashed), pa.string()),
        "phash": pa.array(list(hashed.values()), pa.uint64())}))
    return hashed


def load_hashes(store: ArtifactStore, db: MetricsDB) -> None:
    """Refill the DuckDB table `perceptual_hashes` from every batch's hash file."""
    tables = []
    for path in store.list(HASHES, ".parquet"):
        table = store.read_parquet(path)
        # typed, so that a batch with no usable image (an empty table) still concatenates
        labels = pa.array([artifact_key(path)] * len(table), pa.string())
        tables.append(table.append_column("partition", labels))
    db.replace_perceptual_hashes(pa.concat_tables(tables) if tables else None)


def all_hashes(db: MetricsDB) -> tuple[list[str], np.ndarray]:
    """Every hashed image once, by id, and its pHash (uint64)."""
    rows = db.distinct_hashes()
    return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.uint64)

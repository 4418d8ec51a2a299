"""What training a projection head on the collection reads and writes: the images it is trained
on, decoded ahead on threads, and a head version's folder (`head.npz`, then `head.json`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.embed import bounded_map
from vsearch_pipeline.core.layout import HEAD_FILE, HEAD_RECORD_FILE
from vsearch_pipeline.core.retrieval import ProjectionHead
from vsearch_pipeline.core.storage import ArtifactStore


def training_rows(count: int, limit: int) -> np.ndarray:
    """The rows the head is trained on: all, or a seeded sample of `limit`, in order."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def decoded_images(uris: list[str], read: Callable[[str], bytes], min_size: int,
                   rows: np.ndarray, used: list[int], failed: dict[str, str],
                   progress: Callable[[int, int], None]) -> Iterator[Image.Image]:
    """The images at `uris`, decoded two ahead on worker threads; each row decoded is appended
    to `used` as its image is yielded, a file that does not decode goes to `failed` instead."""

    def decode(uri: str) -> Image.Image | str:
        try:
            return decode_rgb(read(uri), min_size=min_size)
        except (ImageError, OSError) as err:
            return str(err)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for done, (row, uri, image) in enumerate(
                zip(rows, uris, bounded_map(pool, decode, uris, 8), strict=True), start=1):
            if isinstance(image, str):
                failed[uri] = image
            else:
                used.append(int(row))
                yield image
            progress(done, len(uris))


def write_head_version(store: ArtifactStore, folder: str, head: ProjectionHead,
                       record: dict) -> None:
    """The head's weights, then its record (head.json): the folder is whole with it."""
    store.write_bytes(f"{folder}/{HEAD_FILE}", head.to_bytes())
    store.write_json(f"{folder}/{HEAD_RECORD_FILE}", record)

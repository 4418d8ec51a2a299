"""Finding the files that arrived in a source since the last look, with a small cursor.

A source (local folder or S3 prefix) can only be listed whole: S3 cannot filter a listing by
time. What keeps the work small is the cursor: the newest modification time seen (the
watermark) and the version of every file modified within `lookback_s` of it. A file is new
when it was modified after the watermark minus the lookback and its version is not the one the
cursor remembers. So:

- many files arriving at once, or sharing one timestamp (S3 keeps whole seconds), are all
  taken: nothing is skipped because another file had the same time;
- a file already taken is not taken again while it stays inside the window, and falls out of
  consideration once the watermark has moved past it;
- a file that lands late with an older timestamp (an S3 multipart upload is stamped when it
  started) is still caught if it lands within `lookback_s`;
- an overwritten file gets a new version and a new time: it is new again (a new version of
  that image). A deleted file is simply no longer listed; the index drops it at its next full
  rebuild, which indexes only what the source still holds.

The cursor stays small: only the files of the last `lookback_s` are remembered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vsearch_pipeline.core.decode import SNIFF_BYTES, sniff_image_format
from vsearch_pipeline.core.sources import SourceObject


@dataclass(frozen=True)
class SourceCursor:
    watermark: float = 0.0
    recent: dict[str, str] = field(default_factory=dict)  # uri -> version, inside the window

    def to_json(self) -> str:
        return json.dumps({"watermark": self.watermark, "recent": self.recent}, sort_keys=True)

    def forget(self, uris: Iterable[str]) -> SourceCursor:
        """The same cursor without these files, so that they are looked at again next time."""
        gone = set(uris)
        return SourceCursor(self.watermark, {u: v for u, v in self.recent.items() if u not in gone})

    @classmethod
    def from_json(cls, text: str | None) -> SourceCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(float(data.get("watermark", 0.0)), dict(data.get("recent", {})))


def new_objects(listing: Iterable[SourceObject], cursor: SourceCursor, lookback_s: float
                ) -> tuple[list[SourceObject], SourceCursor]:
    """The listed files the cursor has not seen, and the cursor that includes them."""
    listing = list(listing)
    since = cursor.watermark - lookback_s
    new = [o for o in listing
           if o.modified >= since and cursor.recent.get(o.uri) != o.version]
    watermark = max([cursor.watermark, *(o.modified for o in listing)])
    recent = {o.uri: o.version for o in listing if o.modified >= watermark - lookback_s}
    return new, SourceCursor(watermark, recent)


def split_images(objects: Sequence[SourceObject], read_head: Callable[[str, int], bytes],
                 workers: int = 8) -> tuple[list[SourceObject], list[tuple[SourceObject, str]]]:
    """(images, [(non-image, why)]), decided by each file's leading bytes, not its name.

    Reads only `SNIFF_BYTES` of each file (a ranged GET on S3), several at a time.
    """
    def sniff(obj: SourceObject) -> str | None:
        try:
            head = read_head(obj.uri, SNIFF_BYTES)
        except OSError as err:
            return f"could not read: {err}"
        if not head:
            return "empty file"
        return None if sniff_image_format(head) else "not an image (by content)"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(pool.map(sniff, objects))
    images = [o for o, why in zip(objects, verdicts, strict=True) if why is None]
    skipped = [(o, why) for o, why in zip(objects, verdicts, strict=True) if why is not None]
    return images, skipped


def chunked(items: Sequence, size: int) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]

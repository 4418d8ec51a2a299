"""Which file of a near-duplicate group to keep, the files to drop, and the duplicates that cross
two parts of a collection (a train and a test split), from the pipeline's groups.

The keeper rule, one key after another, each deciding only where the ones before tie:

1. **Most pixels** (width x height as decoded): a downscaled copy, or a crop, has fewer.
2. **Least compression**: more bytes per pixel. At one size a re-encoded JPEG is smaller than
   the file it was made from.
3. **The group's own format**: the format most of the group's files share (a PNG export among
   JPEG shots loses), then lossless before lossy.
4. **Earliest seen**: the first batch that held it, then the path, so the choice is stable.

A person may choose another keeper for a group (the service's "keep this one"); that choice wins
over the rule wherever the export or the page asks. Exact copies (the same bytes) are one image
id with several files: every file of a group but the keeper's one is listed to drop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

LOSSLESS_FORMATS = frozenset({"PNG", "TIFF", "BMP", "PPM", "GIF"})
Part = Callable[["ImageFile"], bool]  # which files belong to one part of the collection
DROP_COLUMNS = ("group", "drop_uri", "drop_path", "drop_id", "keep_uri", "keep_path", "keep_id",
                "kept_by", "reason")


@dataclass(frozen=True)
class ImageFile:
    """One usable file of the collection, as its batch's manifest describes it."""

    id: str
    uri: str
    path: str
    width: int
    height: int
    bytes: int
    format: str
    batch: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def files_by_id(manifest: pa.Table, only: set[str] | None = None) -> dict[str, list[ImageFile]]:
    """Every usable file of each image id (of those in `only`, when given), in the order the
    batches saw them (`artifacts.load_manifests` gives the manifests with their `partition`)."""
    columns = ("id", "uri", "path", "width", "height", "bytes", "format", "status", "partition")
    found: dict[str, list[ImageFile]] = {}
    for image_id, uri, path, width, height, size, fmt, status, batch in zip(
            *(manifest.column(c).to_pylist() for c in columns), strict=True):
        if image_id is None or status != "ok" or (only is not None and image_id not in only):
            continue
        found.setdefault(image_id, []).append(
            ImageFile(image_id, uri, path, int(width or 0), int(height or 0), int(size or 0),
                      str(fmt or ""), str(batch)))
    return found


def keeper_key(file: ImageFile, common_format: str) -> tuple:
    """Sorts the file to keep first (the module docstring's rule)."""
    bytes_per_pixel = file.bytes / file.pixels if file.pixels else 0.0
    return (-file.pixels, -bytes_per_pixel, file.format != common_format,
            file.format not in LOSSLESS_FORMATS, file.batch, file.path)


def suggested_keeper(members: Sequence[str], files: Mapping[str, Sequence[ImageFile]]
                     ) -> str | None:
    """The id of the group member the rule keeps (None when no member has a known file)."""
    known = [f for m in members for f in files.get(m, ())[:1]]
    if not known:
        return None
    common = Counter(f.format for f in known).most_common(1)[0][0]
    return min(known, key=lambda f: keeper_key(f, common)).id


def keeper_of(members: Sequence[str], suggested: str | None, chosen: Collection[str]
              ) -> tuple[str | None, str | None]:
    """A group's keeper and who decided it: the member a person chose ('person'; the service
    keeps one choice per group), else the rule's `suggested` one ('rule'), else (None, None)."""
    picked = next((m for m in members if m in chosen), None)
    if picked is not None:
        return picked, "person"
    return (suggested, "rule") if suggested is not None else (None, None)


def drop_rows(groups: Sequence[Sequence[str]], files: Mapping[str, Sequence[ImageFile]],
              suggested: Sequence[str | None], chosen: Collection[str] = ()) -> list[dict]:
    """The files to drop so that one file of each group remains: every file of every member but
    the keeper's first file (`keeper_of`, from the rule's `suggested` keeper of each group),
    with why (`DROP_COLUMNS`)."""
    rows = []
    for number, (members, rule_keeper) in enumerate(zip(groups, suggested, strict=True)):
        keep_id, kept_by = keeper_of(members, rule_keeper, chosen)
        if not files.get(keep_id):
            continue
        keep = files[keep_id][0]
        for member in members:
            for file in files.get(member, ()):
                if file is keep:
                    continue
                reason = ("the same bytes as the kept file" if member == keep_id
                          else _why_not_kept(file, keep, kept_by))
                rows.append({"group": number, "drop_uri": file.uri, "drop_path": file.path,
                             "drop_id": member, "keep_uri": keep.uri, "keep_path": keep.path,
                             "keep_id": keep_id, "kept_by": kept_by, "reason": reason})
    return rows


def _why_not_kept(file: ImageFile, keep: ImageFile, kept_by: str) -> str:
    if kept_by == "person":
        return "a person chose another file of the group"
    if file.pixels != keep.pixels:
        return f"fewer pixels ({file.width}x{file.height} against {keep.width}x{keep.height})"
    if file.bytes != keep.bytes:
        return f"more compressed ({file.bytes:,} bytes against {keep.bytes:,})"
    if file.format != keep.format:
        return f"{file.format} where the group is {keep.format}"
    return "seen later"


def between_rows(groups: Sequence[Sequence[str]], files: Mapping[str, Sequence[ImageFile]],
                 in_a: Part, in_b: Part) -> list[dict]:
    """The files of part B that duplicate a file of part A, one row each in the shape of
    `drop_rows` (the A file as the one kept): dropping them leaves B without a copy of anything
    in A. A part is a test on files (a folder: its path prefix; a tag: the ids carrying it). Each
    group is checked, and each image in no group on its own, so exact copies (one id, a file in
    each part) are found as well, and a file that is in both parts (an image with both tags)."""
    grouped = {m for members in groups for m in members}
    units = [*enumerate(groups), *((None, [i]) for i in files if i not in grouped)]
    rows = []
    for number, members in units:
        a_files = [f for m in members for f in files.get(m, ()) if in_a(f)]
        for file in (f for m in members for f in files.get(m, ()) if in_b(f)):
            witness = next((f for f in a_files if f is not file), file if in_a(file) else None)
            if witness is None:
                continue
            reason = ("in both parts" if witness is file else
                      "the same bytes" if file.id == witness.id else "a near-duplicate")
            rows.append({"group": number, "drop_uri": file.uri, "drop_path": file.path,
                         "drop_id": file.id, "keep_uri": witness.uri, "keep_path": witness.path,
                         "keep_id": witness.id, "kept_by": "part A", "reason": reason})
    return rows

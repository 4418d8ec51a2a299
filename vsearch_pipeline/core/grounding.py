"""Grounding sets: groups of images known to be similar, the yardstick for search and clusters.

File format (CSV, UTF-8, with a header row)::

    group,image
    cat,animals/cat_01.jpg
    cat,animals/cat_02.jpg
    coffee,3f9a0c1d2e4b5a69

``group`` is any name; ``image`` is an image id, a full URI, or a path relative to the source root.
Lines starting with ``#`` are comments. An image belongs to at most one group per file (the first
line that names it wins). A set's name is its file name without the extension.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass
class GroundingSet:
    name: str
    rows: list[tuple[str, str]]  # (group, image reference)


@dataclass
class ResolvedGrounding:
    """Group index per image id, and the references that matched no image."""

    name: str
    group_of: dict[str, int]
    group_names: list[str]
    unresolved: list[str]

    def labels_for(self, ids: Iterable[str]) -> np.ndarray:
        return np.array([self.group_of.get(i, -1) for i in ids], dtype=np.int64)


def parse_grounding(name: str, text: str) -> GroundingSet:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(lines)
    if reader.fieldnames is None or {"group", "image"} - set(reader.fieldnames):
        raise ValueError(f"grounding set {name!r}: the header must be 'group,image'")
    rows = []
    for number, row in enumerate(reader, start=2):
        group, image = (row.get("group") or "").strip(), (row.get("image") or "").strip()
        if not group or not image:
            raise ValueError(f"grounding set {name!r}, row {number}: group and image are required")
        rows.append((group, image))
    return GroundingSet(name, rows)


def format_grounding(rows: Iterable[tuple[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "image"])
    writer.writerows(rows)
    return out.getvalue()


def resolve_grounding(grounding: GroundingSet, lookup: Mapping[str, str]) -> ResolvedGrounding:
    """Map references to image ids through `lookup` (id, URI or relative path -> id)."""
    names: dict[str, int] = {}
    group_of: dict[str, int] = {}
    unresolved = []
    for group, ref in grounding.rows:
        image_id = lookup.get(ref)
        if image_id is None:
            unresolved.append(ref)
            continue
        group_of.setdefault(image_id, names.setdefault(group, len(names)))
    return ResolvedGrounding(grounding.name, group_of, list(names), unresolved)


def grounding_from_folders(paths: Iterable[str], depth: int = 1) -> list[tuple[str, str]]:
    """Rows that group images by their folder (the first `depth` levels under the source root)."""
    rows = []
    for path in paths:
        parts = posixpath.dirname(path).split("/")
        if parts != [""]:
            rows.append(("/".join(parts[:depth]), path))
    return rows

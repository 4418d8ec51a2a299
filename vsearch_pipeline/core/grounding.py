"""Grounding sets: groups of images known to be similar, the yardstick for search and clusters.

File format (CSV, UTF-8 with or without a BOM, with a header row)::

    group,image
    cat,animals/cat_01.jpg
    cat,animals/cat_02.jpg
    coffee,3f9a0c1d2e4b5a69

``group`` is any name; ``image`` is an image id, a full URI, or a path relative to the source root.
An optional ``case`` column names the kind of each member (``original``, ``crop``, ``screenshot``):
the evaluation then also measures each case as a slice of the set (``<set>/<case>``), whose
queries are that case's images, answered against the whole group. Lines starting with ``#`` are
comments. An image belongs to at most one group per file (the first
line that names it wins). A set's name is its file name without the extension.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from vsearch_pipeline.core.text_files import numbered_lines


@dataclass
class GroundingSet:
    name: str
    rows: list[tuple[str, str]]  # (group, image reference)
    cases: dict[str, str] = field(default_factory=dict)  # image reference -> its case, if named


@dataclass
class ResolvedGrounding:
    """Group index per image id, and the references that matched no image."""

    name: str
    group_of: dict[str, int]
    group_names: list[str]
    unresolved: list[str]
    case_of: dict[str, str] = field(default_factory=dict)  # image id -> its case, if named

    def labels_for(self, ids: Iterable[str]) -> np.ndarray:
        return np.array([self.group_of.get(i, -1) for i in ids], dtype=np.int64)


def parse_grounding(name: str, text: str | bytes, source: str | None = None) -> GroundingSet:
    """The rows of a grounding set file (its bytes, or its text; a BOM is dropped). `source`, the
    file's path, is named in every error with the line number; a line that is not UTF-8 is one."""
    where = f"grounding set {name!r}" + (f" ({source})" if source else "")
    numbered = [(n, line) for n, line in numbered_lines(text, where)
                if line.strip() and not line.startswith("#")]
    header = [f.strip() for f in next(csv.reader([numbered[0][1]]))] if numbered else []
    if {"group", "image"} - set(header):
        raise ValueError(f"{where}: the header must be 'group,image'")
    group_at, image_at = header.index("group"), header.index("image")
    case_at = header.index("case") if "case" in header else None
    rows, cases = [], {}
    for number, line in numbered[1:]:
        fields = [f.strip() for f in next(csv.reader([line]))]
        group = fields[group_at] if group_at < len(fields) else ""
        image = fields[image_at] if image_at < len(fields) else ""
        if not group or not image:
            raise ValueError(f"{where}, line {number}: group and image are required")
        rows.append((group, image))
        if case_at is not None and case_at < len(fields) and fields[case_at]:
            cases.setdefault(image, fields[case_at])
    return GroundingSet(name, rows, cases)


def format_grounding(rows: Iterable[tuple[str, ...]]) -> str:
    """A grounding file of (group, image) rows, or (group, image, case) rows."""
    rows = list(rows)
    out = io.StringIO()
    plain = csv.writer(out, lineterminator="\n")
    quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
    plain.writerow(["group", "image", "case"] if rows and len(rows[0]) == 3 else ["group", "image"])
    for row in rows:
        # A line starting with '#' would read back as a comment: quote it.
        (quoted if row[0].startswith("#") else plain).writerow(row)
    return out.getvalue()


def resolve_grounding(grounding: GroundingSet, lookup: Mapping[str, str]) -> ResolvedGrounding:
    """Map references to image ids through `lookup` (id, URI or relative path -> id)."""
    names: dict[str, int] = {}
    group_of: dict[str, int] = {}
    case_of: dict[str, str] = {}
    unresolved = []
    for group, ref in grounding.rows:
        image_id = lookup.get(ref)
        if image_id is None:
            unresolved.append(ref)
            continue
        if image_id not in group_of:
            group_of[image_id] = names.setdefault(group, len(names))
            if ref in grounding.cases:
                case_of[image_id] = grounding.cases[ref]
    return ResolvedGrounding(grounding.name, group_of, list(names), unresolved, case_of)


def case_slices(grounding: ResolvedGrounding) -> list[tuple[str, set[str]]]:
    """(`<set>/<case>`, the ids of that case) for each case the set names, in name order."""
    by_case: dict[str, set[str]] = {}
    for image_id, case in grounding.case_of.items():
        by_case.setdefault(case, set()).add(image_id)
    return [(f"{grounding.name}/{case}", ids) for case, ids in sorted(by_case.items())]


def grounding_from_folders(paths: Iterable[str], depth: int = 1) -> list[tuple[str, str]]:
    """Rows that group images by their folder (the first `depth` levels under the source root)."""
    rows = []
    for path in paths:
        parts = posixpath.dirname(path).split("/")
        if parts != [""]:
            rows.append(("/".join(parts[:depth]), path))
    return rows


QUERY_IMAGE_PREFIX = "image:"  # how the search service names a query by an image of the collection


def grounding_from_ratings(ratings: Iterable[tuple[str, str, bool]]) -> list[tuple[str, str]]:
    """Rows from people's ratings of search results: one group per query, holding the images
    rated relevant to it (and the query image itself, for a search by an image of the collection).

    `ratings` are (query, image id, relevant). Groups of fewer than two images measure nothing
    and are left out; an image in several groups stays in the largest (as `resolve_grounding`
    keeps an image's first group, the rows come largest group first).
    """
    groups: dict[str, list[str]] = {}
    for query, image_id, relevant in ratings:
        members = groups.setdefault(query, [])
        if query.startswith(QUERY_IMAGE_PREFIX) and not members:
            members.append(query.removeprefix(QUERY_IMAGE_PREFIX))
        if relevant and image_id not in members:
            members.append(image_id)
    return _rows_largest_first(groups)


def grounding_from_tags(tagged: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Rows with one group per tag, from (tag, image id) pairs: images people tagged alike
    should find each other."""
    groups: dict[str, list[str]] = {}
    for tag, image_id in tagged:
        groups.setdefault(tag, []).append(image_id)
    return _rows_largest_first(groups)


def _rows_largest_first(groups: Mapping[str, list[str]]) -> list[tuple[str, str]]:
    ordered = sorted(((name, ids) for name, ids in groups.items() if len(ids) >= 2),
                     key=lambda item: (-len(item[1]), item[0]))
    return [(name, image_id) for name, ids in ordered for image_id in ids]

"""`vsearch duplicates`: the pipeline's near-duplicate groups with their keepers, the files to drop
as CSV, and the duplicates that cross two parts of the collection (core.duplicate_keepers)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vsearch_pipeline.core.artifacts import load_manifests
from vsearch_pipeline.core.catalog import latest_duplicates
from vsearch_pipeline.core.duplicate_groups import duplicates_rule, read_groups
from vsearch_pipeline.core.duplicate_keepers import (
    DROP_COLUMNS,
    ImageFile,
    Part,
    between_rows,
    drop_rows,
    files_by_id,
)
from vsearch_pipeline.core.layout import HomeLayout
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import CurationDB
from vsearch_pipeline.settings import load_settings


@dataclass(frozen=True)
class CollectionDuplicates:
    groups: list[list[str]]  # largest first, numbered as the service numbers them
    suggested: list[str | None]  # each group's keeper by the rule, as the pipeline chose it
    files: dict[str, list[ImageFile]]
    rule: dict
    chosen: set[str]  # keepers people chose in the service
    tags: dict[str, set[str]]  # tag -> ids
    version: str


def load_duplicates(home: Path) -> CollectionDuplicates:
    """The newest groups of the home, with every file of the collection and the service's
    curation (chosen keepers, tags). LookupError when no groups are materialized yet."""
    store = ArtifactStore(load_settings(home).artifacts_root(home))
    path = latest_duplicates(store)
    if path is None:
        raise LookupError(f"{home}: no near-duplicate groups yet; run `vsearch materialize` first")
    table = store.read_parquet(path)
    groups, suggested = read_groups(table)
    curation = CurationDB(str(HomeLayout(home).curation_db))
    tags: dict[str, set[str]] = {}
    for tag, image_id in curation.all_tags():
        tags.setdefault(tag, set()).add(image_id)
    return CollectionDuplicates(groups, suggested, files_by_id(load_manifests(store)),
                                duplicates_rule(table), curation.chosen_keepers(), tags, path)


def part(found: CollectionDuplicates, name: str) -> tuple[Part, str]:
    """A part of the collection by name: the images carrying that tag, else the files under
    that folder (a path prefix). ValueError when it names neither."""
    if name in found.tags:
        tagged = found.tags[name]
        return (lambda f: f.id in tagged), f"tag {name!r} ({len(tagged)} images)"
    prefix = name.strip("/") + "/"
    count = sum(f.path.startswith(prefix) for files in found.files.values() for f in files)
    if not count:
        raise ValueError(f"{name!r} is neither a tag nor a folder of the collection")
    return (lambda f: f.path.startswith(prefix)), f"folder {prefix} ({count} files)"


def files_to_drop(found: CollectionDuplicates, between: Sequence[str] | None = None
                  ) -> tuple[list[dict], str]:
    """The rows of the export and a line saying what they are: every group's files but its
    keeper's, or with `between` (A, B) the files of B that duplicate something in A."""
    if not between:
        rows = drop_rows(found.groups, found.files, found.suggested, found.chosen)
        return rows, (f"{len(rows)} files to drop from {len(found.groups)} near-duplicate groups "
                      f"(one kept in each)")
    (in_a, a_said), (in_b, b_said) = part(found, between[0]), part(found, between[1])
    rows = between_rows(found.groups, found.files, in_a, in_b)
    return rows, f"{len(rows)} files of {b_said} duplicate an image of {a_said}"


def write_csv(rows: list[dict], target: Path) -> None:
    """The rows as CSV with `DROP_COLUMNS`, written whole or not at all."""
    partial = target.with_name(target.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=DROP_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(target)

"""Every tag of the collection, in memory, so that searches never wait on DuckDB to read them.

The service's own tag writes go to `curation.duckdb` first (through the search log's grouped
transactions) and then to this copy; a reload every few seconds picks up what other processes
wrote. A search filtered by tag, a gallery page or a text search reads only this copy.

A write and its update of this copy happen under one lock, and so does a reload (its read of the
database and its replacing of this copy), so this copy changes in the order the database
committed: two requests racing on one tag (a POST and a DELETE) cannot leave the copy holding
what the database does not. Readers never take that lock; they read a snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from types import MappingProxyType

import duckdb

from vsearch_pipeline.core.store import CurationDB, normalize_tag, tag_images, untag_images

Write = Callable[[Callable[[duckdb.DuckDBPyConnection], int]], int]


class TagIndex:
    def __init__(self, db: CurationDB, write: Write):
        """`db` is read from; `write(change)` runs a change in a committed transaction."""
        self.db = db
        self.write = write
        self._lock = threading.Lock()  # keeps _by_id built from the _by_tag it is stored with
        self._writing = threading.Lock()  # one change (stored, then copied here) at a time
        self._by_tag: dict[str, frozenset[str]] = {}
        self._by_id: dict[str, list[str]] | None = None  # built from _by_tag when first asked
        self.reload()

    def reload(self) -> None:
        """Read every tag from the database (what other processes wrote too)."""
        with self._writing:
            found: dict[str, set[str]] = {}
            for tag, image_id in self.db.all_tags():
                found.setdefault(tag, set()).add(image_id)
            self._replace({tag: frozenset(ids) for tag, ids in found.items()})

    def _replace(self, by_tag: dict[str, frozenset[str]]) -> None:
        with self._lock:
            self._by_tag, self._by_id = by_tag, None

    def by_tag(self) -> MappingProxyType:
        """Tag -> the ids that carry it (a snapshot)."""
        return MappingProxyType(self._by_tag)

    def ids_with(self, tag: str) -> frozenset[str]:
        return self._by_tag.get(tag, frozenset())

    def tags_by_id(self) -> dict[str, list[str]]:
        """Id -> its tags, sorted (a snapshot)."""
        by_id = self._by_id
        if by_id is None:
            by_tag = self._by_tag
            by_id = {}
            for tag in sorted(by_tag):
                for image_id in by_tag[tag]:
                    by_id.setdefault(image_id, []).append(tag)
            with self._lock:
                if self._by_tag is by_tag:
                    self._by_id = by_id
        return by_id

    def counts(self) -> dict[str, int]:
        return {tag: len(ids) for tag, ids in sorted(self._by_tag.items())}

    def add(self, ids: Iterable[str], tag: str) -> int:
        """Tag images (stored first, then here); returns how many did not have it yet.
        ValueError for a tag `normalize_tag` refuses."""
        ids, tag = list(ids), normalize_tag(tag)
        with self._writing:
            added = self.write(lambda con: tag_images(con, ids, tag))
            self._replace({**self._by_tag, tag: self._by_tag.get(tag, frozenset()) | set(ids)})
        return added

    def remove(self, ids: Iterable[str], tag: str) -> int:
        """Take a tag off images (stored first, then here); returns how many had it."""
        ids, tag = list(ids), normalize_tag(tag)
        with self._writing:
            removed = self.write(lambda con: untag_images(con, ids, tag))
            left = self._by_tag.get(tag, frozenset()) - set(ids)
            rest = {t: v for t, v in self._by_tag.items() if t != tag}
            self._replace({**rest, tag: left} if left else rest)
        return removed

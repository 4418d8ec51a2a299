"""The live index of the search service, and how a newer one replaces it without a dropped request.

A request takes `holder.live` once and works on that snapshot to the end. A newer
materialization is loaded completely beside the live one, and only then swapped in by a single
reference assignment, so requests in flight finish on the old index. A materialization that does
not load (missing files, a model that does not match) is refused with a log line and the live
index keeps serving. A pinned version stays live until unpinned: the way to roll back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyarrow.compute as pc

from vsearch_pipeline.catalog import (
    index_metadata_by_version,
    latest_index_metadata,
    metadata_value,
)
from vsearch_pipeline.core.layout import load_manifests
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.search import Searcher

log = logging.getLogger("vsearch.serving")


@dataclass(frozen=True)
class ServedIndex:
    searcher: Searcher
    files: dict[str, tuple[str, str]]  # id -> (URI, format) of every usable image in the manifest

    @property
    def version(self) -> str:
        return self.searcher.version


def manifest_files(store: ArtifactStore) -> dict[str, tuple[str, str]]:
    manifest = load_manifests(store)
    usable = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    files: dict[str, tuple[str, str]] = {}
    for image_id, uri, fmt in zip(*(usable.column(c).to_pylist() for c in ("id", "uri", "format")),
                                  strict=True):
        files.setdefault(image_id, (uri, fmt))
    return files


class IndexHolder:
    def __init__(self, metadata_source: Callable[[str | None], Mapping],
                 store_for: Callable[[Mapping], ArtifactStore],
                 source_endpoint_url: str | None = None):
        """`metadata_source(version)`: the materialization metadata of that version, or of the
        latest when version is None. `store_for(metadata)`: the storage that holds it."""
        self._metadata_source = metadata_source
        self._store_for = store_for
        self._endpoint = source_endpoint_url
        self._lock = threading.Lock()  # one load at a time; readers never wait for it
        self.live: ServedIndex | None = None
        self.pinned: str | None = None
        self.last_error: str | None = None

    def refresh(self) -> bool:
        """Load the wanted version if it is not live yet; True when a swap happened."""
        with self._lock:
            try:
                metadata = self._metadata_source(self.pinned)
            except LookupError as err:
                self.last_error = str(err)
                return False
            version = metadata_value(metadata, "version")
            if self.live is not None and self.live.version == version:
                return False
            try:
                served = self._load(metadata)
            except Exception as err:  # refuse any index that does not load; keep serving
                self.last_error = f"index {version} refused: {err}"
                log.error(self.last_error)
                return False
            old = self.live.version if self.live else None
            self.live = served
            self.last_error = None
            log.info("index %s is live (was %s)", version, old)
            return True

    def _load(self, metadata: Mapping) -> ServedIndex:
        store = self._store_for(metadata)
        model = self.live.searcher.model if self.live else None
        searcher = Searcher.from_metadata(store, metadata, self._endpoint, model=model)
        return ServedIndex(searcher, manifest_files(store))

    def pin(self, version: str | None) -> bool:
        """Pin a version (None unpins, going back to the latest) and load it now."""
        if version is not None:
            self._metadata_source(version)  # LookupError for an unknown version
        self.pinned = version
        self.refresh()
        return self.live is not None and (version is None or self.live.version == version)


def instance_metadata_source(instance) -> Callable[[str | None], Mapping]:
    def source(version: str | None) -> Mapping:
        if version is None:
            return latest_index_metadata(instance)
        return index_metadata_by_version(instance, version)

    return source

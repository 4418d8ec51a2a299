"""The live index of the search service, and how a newer one replaces it without a dropped request.

A request takes `holder.live` once and works on that snapshot to the end. A newer
materialization is loaded completely beside the live one, and only then swapped in by a single
reference assignment, so requests in flight finish on the old index. A materialization that does
not load (missing files, a model that does not match) is refused with a log line and the live
index keeps serving. A pinned version stays live until unpinned: the way to roll back. The pin
is kept in a file of the home (`serving_pin`), read at every refresh, so it outlives a restart and
every service process of the home follows it. The clustering and duplicate groups (`views`) are
swapped the same way when a newer one appears.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow.compute as pc

from serving.originals import SourceFile
from serving.views import CollectionViews, load_views, views_identity
from vsearch_pipeline.catalog import (
    CLUSTERS_ASSET,
    DUPLICATES_ASSET,
    index_metadata_by_version,
    latest_index_metadata,
    latest_metadata,
    metadata_value,
)
from vsearch_pipeline.core.layout import load_manifests
from vsearch_pipeline.core.storage import ArtifactStore, write_atomically
from vsearch_pipeline.search import Searcher

log = logging.getLogger("vsearch.serving")


@dataclass(frozen=True)
class ServedIndex:
    searcher: Searcher
    files: dict[str, SourceFile]  # id -> where and what every usable image of the manifest is
    views: CollectionViews = field(default_factory=CollectionViews)

    @property
    def version(self) -> str:
        return self.searcher.version


def manifest_files(store: ArtifactStore) -> dict[str, SourceFile]:
    manifest = load_manifests(store)
    usable = manifest.filter(pc.equal(manifest.column("status"), "ok"))
    columns = (usable.column(c).to_pylist() for c in ("id", "uri", "format", "content_hash", "bytes"))
    files: dict[str, SourceFile] = {}
    for image_id, uri, fmt, digest, size in zip(*columns, strict=True):
        files.setdefault(image_id, SourceFile(uri, fmt, digest, size))
    return files


class IndexHolder:
    def __init__(self, metadata_source: Callable[[str | None], Mapping],
                 store_for: Callable[[Mapping], ArtifactStore],
                 source_endpoint_url: str | None = None,
                 views_source: Callable[[], tuple[Mapping | None, Mapping | None]] | None = None,
                 pin_file: Path | None = None):
        """`metadata_source(version)`: the materialization metadata of that version, or of the
        latest when version is None. `store_for(metadata)`: the storage that holds it.
        `views_source()`: the latest clusters and near-duplicate groups materializations.
        `pin_file`: where the pinned version is kept (none: the pin lives in this object only)."""
        self._metadata_source = metadata_source
        self._views_source = views_source or (lambda: (None, None))
        self._store_for = store_for
        self._endpoint = source_endpoint_url
        self._lock = threading.Lock()  # one load at a time; readers never wait for it
        self.live: ServedIndex | None = None
        self._pin_file = pin_file
        self.pinned: str | None = read_pin(pin_file) if pin_file else None
        self.last_error: str | None = None

    def refresh(self) -> bool:
        """Load the wanted version if it is not live yet; True when a swap happened."""
        with self._lock:
            if self._pin_file is not None:
                self.pinned = read_pin(self._pin_file)
            try:
                metadata = self._metadata_source(self.pinned)
            except LookupError as err:
                self.last_error = str(err)
                return False
            version = metadata_value(metadata, "version")
            if self.live is None or self.live.version != version:
                try:
                    served = self._load(metadata)
                except Exception as err:  # refuse any index that does not load; keep serving
                    self.last_error = f"index {version} refused: {err}"
                    log.error(self.last_error)
                    return False
                old = self.live.version if self.live else None
                self.live = replace(served, views=self._views(self.live))
                self.last_error = None
                log.info("index %s is live (was %s)", version, old)
                return True
            views = self._views(self.live)
            if views is self.live.views:
                return False
            self.live = replace(self.live, views=views)
            return True

    def _views(self, live: ServedIndex | None) -> CollectionViews:
        """Newer clusters and duplicate groups if there are any, else the live ones."""
        current = live.views if live is not None else CollectionViews()
        try:
            clusters, duplicates = self._views_source()
            if views_identity(clusters, duplicates) == current.identity:
                return current
            views = load_views(self._store_for, clusters, duplicates)
            log.info("clusters %s and duplicate groups %s are live", *views.identity)
            return views
        except Exception as err:  # keep browsing the old ones
            log.error("clusters or duplicate groups refused: %s", err)
            return current

    def _load(self, metadata: Mapping) -> ServedIndex:
        store = self._store_for(metadata)
        model = self.live.searcher.model if self.live else None
        sentences = self.live.searcher.sentence_encoder if self.live else None
        searcher = Searcher.from_metadata(store, metadata, self._endpoint, model=model,
                                          sentence_encoder=sentences)
        if searcher.text_mode == "attached_text":
            searcher.attached_text()  # embed the phrases now, not in the first text query
        return ServedIndex(searcher, manifest_files(store))

    def pin(self, version: str | None) -> bool:
        """Pin a version (None unpins, going back to the latest) and load it now."""
        if version is not None:
            self._metadata_source(version)  # LookupError for an unknown version
        if self._pin_file is not None:
            write_pin(self._pin_file, version)
        self.pinned = version
        self.refresh()
        return self.live is not None and (version is None or self.live.version == version)


def read_pin(path: Path) -> str | None:
    """The pinned index version in a pin file; None when there is no pin."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def write_pin(path: Path, version: str | None) -> None:
    """Pin a version (written under a temporary name and renamed), or unpin (remove the file)."""
    if version is None:
        path.unlink(missing_ok=True)
    else:
        write_atomically(str(path), f"{version}\n".encode())


def instance_metadata_source(instance) -> Callable[[str | None], Mapping]:
    def source(version: str | None) -> Mapping:
        if version is None:
            return latest_index_metadata(instance)
        return index_metadata_by_version(instance, version)

    return source


def instance_views_source(instance) -> Callable[[], tuple[Mapping | None, Mapping | None]]:
    return lambda: (latest_metadata(instance, CLUSTERS_ASSET),
                    latest_metadata(instance, DUPLICATES_ASSET))

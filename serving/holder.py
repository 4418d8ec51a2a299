"""The live index of the search service, and how a newer one replaces it without a dropped request.

A request takes `holder.live` once and works on that snapshot to the end. A newer index
version (found by its build record, vsearch_pipeline.core.catalog) is loaded completely beside
the live one, and only then swapped in by a single reference assignment, so requests in flight
finish on the old index. A version that does not load (missing files, an installed model of
another version) is refused with a log line and the live index keeps serving. The models a
query may need (the image encoder, the sentence model of text search) load in the background
after a swap, so that the index answers searches by id at once (/health says what is ready).
A pinned version stays live until unpinned: the way to roll back. The pin
is kept in a file of the home (`serving_pin`), read at every refresh, so it outlives a restart and
every service process of the home follows it. The clustering and duplicate groups (`views`) are
swapped the same way when a newer one appears.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow.compute as pc

from serving.originals import SourceFile
from serving.views import CollectionViews, load_views
from vsearch_pipeline.core.artifacts import load_manifests
from vsearch_pipeline.core.catalog import ArtifactRecords
from vsearch_pipeline.core.duplicate_keepers import ImageFile, files_by_id
from vsearch_pipeline.core.layout import MANIFESTS
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
    def __init__(self, records: ArtifactRecords, source_endpoint_url: str | None = None,
                 pin_file: Path | None = None):
        """`pin_file`: where the pinned version is kept (none: the pin lives in this object)."""
        self._records = records
        self._endpoint = source_endpoint_url
        self._lock = threading.Lock()  # one load at a time; readers never wait for it
        self.live: ServedIndex | None = None
        self._pin_file = pin_file
        self.pinned: str | None = read_pin(pin_file) if pin_file else None
        self.last_error: str | None = None
        self._warming: list[threading.Thread] = []
        self._files: dict[str, list[ImageFile]] = {}
        self._files_read_from: tuple[str, ...] | None = None  # the manifests `_files` came from

    def wait_for_warm_up(self, timeout_s: float) -> None:
        """Let the models that are loading finish before the process exits: a thread still
        inside a native library's set-up when the interpreter shuts down aborts the process
        ('terminate called without an active exception')."""
        deadline = time.monotonic() + timeout_s
        for thread in self._warming:
            thread.join(max(0.0, deadline - time.monotonic()))

    def refresh(self) -> bool:
        """Load the wanted version if it is not live yet; True when a swap happened."""
        with self._lock:
            if self._pin_file is not None:
                self.pinned = read_pin(self._pin_file)
            try:
                build = self._records.index_build(self.pinned)
            except LookupError as err:
                self.last_error = str(err)
                return False
            except Exception as err:  # an unreadable record: keep serving what is live
                self.last_error = f"index records unreadable: {err}"
                log.error(self.last_error)
                return False
            version = build["version"]
            if self.live is None or self.live.version != version:
                try:
                    served = self._load(build)
                except Exception as err:  # refuse any index that does not load; keep serving
                    self.last_error = f"index {version} refused: {err}"
                    log.error(self.last_error)
                    return False
                old = self.live.version if self.live else None
                self.live = replace(served, views=self._views(self.live))
                self.last_error = None
                log.info("index %s is live (was %s)", version, old)
                self._warming = [t for t in self._warming if t.is_alive()]
                self._warming.append(warm_in_background(served.searcher))
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
            identity = self._records.views()
            if identity == current.identity:
                return current
            views = load_views(self._records.store, *identity)
            log.info("clusters %s, duplicate groups %s and insight %s are live", *views.identity)
            return views
        except Exception as err:  # keep browsing the old ones
            log.error("clusters or duplicate groups refused: %s", err)
            return current

    def _load(self, build: dict) -> ServedIndex:
        live = self.live.searcher if self.live else None
        searcher = Searcher.from_build(self._records.store, build, self._endpoint,
                                       model=live.loaded_model if live else None,
                                       sentence_encoder=live.sentence_encoder if live else None)
        return ServedIndex(searcher, manifest_files(self._records.store))

    def collection_files(self) -> dict[str, list[ImageFile]]:
        """Every usable file of every image (core.duplicate_keepers.files_by_id), read from the
        manifests once per manifest set: what a check across two parts of the collection needs,
        and more than the service keeps for every image (its first file)."""
        manifests = tuple(self._records.store.list(MANIFESTS, ".parquet"))
        if self._files_read_from != manifests:
            self._files = files_by_id(load_manifests(self._records.store))
            self._files_read_from = manifests
        return self._files

    def pin(self, version: str | None) -> bool:
        """Pin a version (None unpins, going back to the latest) and load it now."""
        if version is not None:
            self._records.index_build(version)  # LookupError for an unknown version
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


def warm_in_background(searcher: Searcher) -> threading.Thread:
    """Load what the searcher's queries need, off the request path: the image encoder, and for
    text search by attached words the sentence model with the collection's phrases, and the
    match floors of both."""
    def warm() -> None:
        try:
            searcher.match_floor("image")
            searcher.model  # noqa: B018 (loads it)
            if searcher.text_mode == "attached_text":
                searcher.attached_text()
            searcher.match_floor("text")
        except Exception as err:  # the query that needs it says why again
            log.error("index %s: a query model did not load: %s", searcher.version, err)

    thread = threading.Thread(target=warm, name=f"warm-{searcher.version}", daemon=True)
    thread.start()
    return thread

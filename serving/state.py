"""The one state every route shares: the live index, the tags, the search log, the metrics and
the serving settings, with the small steps that several routes take (bounds, folding, answers).

Routes reach it as a parameter, `state: State` (a FastAPI dependency reading `app.state`), so a
handler is a plain module-level function of its request and this state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Request, UploadFile

from serving.auth import WriteGuard
from serving.cache import VectorCache
from serving.holder import IndexHolder, ServedIndex
from serving.http import UPLOAD_REFUSALS, read_image_upload
from serving.metrics import ServiceMetrics
from serving.originals import SourceFile, original_state
from serving.search_log import SearchLog
from serving.tag_index import TagIndex
from serving.views import CollectionViews
from vsearch_pipeline.core.decode import ImageError
from vsearch_pipeline.core.store import CurationDB
from vsearch_pipeline.settings import ServingSettings

Fetch = Callable[[int], list[dict]]  # the n best results of one query
FETCH_MAX = 5_000  # results a folded answer asks the index for at most, however much folds
RELEVANCE_METHOD = ("a result matches when its score reaches what unrelated pairs of this "
                    "collection seldom reach: median + 3 robust SD of random image pairs, or the "
                    "99th percentile of unrelated text queries")


@dataclass
class ServiceState:
    holder: IndexHolder
    settings: ServingSettings
    search_log: SearchLog
    tag_index: TagIndex
    query_vectors: VectorCache
    writes: WriteGuard
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    source_uri: str | None = None
    source_endpoint_url: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def create(cls, holder: IndexHolder, settings: ServingSettings, curation: CurationDB,
               source_uri: str | None, source_endpoint_url: str | None,
               writes: WriteGuard) -> ServiceState:
        search_log = SearchLog(curation, settings.search_log_flush_s)
        return cls(holder, settings, search_log, TagIndex(curation, search_log.write),
                   VectorCache(settings.query_cache_size), writes, source_uri=source_uri,
                   source_endpoint_url=source_endpoint_url)

    # ------------------------------------------------------------------ the index, kept fresh

    def refresh(self) -> None:
        if self.holder.refresh():
            self.metrics.index_changed(self.holder.live)

    def watch(self) -> None:
        """Until stopped: a newer index, clusters or duplicate groups, and other processes' tags."""
        while not self.stop.wait(self.settings.refresh_interval_s):
            self.refresh()
            self.tag_index.reload()

    def live(self) -> ServedIndex:
        served = self.holder.live
        if served is None:
            raise HTTPException(503, self.holder.last_error or "no index is loaded yet")
        return served

    # ---------------------------------------------------------------------- query parameters

    def tagged(self, tag: str | None) -> list[str] | None:
        """The ids carrying a tag (a search filter, already an OptionalTag), or None for none."""
        if tag is None:
            return None
        ids = self.tag_index.ids_with(tag)
        if not ids:
            raise HTTPException(404, f"no image has the tag {tag!r}")
        return list(ids)

    def bounded_k(self, k: int) -> int:
        if not 1 <= k <= self.settings.max_k:
            raise HTTPException(422, f"k must be between 1 and {self.settings.max_k}, got {k}")
        return k

    def fold_or_default(self, fold: bool | None) -> bool:
        return self.settings.fold_duplicates if fold is None else fold

    # ------------------------------------------------------------------------------- uploads

    async def read_upload(self, file: UploadFile) -> bytes:
        try:
            data, _ = await read_image_upload(file, self.settings.max_upload_bytes)
        except ImageError as err:
            raise HTTPException(UPLOAD_REFUSALS[err.status],
                                f"{file.filename or 'the upload'} is not a usable image "
                                f"({err.status}): {err.reason}") from None
        return data

    def embed_upload(self, served: ServedIndex, data: bytes,
                     box: tuple[int, int, int, int] | None) -> np.ndarray:
        """The upload's vector; its pixel count is checked from the header, before decoding."""
        started = time.perf_counter()
        try:
            vector = served.searcher.embed_bytes(data, box,
                                                 max_pixels=self.settings.max_upload_pixels)
        except ImageError as err:
            raise HTTPException(UPLOAD_REFUSALS.get(err.status, 400),
                                f"the upload is not a usable image ({err.status}): {err.reason}"
                                ) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        self.metrics.embed_seconds.observe(time.perf_counter() - started)
        return vector

    def cached_vector(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        vector, hit = self.query_vectors.get_or_compute(key, compute)
        self.metrics.cache.labels("hit" if hit else "miss").inc()
        return vector

    # ------------------------------------------------------------------------------- answers

    def answer(self, served: ServedIndex, fetch: Fetch, k: int, started: float,
               endpoint: str, query: str, tag: str | None, fold: bool, floor: float | None,
               **extra) -> dict:
        """The one shape of every search answer, logged in the search log: `k` result cards
        from `fetch` (the n best results of the query), near-duplicates folded under their
        card when `fold` (`fold_results`). Each result says whether it `match`es (its score
        reaches the collection's floor, core.relevance)."""
        shown = self.cards(served, fetch, k, fold)
        for result in shown:
            result["match"] = floor is None or result["score"] >= floor
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        query_id = self.search_log.served(endpoint, query, shown, k, served.version, latency_ms,
                                          tag)
        return {"results": shown, "k": k, "index_version": served.version,
                "latency_ms": latency_ms, "query_id": query_id,
                "folded": sum(len(r["duplicates"]) for r in shown),
                "relevance": {"floor": floor, "matches": sum(r["match"] for r in shown),
                              "method": RELEVANCE_METHOD}, **extra}

    def cards(self, served: ServedIndex, fetch: Fetch, k: int, fold: bool) -> list[dict]:
        """k result cards. Folded duplicates do not count: while folding leaves fewer than k
        cards and the index has more, it is asked again for twice as many."""
        asked = k
        while True:
            results = fetch(asked)
            cards = fold_results(results, served.views, fold, served.searcher.describe)
            if len(cards) >= k or len(results) < asked or asked >= FETCH_MAX:
                break
            asked = min(2 * asked, FETCH_MAX)
        for card in cards[:k]:
            image_entry(card, served.files)
            for duplicate in card["duplicates"]:
                image_entry(duplicate, served.files)
        return cards[:k]

    def images(self, served: ServedIndex, ids: list[str],
               tags: dict[str, list[str]] | None = None) -> list[dict]:
        """Gallery entries: where each image is, its tags and predicted labels."""
        tags = self.tag_index.tags_by_id() if tags is None else tags
        loaded = served.searcher.loaded
        rows = []
        for image_id in ids:
            position = loaded.position_of.get(image_id)
            path = loaded.paths[position] if position is not None else None
            found = served.files.get(image_id)
            rows.append(image_entry({"id": image_id, "path": path,
                                     "uri": found.uri if found else None,
                                     "tags": tags.get(image_id, []),
                                     "labels": loaded.labels_of(image_id)}, served.files))
        return rows


async def service_state(request: Request) -> ServiceState:
    """The app's state (async, so that it costs no thread hop per request)."""
    return request.app.state.service


State = Annotated[ServiceState, Depends(service_state)]


def image_entry(row: dict, files: dict[str, SourceFile]) -> dict:
    """A listed image: its URLs, and whether its original is still in the source as indexed."""
    row["image_url"] = f"/images/{row['id']}"
    row["thumbnail_url"] = f"/images/{row['id']}/thumbnail"
    row["original"] = original_state(files.get(row["id"]))
    return row


def fold_results(results: list[dict], views: CollectionViews, enabled: bool,
                 describe: Callable[[list[str]], list[dict]]) -> list[dict]:
    """One card per near-duplicate group, as the pipeline decided the groups: a result whose
    group has a better-ranked card goes under that card, in `duplicates`, followed by the
    group's members the results did not reach (`describe`d, score None), so that a card
    carries its whole group and a tag given to it reaches every member."""
    cards: list[dict] = []
    card_of: dict[int, dict] = {}
    for result in results:
        group = views.group_of.get(result["id"]) if enabled else None
        if group in card_of:
            card_of[group]["duplicates"].append(result)
            continue
        card = {**result, "rank": len(cards) + 1, "duplicates": []}
        cards.append(card)
        if group is not None:
            card_of[group], card["group"] = card, group
    for group, card in card_of.items():
        members = views.duplicate_groups[group]
        reached = {card["id"], *(d["id"] for d in card["duplicates"])}
        card["duplicates"] += [{**row, "score": None}
                               for row in describe([i for i in members if i not in reached])]
        card["group_size"] = len(members)
    return cards

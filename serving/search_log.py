"""Every result list the service shows, logged for click-through figures without slowing a search.

A search hands its results to `SearchLog.served` and returns at once; one writer thread stores
what accumulated in a single DuckDB transaction every `flush_interval_s` (and at shutdown), so
the disk is touched about once a second however many searches arrive. Clicks and ratings look
their search up among the recent ones in memory first, then in the database.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections import OrderedDict

from vsearch_pipeline.core.store import CurationDB

log = logging.getLogger("vsearch.serving")


class SearchLog:
    def __init__(self, db: CurationDB, flush_interval_s: float = 1.0, recent: int = 10_000):
        self.db = db
        self.flush_interval_s = flush_interval_s
        self._pending: list[dict] = []
        self._recent: OrderedDict[str, tuple[str, dict[str, int]]] = OrderedDict()
        self._recent_size = recent
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    def served(self, endpoint: str, query: str, results: list[dict], k: int, index_version: str,
               latency_ms: float, tag: str | None = None) -> str:
        """Log one result list; returns its query id (what clicks and ratings refer to)."""
        query_id = uuid.uuid4().hex
        record = {"query_id": query_id, "served_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
                  "endpoint": endpoint, "query": query, "tag": tag, "k": k,
                  "index_version": index_version, "latency_ms": latency_ms,
                  "results": [(r["rank"], r["id"], r["score"]) for r in results]}
        with self._lock:
            self._pending.append(record)
            self._recent[query_id] = (query, {r["id"]: r["rank"] for r in results})
            while len(self._recent) > self._recent_size:
                self._recent.popitem(last=False)
        return query_id

    def search_of(self, query_id: str) -> tuple[str, dict[str, int]] | None:
        """The query and the rank of each image shown, or None for an unknown query id."""
        with self._lock:
            found = self._recent.get(query_id)
        return found if found is not None else self.db.search_of(query_id)

    def flush(self) -> int:
        """Store what is pending; returns how many result lists were written."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                self.db.record_searches(batch)
            except Exception:  # keep the batch for the next flush rather than lose it
                log.exception("could not store %d searches; will retry", len(batch))
                with self._lock:
                    self._pending[:0] = batch
                return 0
            return len(batch)

    def start(self) -> None:
        self._writer = threading.Thread(target=self._run, name="search-log", daemon=True)
        self._writer.start()

    def close(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join()
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            self.flush()

"""Every write of the search service to `curation.duckdb`, grouped into few transactions.

A search hands its results to `SearchLog.served` and returns at once; one writer thread stores
what accumulated in a single DuckDB transaction every `flush_interval_s` (and at shutdown), so
the disk is touched about once a second however many searches arrive. Clicks and ratings look
their search up among the recent ones in memory first, then in the database.

Tags, clicks and ratings go through `SearchLog.write`: the change joins the next transaction,
the writer is woken at once, and the request returns when that transaction has committed, so an
acknowledged write is stored. Opening the file is most of a write's cost (DuckDB lets one
process at a time hold it, so no connection is kept open between transactions), and writes
arriving together share one opening instead of queueing for one each.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import duckdb

from vsearch_pipeline.core.store import CurationDB

Result = TypeVar("Result")

log = logging.getLogger("vsearch.serving")


class SearchLog:
    def __init__(self, db: CurationDB, flush_interval_s: float = 1.0, recent: int = 10_000):
        self.db = db
        self.flush_interval_s = flush_interval_s
        self._pending: list[dict] = []
        self._changes: list[tuple[Callable[[duckdb.DuckDBPyConnection], object], Future]] = []
        self._wake = threading.Event()
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

    def write(self, change: Callable[[duckdb.DuckDBPyConnection], Result]) -> Result:
        """Run `change(connection)` in the next transaction and return its result once that has
        committed (or raise what made it fail). The change must not fail on valid input: check
        the request before, since a change that raises rolls back the others it shares with."""
        done: Future = Future()
        with self._lock:
            self._changes.append((change, done))
        if self._writer is not None and self._writer.is_alive():
            self._wake.set()
        else:
            self.flush()
        return done.result()

    def flush(self) -> int:
        """Store the pending result lists and changes in one transaction; returns how many result
        lists were written. Result lists that fail are kept for the next flush; the changes'
        requests get the error."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                changes, self._changes = self._changes, []
            if not batch and not changes:
                return 0
            try:
                with self.db.transaction() as con:
                    self.db.insert_searches(con, batch)
                    results = [change(con) for change, _ in changes]
            except Exception as err:  # keep the result lists for the next flush rather than lose them
                log.exception("could not store %d searches and %d changes", len(batch), len(changes))
                with self._lock:
                    self._pending[:0] = batch
                for _, done in changes:
                    done.set_exception(err)
                return 0
            for (_, done), result in zip(changes, results, strict=True):
                done.set_result(result)
            return len(batch)

    def start(self) -> None:
        self._writer = threading.Thread(target=self._run, name="search-log", daemon=True)
        self._writer.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._writer is not None:
            self._writer.join()
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

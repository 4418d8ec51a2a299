"""The search service: FastAPI over the artifacts the pipeline wrote.

Started by `vsearch serve --home DIR`. `create_app` only wires: one `ServiceState` (serving.state)
shared by the routers of each concern (serving.routers: search, collection, curation, browsing,
operations), the guards and body limits of this app's settings (serving.access), and the
middleware. Every search answers in one shape:
``{"results": [{rank, id, score, match, uri, path, image_url, thumbnail_url, original,
duplicates}], "k", "index_version", "latency_ms", "query_id", "folded", "relevance"}``; `match`
says whether the score reaches the collection's match floor (`relevance`, core.relevance);
`duplicates` holds the results folded under this one as its near-duplicates (by pHash),
`original` whether the file is still in the source as indexed (serving.originals), and
`query_id` is what clicks and ratings name.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles

from serving.access import Access
from serving.auth import ApiKeys, WriteGuard
from serving.holder import IndexHolder
from serving.http import JSON_BODY_LIMIT, ObservedRequests, Service, invalid_request
from serving.limits import RateLimit, TokenBuckets, client_of
from serving.routers import browsing, collection, curation, insight, operations, search
from serving.state import ServiceState
from vsearch_pipeline.core.catalog import ArtifactRecords
from vsearch_pipeline.core.layout import HomeLayout
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import CurationDB
from vsearch_pipeline.settings import ServingSettings, Settings

ROUTERS = (browsing, operations, search, collection, curation, insight)


def create_app(holder: IndexHolder, settings: ServingSettings, curation: CurationDB,
               source_endpoint_url: str | None = None, *, source_uri: str | None = None,
               local_writes: bool = False, report: Callable[[], str] | None = None) -> FastAPI:
    """The service; `local_writes` (for a service bound to loopback) lets the person at the
    machine write without a key while there is no keys file (serving.auth.WriteGuard)."""
    keys = ApiKeys(settings.api_keys_file)
    guard = WriteGuard(keys, local_without_key=local_writes)
    state = ServiceState.create(holder, settings, curation, source_uri, source_endpoint_url,
                                guard)
    app = Service(title="vsearch", version="0.1.0", lifespan=lifespan,
                  max_body_size=JSON_BODY_LIMIT,
                  description="Visual search over a collection materialized by the vsearch "
                              "pipeline.")
    app.state.service = state
    app.state.report = report  # the collection report's page, None where there is no home
    app.state.search_log = state.search_log
    app.state.query_vectors = state.query_vectors
    app.add_exception_handler(RequestValidationError, invalid_request)
    if settings.rate_limit_per_s > 0:
        app.add_middleware(RateLimit, identify=client_of(keys), buckets=TokenBuckets(
            settings.rate_limit_per_s, settings.rate_limit_burst))
    app.add_middleware(ObservedRequests, metrics=state.metrics)  # outside the limit: 429s count
    app.mount("/static", StaticFiles(directory=browsing.WEB_DIR), name="static")
    access = Access.of(settings, guard)
    for routes in ROUTERS:
        app.include_router(routes.router(access))
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the index, watch for newer ones and for other processes' tags, flush the log."""
    state: ServiceState = app.state.service
    state.refresh()
    threading.Thread(target=state.watch, name="index-watcher", daemon=True).start()
    state.search_log.start()
    yield
    state.stop.set()
    state.search_log.close()
    state.holder.wait_for_warm_up(timeout_s=60)


def app_for_home(home: Path, settings: Settings, *, local_writes: bool = False) -> FastAPI:
    """The service for a vsearch home: the index versions, clusters and duplicate groups of its
    storage, as their records name them (no Dagster: the service reads what the pipeline wrote).
    Its keys file is serving.api_keys_file, else the home's own (where `vsearch api-key create`
    puts keys)."""
    layout = HomeLayout(home)
    serving = settings.serving.model_copy(
        update={"api_keys_file": settings.serving.api_keys_file or str(layout.api_keys)})
    store = ArtifactStore(settings.artifacts_root(home), settings.storage.endpoint_url)
    holder = IndexHolder(ArtifactRecords(store, settings.model.spec.key),
                         settings.source.endpoint_url, pin_file=layout.pin_file)
    curation = CurationDB(str(layout.curation_db))
    return create_app(holder, serving, curation, settings.source.endpoint_url,
                      source_uri=settings.source.uri, local_writes=local_writes,
                      report=lambda: report_page(home, settings))


def report_page(home: Path, settings: Settings) -> str:
    """`vsearch report --html` for the home, as the service's /report answers it."""
    from vsearch_pipeline.collection_report import gather_report
    from vsearch_pipeline.core.report_page import render_report

    return render_report(gather_report(home, settings))


def serve_until_stopped(app: FastAPI, host: str, port: int, say: Callable[[str], None],
                        ready_line: Callable[[], str]) -> None:
    """Serve until Ctrl-C or SIGTERM, quietly: `ready_line()` is said once the index is loaded
    and the port is listening, and one line when the service has stopped; uvicorn says only
    warnings and errors (a port in use, say)."""
    import uvicorn

    class Announcing(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                say(ready_line())

        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets)
            say("stopped: every request in flight was answered and the search log written")

    # No access log: every request is counted and timed in /metrics and every search is in the
    # search log, and formatting a log line per request cost 9% of the service's CPU under load.
    # uvicorn shuts down gracefully on SIGTERM, then raises it again for its default action, so a
    # clean stop ended 'killed by SIGTERM'; here that ends the process with status 0, as Ctrl-C does.
    # Ctrl-C likewise (not click's 'Aborted!' and status 1 after a clean stop).
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda _signum, _frame: sys.exit(0))
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning")
    Announcing(config).run()

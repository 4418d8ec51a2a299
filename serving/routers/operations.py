"""Running the service: health and readiness, Prometheus figures, pinning an index version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.access import Access
from serving.holder import ServedIndex
from serving.state import ServiceState, State


def health(state: State) -> dict:
    # No docstring: it would become the route's OpenAPI description, which has none.
    # `ready`: searches by id answer at once; by image and by text once their models have loaded.
    served, holder = state.holder.live, state.holder
    return {"status": "ok" if served else "no_index",
            "index_version": served.version if served else None,
            "pinned": holder.pinned, "last_error": holder.last_error,
            "vectors": served.searcher.loaded.index.ntotal if served else 0,
            "text_search": served.searcher.text_mode if served else None,
            "ready": ready(served),
            "clusters": served.views.identity[0] if served else None,
            "duplicates": served.views.identity[1] if served else None,
            "public_reads": state.settings.public_reads,  # the page sends its key for images if not
            "writes": state.writes.mode()}  # api_key | this_machine | off


def ready(served: ServedIndex | None) -> dict:
    """What answers now without loading first: searches by id, by image, by text."""
    searcher = served.searcher if served else None
    return {"similar": searcher is not None,
            "image_search": searcher is not None and searcher.loaded_model is not None,
            "text_search": searcher is not None and searcher.text_ready}


def prometheus(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def pin(state: State,
        version: Annotated[str, Query(description="An index version to keep live")]) -> dict:
    """Keep one index version live (roll back); it stays until unpinned."""
    try:
        state.holder.pin(version)
    except LookupError as err:
        raise HTTPException(404, str(err)) from None
    return pinned(state)


def unpin(state: State) -> dict:
    """Go back to following the latest materialization."""
    state.holder.pin(None)
    return pinned(state)


def pinned(state: ServiceState) -> dict:
    state.metrics.index_changed(state.holder.live)
    return health(state)


def router(access: Access) -> APIRouter:
    routes = APIRouter()
    routes.add_api_route("/health", health, methods=["GET"])
    routes.add_api_route("/metrics", prometheus, methods=["GET"], dependencies=access.reads)
    routes.add_api_route("/index/pin", pin, methods=["PUT"], dependencies=access.writes)
    routes.add_api_route("/index/pin", unpin, methods=["DELETE"], dependencies=access.writes)
    return routes

"""Adding to the collection: uploads written into the source, where the sensor picks them up."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from serving.access import Access
from serving.http import read_image_upload
from serving.state import State
from vsearch_pipeline.core.decode import ImageError
from vsearch_pipeline.core.image_sink import ImageSink

log = logging.getLogger("vsearch.serving")


async def ingest(state: State, request: Request,
                 files: Annotated[list[UploadFile], File(description="One or more images")]) -> dict:
    """Add uploaded images to the collection (needs an API key): each is written into the
    source's `ingest/` folder under its content-addressed name, where the sensor picks it up
    as part of a new batch. Each file gets its id, or an `error` with the reason; 400 when
    none is usable."""
    if not state.source_uri:
        raise HTTPException(503, "no source is configured (source.uri), so there is nowhere "
                                 "to put uploads")
    if len(files) > state.settings.max_embed_files:
        raise HTTPException(413, f"{len(files)} files; at most {state.settings.max_embed_files} "
                                 "per request")
    sink = ImageSink(state.source_uri, state.source_endpoint_url, prefix="ingest")
    entries = [await ingest_one(sink, upload, state.settings.max_upload_bytes) for upload in files]
    if all("error" in e for e in entries):
        raise HTTPException(400, "; ".join(f"{e['filename']}: {e['error']}" for e in entries))
    log.info("ingest by key %r: %s", request.state.api_key_name,
             ", ".join(f"{e['filename']} -> {e.get('id', e.get('status'))}" for e in entries))
    return {"files": entries, "stored": sum(e.get("existed") is False for e in entries),
            "existed": sum(e.get("existed") is True for e in entries),
            "refused": sum("error" in e for e in entries)}


async def ingest_one(sink: ImageSink, upload: UploadFile, limit: int) -> dict:
    try:
        data, fmt = await read_image_upload(upload, limit)
    except ImageError as err:
        return {"filename": upload.filename, "status": err.status, "error": err.reason}
    stored = await run_in_threadpool(sink.put, data, fmt)
    return {"filename": upload.filename, "id": stored.id, "uri": stored.uri,
            "path": stored.path, "format": stored.format, "bytes": stored.bytes,
            "existed": stored.existed}


def router(access: Access) -> APIRouter:
    routes = APIRouter()
    routes.add_api_route("/ingest", ingest, methods=["POST"], dependencies=access.writes,
                         max_body_size=access.many_uploads)
    return routes

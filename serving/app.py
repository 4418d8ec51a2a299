"""The search service: FastAPI over the artifacts the pipeline materialized.

Started by `vsearch serve --home DIR`. Every search answers in one shape:
``{"results": [{rank, id, score, uri, path, image_url}], "latency_ms", "index_version", "k"}``.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import Response
from PIL import Image
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel
from pydantic import Field as PydanticField

from serving.holder import IndexHolder, ServedIndex, instance_metadata_source
from vsearch_pipeline.catalog import metadata_value
from vsearch_pipeline.core.decode import ImageError, decode_rgb
from vsearch_pipeline.core.sources import read_object
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import CurationDB
from vsearch_pipeline.search import parse_bbox
from vsearch_pipeline.settings import ServingSettings, Settings

MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png",
               "WEBP": "image/webp", "BMP": "image/bmp", "GIF": "image/gif",
               "TIFF": "image/tiff", "PPM": "image/x-portable-anymap"}


class ServiceMetrics:
    """Prometheus figures of one app (its own registry, so several apps can live in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vsearch_requests_total", "Requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("vsearch_request_seconds", "Request latency by endpoint",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.embed_seconds = Histogram("vsearch_embed_seconds", "Time to embed a query image",
                                       registry=self.registry)
        self.index_size = Gauge("vsearch_index_vectors", "Vectors in the live index",
                                registry=self.registry)
        self.index_info = Gauge("vsearch_index_info", "The live index version",
                                ["version", "index_type", "model"], registry=self.registry)
        self.errors = Counter("vsearch_errors_total", "Requests answered with an error",
                              ["endpoint", "kind"], registry=self.registry)

    def index_changed(self, served: ServedIndex | None) -> None:
        self.index_info.clear()
        if served is None:
            return
        build = served.searcher.loaded.build
        self.index_size.set(build["count"])
        self.index_info.labels(build["version"], build["params"]["index_type"],
                               build["model_key"]).set(1)


def _answer(served: ServedIndex, results: list[dict], k: int, started: float) -> dict:
    for row in results:
        row["image_url"] = f"/images/{row['id']}"
    return {"results": results, "k": k, "index_version": served.version,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


class TagRequest(BaseModel):
    ids: list[str] = PydanticField(min_length=1, max_length=100_000)
    tag: str


def create_app(holder: IndexHolder, settings: ServingSettings, curation: CurationDB,
               source_endpoint_url: str | None = None) -> FastAPI:
    metrics = ServiceMetrics()
    stop = threading.Event()

    def refresh() -> None:
        if holder.refresh():
            metrics.index_changed(holder.live)

    def watch() -> None:
        while not stop.wait(settings.refresh_interval_s):
            refresh()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        refresh()
        watcher = threading.Thread(target=watch, name="index-watcher", daemon=True)
        watcher.start()
        yield
        stop.set()

    app = FastAPI(title="vsearch", version="0.1.0", lifespan=lifespan,
                  description="Visual search over a collection materialized by the vsearch "
                              "pipeline.")

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable):
        started = time.perf_counter()
        response = await call_next(request)
        endpoint = getattr(request.scope.get("route"), "path", "unmatched")  # the route template
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        if response.status_code >= 400:
            metrics.errors.labels(endpoint, str(response.status_code)).inc()
        return response

    def live() -> ServedIndex:
        served = holder.live
        if served is None:
            raise HTTPException(503, holder.last_error or "no index is loaded yet")
        return served

    def tagged(tag: str | None) -> list[str] | None:
        """The ids carrying a tag (a search filter), or None for no filter."""
        if tag is None:
            return None
        ids = curation.ids_with_tag(tag)
        if not ids:
            raise HTTPException(404, f"no image has the tag {tag!r}")
        return ids

    def bounded_k(k: int) -> int:
        if not 1 <= k <= settings.max_k:
            raise HTTPException(422, f"k must be between 1 and {settings.max_k}, got {k}")
        return k

    @app.get("/health")
    def health() -> dict:
        served = holder.live
        return {"status": "ok" if served else "no_index",
                "index_version": served.version if served else None,
                "pinned": holder.pinned, "last_error": holder.last_error,
                "vectors": served.searcher.loaded.index.ntotal if served else 0}

    @app.get("/similar/{image_id}")
    def similar(image_id: str, k: int = 50, tag: str | None = None) -> dict:
        """The nearest images to one already in the collection (itself left out)."""
        started, served, k = time.perf_counter(), live(), bounded_k(k)
        try:
            results = served.searcher.by_id(image_id, k, only=tagged(tag))
        except KeyError as err:
            raise HTTPException(404, err.args[0]) from None
        return _answer(served, results, k, started)

    @app.post("/search")
    async def search(file: Annotated[UploadFile, File(description="The query image")],
                     bbox: Annotated[str | None, Form(description="Crop x1,y1,x2,y2 in pixels")] = None,
                     k: Annotated[int, Form()] = 50,
                     tag: Annotated[str | None, Form(description="Only images with this tag")] = None,
                     ) -> dict:
        """The nearest images to an uploaded image, or to a crop box of it."""
        started, served, k = time.perf_counter(), live(), bounded_k(k)
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, f"the upload is over {settings.max_upload_bytes} bytes")
        try:
            box = parse_bbox(bbox)
            embed_started = time.perf_counter()
            vector = served.searcher.embed_bytes(data, box)
            metrics.embed_seconds.observe(time.perf_counter() - embed_started)
        except ImageError as err:
            raise HTTPException(400, f"the upload is not a usable image ({err.status}): "
                                     f"{err.reason}") from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        results = served.searcher.by_vector(vector, k, only=tagged(tag))
        return _answer(served, results, k, started)

    @app.post("/tags")
    def add_tags(request: TagRequest) -> dict:
        """Apply a tag to images of the collection."""
        unknown = [i for i in request.ids if i not in live().files]
        if unknown:
            raise HTTPException(404, f"no images with ids {unknown[:20]}")
        try:
            added = curation.add_tag(request.ids, request.tag)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return {"tag": request.tag.strip(), "added": added}

    @app.delete("/tags")
    def remove_tags(request: TagRequest) -> dict:
        """Take a tag off images."""
        removed = curation.remove_tag(request.ids, request.tag)
        if not removed and not curation.ids_with_tag(request.tag):
            raise HTTPException(404, f"no image has the tag {request.tag!r}")
        return {"tag": request.tag, "removed": removed}

    @app.get("/tags")
    def list_tags() -> dict:
        """Every tag with the number of images that carry it."""
        return {"tags": [{"tag": t, "count": n} for t, n in curation.tag_counts().items()]}

    def _image_bytes(image_id: str) -> tuple[bytes, str]:
        found = live().files.get(image_id)
        if found is None:
            raise HTTPException(404, f"no image with id {image_id!r}")
        uri, fmt = found
        return read_object(uri, source_endpoint_url), fmt

    @app.get("/images/{image_id}")
    def image(image_id: str) -> Response:
        """The original file of an image in the collection (ids only, never paths)."""
        data, fmt = _image_bytes(image_id)
        return Response(data, media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"),
                        headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/images/{image_id}/thumbnail")
    def thumbnail(image_id: str, size: Annotated[int, Query(ge=16, le=1024)] = 256) -> Response:
        """A JPEG no larger than size x size."""
        data, _ = _image_bytes(image_id)
        picture: Image.Image = decode_rgb(data, min_size=size)
        picture.thumbnail((size, size))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=85)
        return Response(out.getvalue(), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.put("/index/pin")
    def pin(version: Annotated[str, Query(description="An index version to keep live")]) -> dict:
        """Keep one index version live (roll back); it stays until unpinned."""
        try:
            holder.pin(version)
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        metrics.index_changed(holder.live)
        return health()

    @app.delete("/index/pin")
    def unpin() -> dict:
        """Go back to following the latest materialization."""
        holder.pin(None)
        metrics.index_changed(holder.live)
        return health()

    return app


def app_for_home(home: Path, settings: Settings) -> FastAPI:
    """The service for a vsearch home: its Dagster instance finds the index materializations."""
    from vsearch_pipeline.runner import open_instance

    instance = open_instance(home)

    def store_for(metadata) -> ArtifactStore:
        return ArtifactStore(metadata_value(metadata, "storage_root"), settings.storage.endpoint_url)

    holder = IndexHolder(instance_metadata_source(instance), store_for,
                         settings.source.endpoint_url)
    curation = CurationDB(str(home / "curation.duckdb"))
    return create_app(holder, settings.serving, curation, settings.source.endpoint_url)

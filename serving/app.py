"""The search service: FastAPI over the artifacts the pipeline materialized.

Started by `vsearch serve --home DIR`. Every search answers in one shape:
``{"results": [{rank, id, score, uri, path, image_url, thumbnail_url, original, duplicates}],
"k", "index_version", "latency_ms", "query_id", "folded"}``; `duplicates` holds the results folded
under this one as its near-duplicates (by pHash), `original` whether the file is still in the
source as indexed (serving.originals), and `query_id` is what clicks and ratings name.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import AfterValidator, BaseModel
from pydantic import Field as PydanticField
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import ApiKeys, api_key_guard
from serving.cache import VectorCache
from serving.holder import (
    IndexHolder,
    ServedIndex,
    instance_metadata_source,
    instance_views_source,
)
from serving.limits import RateLimit, TokenBuckets, client_of
from serving.originals import OriginalUnavailable, SourceFile, original_state, read_original
from serving.search_log import SearchLog
from serving.tag_index import TagIndex
from vsearch_pipeline.catalog import metadata_value
from vsearch_pipeline.core.cluster import suggest_name
from vsearch_pipeline.core.decode import (
    SNIFF_BYTES,
    ImageError,
    decode_rgb,
    sniff_image_format,
    sniff_unsupported_format,
)
from vsearch_pipeline.core.hashing import fold_near_duplicates
from vsearch_pipeline.core.image_sink import ImageSink
from vsearch_pipeline.core.sources import SourceUnreachableError
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import CurationDB, insert_click, insert_rating, normalize_tag
from vsearch_pipeline.search import parse_bbox
from vsearch_pipeline.settings import ServingSettings, Settings

log = logging.getLogger("vsearch.serving")
WEB_DIR = Path(__file__).resolve().parent / "web"
MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png",
               "WEBP": "image/webp", "BMP": "image/bmp", "GIF": "image/gif",
               "TIFF": "image/tiff", "PPM": "image/x-portable-anymap", "AVIF": "image/avif"}
JSON_BODY_LIMIT = 4 * 1024 * 1024  # a request without an upload: 100,000 ids to tag fit
FORM_OVERHEAD = 64 * 1024  # multipart headers and the small form fields beside an upload
UPLOAD_REFUSALS = {"empty": 400, "too_large": 413, "not_image": 415, "unsupported_format": 415,
                   "bad_aspect": 422}
UNAVAILABLE_ORIGINALS = {"missing": 410, "changed": 409}  # OriginalUnavailable.state -> status
MAX_OFFSET = 2**31 - 1  # pages start below it: a larger int is refused, not sliced with
ClusterLabel = Annotated[int, PathParam(ge=-(2**63), le=2**63 - 1)]  # labels are stored as int64


async def read_image_upload(upload: UploadFile, limit: int) -> tuple[bytes, str]:
    """An upload's bytes and image format, or ImageError with the manifest's status: the size
    is checked before more than `limit` bytes are read, and the format comes from the bytes,
    never from the file name or the declared content type."""
    if upload.size is not None and upload.size > limit:
        raise ImageError("too_large", f"over {limit} bytes")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageError("too_large", f"over {limit} bytes")
    if not data:
        raise ImageError("empty", "the file is empty")
    fmt = sniff_image_format(data[:SNIFF_BYTES])
    named = None if fmt else sniff_unsupported_format(data[:SNIFF_BYTES])
    if named:
        raise ImageError("unsupported_format", f"{named} files are not supported")
    if fmt is None:
        raise ImageError("not_image", "its bytes are not JPEG, PNG, GIF, TIFF, WEBP, BMP or AVIF "
                                      "(the file name and the declared content type are not "
                                      "trusted)")
    return data, fmt


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
        self.cache = Counter("vsearch_query_cache_total", "Query embeddings found in the cache or not",
                             ["outcome"], registry=self.registry)

    def index_changed(self, served: ServedIndex | None) -> None:
        self.index_info.clear()
        if served is None:
            return
        build = served.searcher.loaded.build
        self.index_size.set(build["count"])
        self.index_info.labels(build["version"], build["params"]["index_type"],
                               build["model_key"]).set(1)


class ObservedRequests:
    """Counts and times every request by its route template, as a plain ASGI middleware:
    Starlette's BaseHTTPMiddleware adds a task group and a body stream to each request, which
    cost more than a /similar search does."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")  # the route template
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()


class NoSniff:
    """`X-Content-Type-Options: nosniff` on every answer, so that a browser takes each as the type
    it is declared, never as what its bytes look like (an image whose bytes read as HTML stays an
    image)."""

    HEADER = (b"x-content-type-options", b"nosniff")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != self.HEADER[0]]
                message = {**message, "headers": [*headers, self.HEADER]}
            await send(message)

        await self.app(scope, receive, send_nosniff)


class Service(FastAPI):
    """The app, with NoSniff outside even Starlette's own error middleware, so that its 500s
    carry the header too (`add_middleware` can only go inside that one)."""

    def build_middleware_stack(self) -> ASGIApp:
        return NoSniff(super().build_middleware_stack())


def _unicode_text(value: str) -> str:
    """JSON can carry lone surrogates (\\ud800), which are no text and cannot be stored."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]


def _optional_tag(value: str | None) -> str | None:
    """An empty field is no tag; any other text is a tag in its one stored form."""
    return None if value is None or value == "" else normalize_tag(value)


TagText = Annotated[Text, AfterValidator(normalize_tag)]  # every path that takes a tag: one form
OptionalTag = Annotated[Text | None, AfterValidator(_optional_tag)]


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an answer that echoes a request's input stays
    renderable whatever the input held (JSON can carry lone surrogates; UTF-8 cannot)."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


ECHO_DEPTH = 16  # how deep a 422 echoes the input it refuses


def _echoable(value, depth: int = 0):
    """`value` as a 422 can echo it: each NaN or infinity as its name (Python's JSON reader takes
    `NaN`, `Infinity` and `1e400` in a body; no JSON answer can hold them), and what is nested
    deeper than ECHO_DEPTH as "..." (a body nested 800 deep is JSON that the reader takes, but
    rendering it back would recurse past Python's limit)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan, inf, -inf
    if isinstance(value, dict | list | tuple) and depth >= ECHO_DEPTH:
        return "..."
    if isinstance(value, dict):
        return {key: _echoable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_echoable(item, depth + 1) for item in value]
    return value


async def invalid_request(_: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a request that does not fit the schema, rendered safely."""
    return AsciiJSONResponse({"detail": jsonable_encoder(_echoable(err.errors()))}, status_code=422)


class TagRequest(BaseModel):
    ids: list[Text] = PydanticField(min_length=1, max_length=100_000)
    tag: TagText


class ClusterTagRequest(BaseModel):
    tag: OptionalTag = PydanticField(None, description="The tag; none (or empty) accepts the "
                                                       "suggested name")


class ClickRequest(BaseModel):
    query_id: Text = PydanticField(max_length=64)
    id: Text = PydanticField(max_length=64)


class FeedbackRequest(ClickRequest):
    relevant: bool


def _image_entry(row: dict, files: dict[str, SourceFile]) -> dict:
    """A listed image: its URLs, and whether its original is still in the source as indexed."""
    row["image_url"] = f"/images/{row['id']}"
    row["thumbnail_url"] = f"/images/{row['id']}/thumbnail"
    row["original"] = original_state(files.get(row["id"]))
    return row


def fold_results(results: list[dict], views, enabled: bool,
                 files: dict[str, SourceFile]) -> list[dict]:
    """Results that are near-duplicates of a better-ranked one go under it, in `duplicates`."""
    if not enabled or views.fold_threshold is None:
        return [{**_image_entry(r, files), "duplicates": []} for r in results]
    hashes = [views.phash.get(r["id"]) for r in results]
    folded = []
    for rank, members in enumerate(fold_near_duplicates(hashes, views.fold_threshold), start=1):
        leader = {**_image_entry(results[members[0]], files), "rank": rank}
        leader["duplicates"] = [
            {**_image_entry({k: results[m][k] for k in ("id", "score", "uri", "path")}, files),
             "distance": int(bin(hashes[m] ^ hashes[members[0]]).count("1"))}
            for m in members[1:]]
        folded.append(leader)
    return folded


def create_app(holder: IndexHolder, settings: ServingSettings, curation: CurationDB,
               source_endpoint_url: str | None = None, *, source_uri: str | None = None) -> FastAPI:
    metrics = ServiceMetrics()
    search_log = SearchLog(curation, settings.search_log_flush_s)
    query_vectors = VectorCache(settings.query_cache_size)
    tag_index = TagIndex(curation, search_log.write)
    stop = threading.Event()

    def refresh() -> None:
        if holder.refresh():
            metrics.index_changed(holder.live)

    def watch() -> None:
        while not stop.wait(settings.refresh_interval_s):
            refresh()
            tag_index.reload()  # tags other processes wrote

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        refresh()
        watcher = threading.Thread(target=watch, name="index-watcher", daemon=True)
        watcher.start()
        search_log.start()
        yield
        stop.set()
        search_log.close()

    app = Service(title="vsearch", version="0.1.0", lifespan=lifespan, max_body_size=JSON_BODY_LIMIT,
                  description="Visual search over a collection materialized by the vsearch "
                              "pipeline.")
    app.state.search_log = search_log
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.state.query_vectors = query_vectors

    keys = ApiKeys(settings.api_keys_file)
    if settings.rate_limit_per_s > 0:
        app.add_middleware(RateLimit, identify=client_of(keys), buckets=TokenBuckets(
            settings.rate_limit_per_s, settings.rate_limit_burst))
    app.add_middleware(ObservedRequests, metrics=metrics)  # outside the limit: 429s are counted
    writes = [Depends(api_key_guard(keys))]  # every endpoint that writes
    reads = [] if settings.public_reads else writes
    clicks = [] if settings.public_clicks else writes
    one_upload = settings.max_upload_bytes + FORM_OVERHEAD
    many_uploads = settings.max_embed_files * settings.max_upload_bytes + FORM_OVERHEAD
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    def live() -> ServedIndex:
        served = holder.live
        if served is None:
            raise HTTPException(503, holder.last_error or "no index is loaded yet")
        return served

    def tagged(tag: str | None) -> list[str] | None:
        """The ids carrying a tag (a search filter, already an OptionalTag), or None for none."""
        if tag is None:
            return None
        ids = tag_index.ids_with(tag)
        if not ids:
            raise HTTPException(404, f"no image has the tag {tag!r}")
        return list(ids)

    def bounded_k(k: int) -> int:
        if not 1 <= k <= settings.max_k:
            raise HTTPException(422, f"k must be between 1 and {settings.max_k}, got {k}")
        return k

    def fold_or_default(fold: bool | None) -> bool:
        return settings.fold_duplicates if fold is None else fold

    def wanted(k: int, fold: bool) -> int:
        """Ask the index for more when folding, so that k groups usually remain."""
        return min(2 * k, k + 200) if fold else k

    def cached_vector(key: tuple, compute: Callable[[], object]):
        vector, hit = query_vectors.get_or_compute(key, compute)
        metrics.cache.labels("hit" if hit else "miss").inc()
        return vector

    def answer(served: ServedIndex, results: list[dict], k: int, started: float, endpoint: str,
               query: str, tag: str | None, fold: bool, **extra) -> dict:
        shown = fold_results(results, served.views, fold, served.files)[:k]
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        query_id = search_log.served(endpoint, query, shown, k, served.version, latency_ms, tag)
        return {"results": shown, "k": k, "index_version": served.version,
                "latency_ms": latency_ms, "query_id": query_id,
                "folded": sum(len(r["duplicates"]) for r in shown), **extra}

    def images(served: ServedIndex, ids: list[str],
               tags: dict[str, list[str]] | None = None) -> list[dict]:
        """Gallery entries: where each image is, its tags and predicted labels."""
        tags = tag_index.tags_by_id() if tags is None else tags
        loaded = served.searcher.loaded
        rows = []
        for image_id in ids:
            position = loaded.position_of.get(image_id)
            path = loaded.paths[position] if position is not None else None
            found = served.files.get(image_id)
            rows.append(_image_entry({"id": image_id, "path": path,
                                      "uri": found.uri if found else None,
                                      "tags": tags.get(image_id, []),
                                      "labels": loaded.labels_of(image_id)}, served.files))
        return rows

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        """The web page: gallery, search by upload, crop, text or image, tags, clusters."""
        return FileResponse(WEB_DIR / "index.html")

    @app.get("/health")
    def health() -> dict:
        served = holder.live
        return {"status": "ok" if served else "no_index",
                "index_version": served.version if served else None,
                "pinned": holder.pinned, "last_error": holder.last_error,
                "vectors": served.searcher.loaded.index.ntotal if served else 0,
                "text_search": served.searcher.text_mode if served else None,
                "clusters": served.views.identity[0] if served else None,
                "duplicates": served.views.identity[1] if served else None,
                "public_reads": settings.public_reads}  # the page sends its key for images if not

    @app.get("/gallery", dependencies=reads)
    def gallery(offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                limit: Annotated[int, Query(ge=1, le=500)] = 48,
                tag: OptionalTag = None) -> dict:
        """The indexed images in path order, a page at a time; with `tag`, only those."""
        served = live()
        ordered = served.searcher.loaded.ids_by_path
        only = tagged(tag)
        if only is not None:
            keep = set(only)
            ordered = [i for i in ordered if i in keep]
        return {"total": len(ordered), "offset": offset, "limit": limit,
                "images": images(served, ordered[offset:offset + limit])}

    @app.get("/similar/{image_id}", dependencies=reads)
    def similar(image_id: str, k: int = 50, tag: OptionalTag = None,
                fold: bool | None = None) -> dict:
        """The nearest images to one already in the collection (itself left out)."""
        started, served, k, fold = time.perf_counter(), live(), bounded_k(k), fold_or_default(fold)
        try:
            results = served.searcher.by_id(image_id, wanted(k, fold), only=tagged(tag))
        except KeyError as err:
            raise HTTPException(404, err.args[0]) from None
        return answer(served, results, k, started, "similar", f"image:{image_id}", tag, fold)

    @app.post("/search", dependencies=reads, max_body_size=one_upload)
    async def search(file: Annotated[UploadFile, File(description="The query image")],
                     bbox: Annotated[str | None, Form(description="Crop x1,y1,x2,y2 in pixels")] = None,
                     k: Annotated[int, Form()] = 50,
                     tag: Annotated[OptionalTag, Form(description="Only images with this tag")] = None,
                     fold: Annotated[bool | None, Form(description="Fold near-duplicates")] = None,
                     ) -> dict:
        """The nearest images to an uploaded image, or to a crop box of it."""
        started, served, k, fold = time.perf_counter(), live(), bounded_k(k), fold_or_default(fold)
        only = tagged(tag)  # an unknown tag is refused before the upload is embedded
        data = await read_upload(file)
        try:
            box = parse_bbox(bbox)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        digest = hashlib.sha256(data).hexdigest()[:16]
        query = f"upload:{digest}" + (f"@{','.join(map(str, box))}" if box else "")
        vector = cached_vector((served.searcher.model.version,
                                served.searcher.loaded.transform.version, query),
                               lambda: embed_upload(served, data, box))
        results = served.searcher.by_vector(vector, wanted(k, fold), only=only)
        return answer(served, results, k, started, "search", query, tag, fold)

    async def read_upload(file: UploadFile) -> bytes:
        try:
            data, _ = await read_image_upload(file, settings.max_upload_bytes)
        except ImageError as err:
            raise HTTPException(UPLOAD_REFUSALS[err.status],
                                f"{file.filename or 'the upload'} is not a usable image "
                                f"({err.status}): {err.reason}") from None
        return data

    def embed_upload(served: ServedIndex, data: bytes, box) -> object:
        """The upload's vector; its pixel count is checked from the header, before decoding."""
        embed_started = time.perf_counter()
        try:
            vector = served.searcher.embed_bytes(data, box, max_pixels=settings.max_upload_pixels)
        except ImageError as err:
            raise HTTPException(UPLOAD_REFUSALS.get(err.status, 400),
                                f"the upload is not a usable image ({err.status}): {err.reason}"
                                ) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        metrics.embed_seconds.observe(time.perf_counter() - embed_started)
        return vector

    @app.get("/search/text", dependencies=reads)
    def search_text(q: Annotated[str, Query(description="What to look for, in words")],
                    k: int = 50, tag: OptionalTag = None, fold: bool | None = None) -> dict:
        """Images matching a text. With a CLIP-family model, its text tower (`mode: clip`);
        otherwise the words attached to the images, by meaning: tags, folder and file names and
        predicted ImageNet classes (`mode: attached_text`; each result says what matched)."""
        started, served, k, fold = time.perf_counter(), live(), bounded_k(k), fold_or_default(fold)
        text = q.strip()
        if not text:
            raise HTTPException(422, "the text query is empty")
        if len(text) > settings.max_text_length:
            raise HTTPException(422, f"the text query is {len(text)} characters; the most is "
                                     f"{settings.max_text_length}")
        searcher = served.searcher
        vector = cached_vector((searcher.model.version, searcher.loaded.transform.version,
                                searcher.text_mode, "text:" + text),
                               lambda: searcher.embed_text(text))
        results = searcher.by_text(vector, wanted(k, fold), only=tagged(tag),
                                   tags=tag_index.by_tag())
        return answer(served, results, k, started, "search/text", f"text:{text.lower()}", tag, fold,
                      mode=searcher.text_mode)

    @app.post("/embed", dependencies=reads, max_body_size=many_uploads)
    async def embed(files: Annotated[list[UploadFile], File(description="One or more images")]
                    ) -> dict:
        """The configured model's unit vectors of uploaded images, one entry per file (a file
        that is not a usable image gets an `error` instead); 400 when none is usable."""
        served = live()
        if len(files) > settings.max_embed_files:
            raise HTTPException(413, f"{len(files)} files; at most {settings.max_embed_files} "
                                     "per request")
        entries = []
        for upload in files:
            try:
                vector = embed_upload(served, await read_upload(upload), None)
                entries.append({"filename": upload.filename, "vector": vector.tolist()})
            except HTTPException as err:
                entries.append({"filename": upload.filename, "error": err.detail})
        if all("error" in e for e in entries):
            raise HTTPException(400, "; ".join(f"{e['filename']}: {e['error']}" for e in entries))
        model = served.searcher.model
        return {"model": model.name, "model_version": model.version, "dimension": model.dim,
                "embeddings": entries}

    @app.post("/ingest", dependencies=writes, max_body_size=many_uploads)
    async def ingest(files: Annotated[list[UploadFile], File(description="One or more images")],
                     request: Request) -> dict:
        """Add uploaded images to the collection (needs an API key): each is written into the
        source's `ingest/` folder under its content-addressed name, where the sensor picks it up
        as part of a new batch. Each file gets its id, or an `error` with the reason; 400 when
        none is usable."""
        if not source_uri:
            raise HTTPException(503, "no source is configured (source.uri), so there is nowhere "
                                     "to put uploads")
        if len(files) > settings.max_embed_files:
            raise HTTPException(413, f"{len(files)} files; at most {settings.max_embed_files} "
                                     "per request")
        sink = ImageSink(source_uri, source_endpoint_url, prefix="ingest")
        entries = [await ingest_one(sink, upload) for upload in files]
        if all("error" in e for e in entries):
            raise HTTPException(400, "; ".join(f"{e['filename']}: {e['error']}" for e in entries))
        log.info("ingest by key %r: %s", request.state.api_key_name,
                 ", ".join(f"{e['filename']} -> {e.get('id', e.get('status'))}" for e in entries))
        return {"files": entries, "stored": sum(e.get("existed") is False for e in entries),
                "existed": sum(e.get("existed") is True for e in entries),
                "refused": sum("error" in e for e in entries)}

    async def ingest_one(sink: ImageSink, upload: UploadFile) -> dict:
        try:
            data, fmt = await read_image_upload(upload, settings.max_upload_bytes)
        except ImageError as err:
            return {"filename": upload.filename, "status": err.status, "error": err.reason}
        stored = await run_in_threadpool(sink.put, data, fmt)
        return {"filename": upload.filename, "id": stored.id, "uri": stored.uri,
                "path": stored.path, "format": stored.format, "bytes": stored.bytes,
                "existed": stored.existed}

    @app.post("/click", dependencies=clicks)
    def click(request: ClickRequest) -> dict:
        """Record that a person opened a result of a search (`query_id` from its answer)."""
        _, ranks = shown_in(request)
        search_log.write(lambda con: insert_click(con, request.query_id, request.id,
                                                  ranks[request.id]))
        return {"recorded": True, "rank": ranks[request.id]}

    @app.post("/feedback", dependencies=clicks)
    def feedback(request: FeedbackRequest) -> dict:
        """Rate a result relevant or not to its search; the pipeline's `curation_grounding`
        asset turns the ratings into a grounding set that the evaluation measures against."""
        query, _ = shown_in(request)
        search_log.write(lambda con: insert_rating(con, request.query_id, query, request.id,
                                                   request.relevant))
        return {"recorded": True}

    def shown_in(request: ClickRequest) -> tuple[str, dict[str, int]]:
        found = search_log.search_of(request.query_id)
        if found is None:
            raise HTTPException(404, f"no search with query_id {request.query_id!r}")
        query, ranks = found
        if request.id not in ranks:
            raise HTTPException(422, f"image {request.id!r} was not among that search's results")
        return query, ranks

    @app.post("/tags", dependencies=writes)
    def add_tags(request: TagRequest) -> dict:
        """Apply a tag to images of the collection."""
        unknown = [i for i in request.ids if i not in live().files]
        if unknown:
            raise HTTPException(404, f"no images with ids {unknown[:20]}")
        try:
            added = tag_index.add(request.ids, request.tag)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return {"tag": request.tag, "added": added}

    @app.delete("/tags", dependencies=writes)
    def remove_tags(request: TagRequest) -> dict:
        """Take a tag off images."""
        removed = tag_index.remove(request.ids, request.tag)
        if not removed and not tag_index.ids_with(request.tag):
            raise HTTPException(404, f"no image has the tag {request.tag!r}")
        return {"tag": request.tag, "removed": removed}

    @app.get("/tags", dependencies=reads)
    def list_tags() -> dict:
        """Every tag with the number of images that carry it."""
        return {"tags": [{"tag": t, "count": n} for t, n in tag_index.counts().items()]}

    def cluster_summary(served: ServedIndex, label: int, members: list[str],
                        tags: dict[str, list[str]]) -> dict:
        labels_of = served.searcher.best_label
        name, candidates = suggest_name(len(members), [tags.get(i, []) for i in members],
                                        [labels_of(i) for i in members])
        return {"label": label, "size": len(members), "suggested_name": name,
                "candidates": [{"name": n, "count": c} for n, c in candidates]}

    def cluster_members(label: int) -> tuple[ServedIndex, list[str]]:
        served = live()
        if not served.views.cluster_members:
            raise HTTPException(404, "no clusters are materialized yet")
        members = served.views.cluster_members.get(label)
        if members is None:
            raise HTTPException(404, f"no cluster {label}")
        return served, members

    @app.get("/clusters", dependencies=reads)
    def clusters(examples: Annotated[int, Query(ge=0, le=24)] = 6) -> dict:
        """Every cluster, largest first, with its suggested name and a few members."""
        served, tags = live(), tag_index.tags_by_id()
        found = []
        for label, members in served.views.cluster_members.items():
            summary = cluster_summary(served, label, members, tags)
            summary["examples"] = images(served, members[:examples], tags)
            found.append(summary)
        return {"clusters": found, "noise": len(served.views.noise),
                "version": served.views.identity[0]}

    @app.get("/clusters/{label}", dependencies=reads)
    def cluster(label: ClusterLabel, offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                limit: Annotated[int, Query(ge=1, le=500)] = 48) -> dict:
        """The members of one cluster, a page at a time."""
        served, members = cluster_members(label)
        tags = tag_index.tags_by_id()
        return {**cluster_summary(served, label, members, tags), "offset": offset, "limit": limit,
                "images": images(served, members[offset:offset + limit], tags)}

    @app.post("/clusters/{label}/tag", dependencies=writes)
    def tag_cluster(label: ClusterLabel, request: ClusterTagRequest) -> dict:
        """Tag every member of a cluster: with the suggested name, or with the tag given."""
        served, members = cluster_members(label)
        tag = request.tag or cluster_summary(served, label, members,
                                             tag_index.tags_by_id())["suggested_name"]
        if not tag:
            raise HTTPException(422, f"cluster {label} has no suggested name; give a tag")
        try:
            tag = normalize_tag(tag)  # a suggested name is stored as a typed one would be
            added = tag_index.add(members, tag)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return {"tag": tag, "added": added, "size": len(members)}

    @app.get("/duplicates", dependencies=reads)
    def duplicates(offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                   limit: Annotated[int, Query(ge=1, le=500)] = 20) -> dict:
        """Near-duplicate groups (by pHash), largest first, a page at a time."""
        served, tags = live(), tag_index.tags_by_id()
        groups = served.views.duplicate_groups
        return {"total": len(groups), "offset": offset, "limit": limit,
                "hamming_threshold": served.views.fold_threshold,
                "groups": [{"group": offset + n, "size": len(g), "images": images(served, g, tags)}
                           for n, g in enumerate(groups[offset:offset + limit])]}

    def original(image_id: str) -> tuple[bytes, str]:
        """An image's original bytes and format, only while they are still the indexed ones:
        404 for an unknown id, 410 for an original moved or deleted since it was indexed, 409
        for one that holds other bytes now (never served under the old id)."""
        found = live().files.get(image_id)
        if found is None:
            raise HTTPException(404, f"no image with id {image_id!r}")
        try:
            return read_original(image_id, found, source_endpoint_url), found.format
        except OriginalUnavailable as err:
            raise HTTPException(UNAVAILABLE_ORIGINALS[err.state], err.reason) from None
        except SourceUnreachableError as err:
            raise HTTPException(503, str(err)) from None

    @app.get("/images/{image_id}", dependencies=reads)
    def image(image_id: str) -> Response:
        """The original file of an image in the collection (ids only, never paths)."""
        data, fmt = original(image_id)
        return Response(data, media_type=MEDIA_TYPES.get(fmt, "application/octet-stream"),
                        headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/images/{image_id}/thumbnail", dependencies=reads)
    def thumbnail(image_id: str, size: Annotated[int, Query(ge=16, le=1024)] = 256) -> Response:
        """A JPEG no larger than size x size."""
        data, _ = original(image_id)
        try:
            picture: Image.Image = decode_rgb(data, min_size=size)
        except ImageError as err:
            raise HTTPException(422, f"the original of image {image_id} cannot be made into a "
                                     f"thumbnail ({err.status}): {err.reason}") from None
        picture.thumbnail((size, size))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=85)
        return Response(out.getvalue(), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/metrics", dependencies=reads)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.put("/index/pin", dependencies=writes)
    def pin(version: Annotated[str, Query(description="An index version to keep live")]) -> dict:
        """Keep one index version live (roll back); it stays until unpinned."""
        try:
            holder.pin(version)
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        metrics.index_changed(holder.live)
        return health()

    @app.delete("/index/pin", dependencies=writes)
    def unpin() -> dict:
        """Go back to following the latest materialization."""
        holder.pin(None)
        metrics.index_changed(holder.live)
        return health()

    return app


PIN_FILE = "serving_pin"  # the pinned index version of a home's service (see serving.holder)


def app_for_home(home: Path, settings: Settings) -> FastAPI:
    """The service for a vsearch home: its Dagster instance finds the index materializations."""
    from vsearch_pipeline.runner import open_instance

    instance = open_instance(home)

    def store_for(metadata) -> ArtifactStore:
        return ArtifactStore(metadata_value(metadata, "storage_root"), settings.storage.endpoint_url)

    holder = IndexHolder(instance_metadata_source(instance), store_for,
                         settings.source.endpoint_url, instance_views_source(instance),
                         pin_file=home / PIN_FILE)
    curation = CurationDB(str(home / "curation.duckdb"))
    return create_app(holder, settings.serving, curation, settings.source.endpoint_url,
                      source_uri=settings.source.uri)

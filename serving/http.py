"""The HTTP edges of the service: middleware, the JSON of refusals, and reading an upload safely."""

from __future__ import annotations

import json
import math
import time

from fastapi import FastAPI, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import ServiceMetrics
from vsearch_pipeline.core.decode import (
    SNIFF_BYTES,
    ImageError,
    sniff_image_format,
    sniff_unsupported_format,
)

MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png",
               "WEBP": "image/webp", "BMP": "image/bmp", "GIF": "image/gif",
               "TIFF": "image/tiff", "PPM": "image/x-portable-anymap", "AVIF": "image/avif"}
JSON_BODY_LIMIT = 4 * 1024 * 1024  # a request without an upload: 100,000 ids to tag fit
FORM_OVERHEAD = 64 * 1024  # multipart headers and the small form fields beside an upload
UPLOAD_REFUSALS = {"empty": 400, "too_large": 413, "not_image": 415, "unsupported_format": 415,
                   "bad_aspect": 422}
UNAVAILABLE_ORIGINALS = {"missing": 410, "changed": 409}  # OriginalUnavailable.state -> status


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



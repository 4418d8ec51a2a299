"""Rate limiting per client: a token bucket each, as a plain ASGI middleware.

A client is the name of the valid API key it presents, else its IP address (behind a proxy, run
uvicorn with ``--proxy-headers`` so that this is the caller's, not the proxy's). An unknown key
does not make a new client, so random keys cannot buy fresh buckets. Memory stays bounded: a
bucket that has filled up again is the same as no bucket and is forgotten, and past
``max_clients`` the longest idle ones go first.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.auth import ApiKeys, presented_keys

UNLIMITED_PATHS = frozenset({"/health"})  # probes are never refused


class TokenBuckets:
    """`rate` tokens a second into each client's bucket of `burst`; a request takes one."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs rate > 0 and burst >= 1, got {rate} and {burst}")
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0.0 when the client may go ahead, else the seconds until it may."""
        with self._lock:
            now = self.clock()
            tokens = self._tokens(self._buckets.pop(client, None), now)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[client] = (tokens - 1 if tokens >= 1 else tokens, now)  # now the newest
            self._forget(now)
            return wait

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, bucket: tuple[float, float] | None, now: float) -> float:
        if bucket is None:
            return float(self.burst)
        tokens, at = bucket
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def _forget(self, now: float) -> None:
        """Drop the oldest buckets while they are full again, or while there are too many."""
        while self._buckets:
            client, bucket = next(iter(self._buckets.items()))
            if self._tokens(bucket, now) < self.burst and len(self._buckets) <= self.max_clients:
                return
            del self._buckets[client]


def client_of(keys: ApiKeys) -> Callable[[Scope], str]:
    """Who a request comes from: ``key:NAME`` for a valid API key, else ``ip:ADDRESS``."""

    def identify(scope: Scope) -> str:
        headers = Headers(scope=scope)
        presented = presented_keys(headers.get("authorization"), headers.get("x-api-key"))
        name = next((n for n in map(keys.name_of, presented) if n), None)
        if name is not None:
            return f"key:{name}"
        client = scope.get("client")
        return f"ip:{client[0] if client else 'unknown'}"

    return identify


class RateLimit:
    """429 with ``Retry-After`` (whole seconds) for a client over its rate; others go through."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets, identify: Callable[[Scope], str]) -> None:
        self.app, self.buckets, self.identify = app, buckets, identify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(self.identify(scope))
        if not wait:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        body = json.dumps({"detail": f"too many requests: at most {self.buckets.rate:g} a second "
                                     f"(bursts of {self.buckets.burst}); retry after {retry_after} s"}
                          ).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(retry_after).encode())]})
        await send({"type": "http.response.body", "body": body})

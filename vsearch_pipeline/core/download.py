"""Fetching images from a list of URLs into a source, where the pipeline's sensor picks them up.

What a long download over flaky servers needs, and why:

- bounded concurrency (a semaphore over the URLs in flight), so neither this machine nor the
  servers are flooded;
- retries with exponential backoff and jitter for what may pass (connection errors, timeouts,
  408, 429, 5xx; ``Retry-After`` honoured up to a cap), none for what will not (other 4xx);
- the bytes decide what is an image (:func:`sniff_image_format`), not the URL or the
  Content-Type; a body over the size limit is cut off while streaming, never held whole;
- content-addressed, atomic writes through :class:`ImageSink`, the same as uploads to the
  service: the same image under two URLs lands once;
- a JSON-lines manifest with one record per URL, appended and flushed as each URL finishes, so
  an interrupted run (Ctrl-C, SIGKILL) loses nothing and a re-run skips what is done.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import urldefrag, urlsplit

import httpx

from vsearch_pipeline.core.decode import SNIFF_BYTES, sniff_image_format
from vsearch_pipeline.core.image_sink import ImageSink
from vsearch_pipeline.core.layout import HomeLayout
from vsearch_pipeline.core.text_files import TextFileError, numbered_lines

RETRYABLE_HTTP = frozenset({408, 429})  # and every 5xx
# Outcomes a re-run does not try again; `http_error` is final only for a status not worth retrying.
FINISHED = frozenset({"ok", "duplicate", "not_image", "too_large", "invalid_url"})
USER_AGENT = "vsearch-download/0.1 (+https://github.com/vsearch)"


@dataclass(frozen=True)
class DownloadOptions:
    """How to fetch. Times are in seconds; `timeout` bounds one attempt from request to last byte."""

    concurrency: int = 8
    retries: int = 3  # attempts after the first
    timeout: float = 30.0
    max_bytes: int = 50_000_000
    max_redirects: int = 10
    backoff_base: float = 0.5  # first retry waits about this long, doubling each time
    backoff_max: float = 30.0
    retry_after_max: float = 60.0  # a server's Retry-After is honoured up to this
    progress_every: float = 5.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.retries < 0 or self.timeout <= 0 or self.max_bytes < 1:
            raise ValueError("concurrency >= 1, retries >= 0, timeout > 0 and max_bytes >= 1 please")


@dataclass
class UrlList:
    """The URLs of a list file: unique ones in first-seen order, the lines refused, the repeats."""

    urls: list[str] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (line, why)
    repeated: int = 0
    unreadable: list[str] = field(default_factory=list)  # "<file>, line N: not UTF-8 ..." each


@dataclass
class FetchRecord:
    """One line of the manifest: how one URL ended."""

    url: str
    status: str  # ok | duplicate | http_error | not_image | too_large | invalid_url | failed
    http_status: int | None = None
    attempts: int = 0
    latency_ms: float | None = None  # the last attempt, request to last byte read
    bytes: int = 0
    content_type: str | None = None  # as the server said
    format: str | None = None  # as the bytes say
    final_url: str | None = None  # after redirects
    error: str | None = None
    path: str | None = None  # relative to the target
    uri: str | None = None
    sha256: str | None = None
    duplicate_of: str | None = None  # the URL whose bytes these are, when known
    timestamp: str = ""

    def finished(self) -> bool:
        """Whether a re-run should leave this URL alone."""
        if self.status in FINISHED:
            return True
        return self.status == "http_error" and not retryable_status(self.http_status)


@dataclass
class DownloadSummary:
    """What a run did, for the final report and the exit code."""

    manifest: str
    listed: int  # unique valid URLs in the list
    skipped: int  # already finished in an earlier run
    repeated: int  # duplicate lines in the list
    counts: dict[str, int]
    bytes: int
    seconds: float
    p50_ms: float | None
    p95_ms: float | None

    @property
    def attempted(self) -> int:
        return sum(n for status, n in self.counts.items() if status != "invalid_url")

    @property
    def landed(self) -> int:
        return self.counts.get("ok", 0) + self.counts.get("duplicate", 0)

    @property
    def nothing_fetched(self) -> bool:
        """True when there was work to do and not one image came of it: the run failed."""
        if self.listed == 0 and self.skipped == 0:
            return True  # an empty list, or nothing in it that could be fetched
        return self.attempted > 0 and self.landed == 0


def normalize_url(line: str) -> str:
    """The URL a line names: whitespace and the #fragment dropped (a fragment never reaches the server)."""
    return urldefrag(line.strip())[0]


def invalid_reason(url: str) -> str | None:
    """Why a URL cannot be fetched, or None."""
    try:
        parts = urlsplit(url)
    except ValueError as err:
        return f"unparsable URL: {err}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"not an http(s) URL (scheme {parts.scheme or 'missing'!r})"
    if not parts.hostname:
        return "no host in the URL"
    return None


def parse_url_list(lines: Iterable[str] | bytes, source: str = "URL list") -> UrlList:
    """One URL per line; blank lines and `#` comments skipped; repeats counted, kept once.

    `lines` are the lines of the list, or its bytes: then a BOM is dropped, and a line that is
    not UTF-8 is refused as an invalid URL (recorded as written, bytes escaped) with `source`
    and its line number, in `unreadable` too; the other lines still count."""
    found, seen = UrlList(), set()
    for line in _url_lines(lines, source, found):
        url = normalize_url(line)
        if url in seen:
            found.repeated += 1
            continue
        seen.add(url)
        why = invalid_reason(url)
        if why:
            found.invalid.append((url, why))
        else:
            found.urls.append(url)
    return found


def _url_lines(lines: Iterable[str] | bytes, source: str, found: UrlList) -> Iterator[str]:
    """The lines worth parsing: stripped, without blanks and comments; undecodable ones go to
    `found` as they come."""
    def refuse(error: TextFileError) -> None:
        found.unreadable.append(str(error))
        line = error.raw.decode("utf-8", "backslashreplace").strip()
        if not line.startswith("#"):
            found.invalid.append((line, str(error)))

    numbered = (numbered_lines(lines, source, on_error=refuse) if isinstance(lines, bytes)
                else enumerate(lines, start=1))
    for _, raw in numbered:
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line


def read_url_list(urls: Iterable[str] | TextIO) -> UrlList:
    """The URL list from lines, or from an open text file (click.File, sys.stdin): that one is
    read as bytes through its buffer, so that a line that is not UTF-8 is refused by number
    instead of ending the run with a UnicodeDecodeError."""
    raw = getattr(urls, "buffer", None)
    if raw is None:
        return parse_url_list(urls)
    return parse_url_list(raw.read(), getattr(urls, "name", "URL list"))


def default_manifest(home: Path, target: str) -> Path:
    """`<home>/downloads/<hash of the target>.jsonl`: one manifest per target, found again on re-run."""
    key = target.rstrip("/") if "://" in target else str(Path(target).resolve())
    return HomeLayout(home).downloads / f"{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"


def retryable_status(status: int | None) -> bool:
    return status is not None and (status in RETRYABLE_HTTP or status >= 500)


def backoff_delay(attempt: int, options: DownloadOptions, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`: the server's Retry-After when it gave one
    (capped), else exponential with full jitter so that many clients do not retry in step."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), options.retry_after_max)
    ceiling = min(options.backoff_max, options.backoff_base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Manifest:
    """The JSON-lines record of a download: read back on start, appended line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, FetchRecord]:
        """The last record of every URL. A line cut short by a kill is skipped, not fatal."""
        records: dict[str, FetchRecord] = {}
        if not self.path.exists():
            return records
        names = set(FetchRecord.__dataclass_fields__)
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    data = json.loads(line)
                    record = FetchRecord(**{k: v for k, v in data.items() if k in names})
                except (ValueError, TypeError):
                    continue
                records[record.url] = record
        return records

    def open_for_append(self):
        """Append mode, starting on a fresh line if the last one was cut short."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not self._ends_in_newline()
        f = self.path.open("a", encoding="utf-8")
        if needs_newline:
            f.write("\n")
        return f

    def _ends_in_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


@dataclass
class _Attempt:
    """What one HTTP attempt gave."""

    status: str | None = None  # a final outcome decided while reading, else None
    http_status: int | None = None
    body: bytes = b""
    content_type: str | None = None
    final_url: str | None = None
    error: str | None = None
    retry_after: float | None = None
    retry: bool = False
    latency_ms: float = 0.0


class Downloader:
    """One run: fetch the URLs, write the images through the sink, append to the manifest."""

    def __init__(self, sink: ImageSink, manifest: Manifest, options: DownloadOptions,
                 say: Callable[[str], None] | None = None) -> None:
        self.sink, self.manifest, self.options = sink, manifest, options
        self.say = say or (lambda _message: None)
        self.counts: Counter[str] = Counter()
        self.total_bytes = 0
        self.latencies: list[float] = []
        self.writer_of: dict[str, str] = {}  # sha256 -> the URL that brought it first
        self._hash_locks: dict[str, asyncio.Lock] = {}
        self._out = None
        self._started = 0.0
        self._done = 0
        self._todo = 0

    async def run(self, url_list: UrlList) -> DownloadSummary:
        previous = self.manifest.load()
        self.writer_of = {r.sha256: r.url for r in previous.values()
                          if r.status == "ok" and r.sha256}
        todo = [u for u in url_list.urls if not (u in previous and previous[u].finished())]
        new_invalid = [(u, why) for u, why in url_list.invalid if u not in previous]
        self._todo, self._started = len(todo), time.monotonic()
        ticker = asyncio.create_task(self._progress())
        try:
            with self.manifest.open_for_append() as self._out:
                for url, why in new_invalid:
                    self._record(FetchRecord(url=url, status="invalid_url", error=why))
                await self._fetch_all(todo)
        finally:
            ticker.cancel()
        return self._summary(url_list, skipped=len(url_list.urls) - len(todo))

    async def _fetch_all(self, urls: list[str]) -> None:
        """Keep at most `concurrency` URLs in flight; tasks are made as slots free up, so a list
        of millions does not become millions of waiting tasks."""
        slots = asyncio.Semaphore(self.options.concurrency)
        limits = httpx.Limits(max_connections=self.options.concurrency,
                              max_keepalive_connections=self.options.concurrency)
        async with httpx.AsyncClient(follow_redirects=True, max_redirects=self.options.max_redirects,
                                     timeout=self.options.timeout, limits=limits,
                                     headers={"User-Agent": USER_AGENT}) as client:
            tasks: set[asyncio.Task] = set()
            for url in urls:
                await slots.acquire()
                task = asyncio.create_task(self._one(client, url))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
            if tasks:
                await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, url: str) -> None:
        """Fetch one URL with its retries, write it if it is an image, record the outcome."""
        attempts = 0
        while True:
            attempts += 1
            got = await self._attempt(client, url)
            if not got.retry or attempts > self.options.retries:
                break
            await asyncio.sleep(backoff_delay(attempts, self.options, got.retry_after))
        record = FetchRecord(url=url, status=got.status or "failed", http_status=got.http_status,
                             attempts=attempts, latency_ms=round(got.latency_ms, 2),
                             bytes=len(got.body), content_type=got.content_type,
                             final_url=got.final_url, error=got.error)
        if record.status == "ok":
            await self._store(record, got.body)
        self._record(record)

    async def _attempt(self, client: httpx.AsyncClient, url: str) -> _Attempt:
        """One GET, the body streamed and checked as it comes; never raises for a network error."""
        started = time.perf_counter()
        got = _Attempt()
        try:
            async with asyncio.timeout(self.options.timeout):
                async with client.stream("GET", url) as response:
                    await self._read_response(response, got)
        except (TimeoutError, httpx.TimeoutException):
            got.status, got.retry = "failed", True
            got.error = f"timed out after {self.options.timeout:g} s"
        except httpx.TooManyRedirects:
            got.status, got.error = "failed", f"more than {self.options.max_redirects} redirects"
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as err:
            got.status, got.error = "failed", f"cannot follow: {err}"
        except httpx.TransportError as err:  # connection refused or reset, DNS, protocol errors
            got.status, got.retry, got.error = "failed", True, _describe(err)
        except httpx.HTTPError as err:  # e.g. a body that does not decode: trying again won't help
            got.status, got.error = "failed", _describe(err)
        got.latency_ms = (time.perf_counter() - started) * 1000
        return got

    async def _read_response(self, response: httpx.Response, got: _Attempt) -> None:
        got.http_status = response.status_code
        got.content_type = response.headers.get("content-type")
        got.final_url = str(response.url)
        if not 200 <= response.status_code < 300:
            got.status, got.error = "http_error", f"HTTP {response.status_code} {response.reason_phrase}"
            got.retry = retryable_status(response.status_code)
            got.retry_after = parse_retry_after(response.headers.get("retry-after"))
            return
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.options.max_bytes:
            got.status = "too_large"
            got.error = f"Content-Length {declared} is over {self.options.max_bytes} bytes"
            return
        got.status, got.error, got.body = await self._read_body(response)

    async def _read_body(self, response: httpx.Response) -> tuple[str, str | None, bytes]:
        """Stream the body, stopping as soon as it is too large or plainly not an image."""
        body, limit = bytearray(), self.options.max_bytes
        sniffed = False
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                return "too_large", f"body over {limit} bytes", bytes(body)
            if not sniffed and len(body) >= SNIFF_BYTES:
                sniffed = True
                if sniff_image_format(bytes(body[:SNIFF_BYTES])) is None:
                    return "not_image", "the bytes are not an image format", bytes(body)
        if sniff_image_format(bytes(body[:SNIFF_BYTES])) is None:
            return "not_image", "the bytes are not an image format" if body else "empty body", bytes(body)
        return "ok", None, bytes(body)

    async def _store(self, record: FetchRecord, body: bytes) -> None:
        """Write the image through the sink; the same bytes from two URLs land once."""
        record.format = sniff_image_format(body[:SNIFF_BYTES])
        digest = hashlib.sha256(body).hexdigest()
        lock = self._hash_locks.setdefault(digest, asyncio.Lock())
        async with lock:  # two URLs with the same bytes in flight: the second sees the first's file
            try:
                stored = await asyncio.to_thread(self.sink.put, body, record.format)
            except Exception as err:  # the target refused the write: retried on the next run
                record.status, record.error = "failed", f"write failed: {type(err).__name__}: {err}"
                return
        record.path, record.uri, record.sha256 = stored.path, stored.uri, stored.sha256
        if stored.existed:
            record.status, record.duplicate_of = "duplicate", self.writer_of.get(digest)
        else:
            self.writer_of[digest] = record.url

    def _record(self, record: FetchRecord) -> None:
        """Append the record and flush it: a kill after this line loses nothing."""
        record.timestamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        self._out.write(json.dumps(asdict(record), separators=(",", ":")) + "\n")
        self._out.flush()
        self.counts[record.status] += 1
        if record.status != "invalid_url":
            self._done += 1
        if record.status in ("ok", "duplicate"):
            self.total_bytes += record.bytes
        if record.http_status is not None and record.latency_ms is not None:
            self.latencies.append(record.latency_ms)

    async def _progress(self) -> None:
        """A progress line every `progress_every` seconds, whether or not URLs are finishing."""
        while True:
            await asyncio.sleep(self.options.progress_every)
            self.say(format_progress(self._done, self._todo, self.counts, self.total_bytes,
                                     time.monotonic() - self._started))

    def _summary(self, url_list: UrlList, skipped: int) -> DownloadSummary:
        ordered = sorted(self.latencies)
        return DownloadSummary(manifest=str(self.manifest.path), listed=len(url_list.urls),
                               skipped=skipped, repeated=url_list.repeated, counts=dict(self.counts),
                               bytes=self.total_bytes, seconds=time.monotonic() - self._started,
                               p50_ms=percentile(ordered, 50), p95_ms=percentile(ordered, 95))


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (None for none)."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def format_progress(done: int, total: int, counts: Counter, total_bytes: int, seconds: float) -> str:
    ok = counts.get("ok", 0) + counts.get("duplicate", 0)
    failed = done - ok
    rate = done / seconds if seconds > 0 else 0.0
    return (f"{done}/{total} done, {ok} images, {failed} failed or refused, "
            f"{total_bytes / 1e6:.1f} MB, {rate:.1f} URLs/s")


def format_summary(summary: DownloadSummary) -> list[str]:
    """The end-of-run report, a line each."""
    counts = ", ".join(f"{status} {n}" for status, n in sorted(summary.counts.items())) or "nothing"
    lines = [f"{summary.listed} URLs listed ({summary.repeated} repeated lines dropped), "
             f"{summary.skipped} already done in an earlier run",
             f"this run: {counts}",
             f"{summary.bytes / 1e6:.1f} MB of images in {summary.seconds:.1f} s"]
    if summary.p50_ms is not None:
        lines.append(f"latency p50 {summary.p50_ms:.0f} ms, p95 {summary.p95_ms:.0f} ms")
    lines.append(f"manifest: {summary.manifest}")
    return lines


def download(urls: Iterable[str] | TextIO, target: str, manifest_path: Path,
             options: DownloadOptions | None = None, endpoint_url: str | None = None,
             say: Callable[[str], None] | None = None) -> DownloadSummary:
    """Fetch the URLs of a list (lines of a URL list file, or the open file) into `target`, a
    folder or s3:// prefix. A line that is not UTF-8 is said (file and line) and skipped.

    Resumable: URLs the manifest already records as finished are skipped.
    """
    say = say or (lambda _message: None)
    url_list = read_url_list(urls)
    for problem in url_list.unreadable:
        say(f"{problem}; skipped")
    sink = ImageSink(target, endpoint_url)
    downloader = Downloader(sink, Manifest(manifest_path), options or DownloadOptions(), say)
    return asyncio.run(downloader.run(url_list))

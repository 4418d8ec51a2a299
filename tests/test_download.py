"""`vsearch download` against a real HTTP server on 127.0.0.1 (images, errors, retries, redirects,
slow and oversize bodies), into a folder and into a bucket on a real S3 server (moto)."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from conftest import free_port
from PIL import Image

from vsearch_pipeline.cli import main
from vsearch_pipeline.core.download import (
    DownloadOptions,
    backoff_delay,
    default_manifest,
    download,
    parse_retry_after,
    parse_url_list,
)
from vsearch_pipeline.core.image_sink import content_name
from vsearch_pipeline.core.sources import list_source

VSEARCH = str(Path(sys.executable).parent / "vsearch")
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "progress_every": 0.2}


def _image(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (64, 48)) -> bytes:
    """A real photo-like image: noise from a seed, so every seed gives different bytes."""
    pixels = bytes((seed * 7919 + i * 31) % 251 for i in range(size[0] * size[1] * 3))
    out = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(out, fmt)
    return out.getvalue()


class Site:
    """What the test server serves, and what it saw: requests per path, the most in flight."""

    def __init__(self) -> None:
        self.routes: dict[str, object] = {}
        self.requests: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def count(self, path: str) -> int:
        return self.requests.get(path, 0)


def _handler(site: Site):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            with site.lock:
                site.requests[self.path] = site.requests.get(self.path, 0) + 1
                site.in_flight += 1
                site.max_in_flight = max(site.max_in_flight, site.in_flight)
                nth = site.requests[self.path]
            try:
                route = site.routes.get(self.path)
                if route is None:
                    self._send(404, b"not found", "text/plain")
                else:
                    route(self, nth)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout, too large): expected here
            finally:
                with site.lock:
                    site.in_flight -= 1

        def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None,
                  length: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            if length:
                self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture
def site():
    site = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield site
    server.shutdown()
    server.server_close()


def image_route(data: bytes, ctype: str = "image/jpeg", delay: float = 0.0):
    def route(handler, _nth):
        time.sleep(delay)
        handler._send(200, data, ctype)
    return route


def status_route(status: int, headers: dict | None = None):
    return lambda handler, _nth: handler._send(status, b"error page", "text/html", headers)


def flaky_route(data: bytes):
    """500 the first time, the image afterwards."""
    def route(handler, nth):
        if nth == 1:
            handler._send(500, b"oops", "text/plain")
        else:
            handler._send(200, data, "image/png")
    return route


def redirect_route(location: str):
    def route(handler, _nth):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return route


def huge_route(size: int, declare_length: bool):
    """A body starting like a JPEG, far over the limit; without a length it streams until closed."""
    def route(handler, _nth):
        body = b"\xff\xd8\xff\xe0" + b"\0" * (size - 4)
        handler._send(200, body, "image/jpeg", length=declare_length)
    return route


def slow_route(seconds: float):
    def route(handler, _nth):
        time.sleep(seconds)
        handler._send(200, _image(99), "image/jpeg")
    return route


JPEG, PNG, PNG2, GIF = _image(1), _image(2, "PNG"), _image(3, "PNG"), _image(4, "GIF")


def _serve_everything(site: Site) -> dict[str, str]:
    routes = {
        "/a.jpg": image_route(JPEG),
        "/b.png": image_route(PNG, "image/png"),
        "/mirror/a-copy.jpg": image_route(JPEG, "application/octet-stream"),
        "/missing.jpg": status_route(404),
        "/flaky.png": flaky_route(PNG2),
        "/down.jpg": status_route(503, {"Retry-After": "0"}),
        "/slow.jpg": slow_route(3.0),
        "/r1": redirect_route("/r2"),
        "/r2": redirect_route("/final/c.gif"),
        "/final/c.gif": image_route(GIF, "image/gif"),
        "/page.jpg": image_route(b"<!doctype html><html><body>" + b"x" * 400 + b"</body></html>",
                                 "image/jpeg"),
        "/huge.jpg": huge_route(300_000, declare_length=False),
        "/huge-declared.jpg": huge_route(300_000, declare_length=True),
    }
    site.routes.update(routes)
    return {path.strip("/").replace("/", "_"): site.base + path for path in routes}


def _records(manifest: Path) -> dict[str, dict]:
    """The last record of each URL (a line cut short by a kill is left out, as the downloader does)."""
    records = {}
    for line in manifest.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        records[record["url"]] = record
    return records


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _options(**overrides) -> DownloadOptions:
    return DownloadOptions(**{"concurrency": 4, "retries": 2, "timeout": 1.0, "max_bytes": 100_000,
                              **FAST, **overrides})


def test_url_list_parsing_skips_comments_dedupes_and_refuses_non_http():
    found = parse_url_list([
        "# a comment", "", "  http://x.test/a.jpg  ", "http://x.test/a.jpg#frag", "http://x.test/a.jpg",
        "ftp://x.test/b.jpg", "not a url", "https://x.test/b.jpg", "http:///nohost.jpg",
    ])
    assert found.urls == ["http://x.test/a.jpg", "https://x.test/b.jpg"]
    assert found.repeated == 2
    assert [u for u, _ in found.invalid] == ["ftp://x.test/b.jpg", "not a url", "http:///nohost.jpg"]


def test_backoff_grows_with_jitter_and_honours_retry_after_up_to_a_cap():
    options = DownloadOptions(backoff_base=1.0, backoff_max=8.0, retry_after_max=60.0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)):
        delays = {backoff_delay(attempt, options) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1
    assert backoff_delay(1, options, retry_after=7) == 7
    assert backoff_delay(1, options, retry_after=3600) == 60.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_download_into_a_folder(site, tmp_path):
    urls = _serve_everything(site)
    lines = ["# images for the collection", *urls.values(), "", urls["a.jpg"],
             urls["a.jpg"] + "#again", "ftp://example.com/x.jpg"]
    target, manifest = tmp_path / "source" / "downloads", tmp_path / "m.jsonl"
    said: list[str] = []
    summary = download(lines, str(target), manifest, _options(), say=said.append)

    records = _records(manifest)
    status = {name: records[url]["status"] for name, url in urls.items()}
    gif_chain = sorted(status.pop(name) for name in ("r1", "r2", "final_c.gif"))
    assert gif_chain == ["duplicate", "duplicate", "ok"]  # three URLs, one GIF: written once
    # a.jpg and its mirror are fetched concurrently: whichever lands first is the one written
    same = sorted([status.pop("a.jpg"), status.pop("mirror_a-copy.jpg")])
    assert same == ["duplicate", "ok"]
    assert status == {
        "b.png": "ok", "missing.jpg": "http_error",
        "flaky.png": "ok", "down.jpg": "http_error", "slow.jpg": "failed", "page.jpg": "not_image",
        "huge.jpg": "too_large", "huge-declared.jpg": "too_large"}
    assert records["ftp://example.com/x.jpg"]["status"] == "invalid_url"
    assert site.count("/a.jpg") == 1  # listed three times, fetched once
    # Retries: one for a 500 that recovers, all of them for a 503 that does not, none for a 404.
    assert records[urls["flaky.png"]]["attempts"] == 2 and site.count("/flaky.png") == 2
    assert records[urls["down.jpg"]]["attempts"] == 3 and site.count("/down.jpg") == 3
    assert records[urls["down.jpg"]]["http_status"] == 503
    missing = records[urls["missing.jpg"]]
    assert missing["attempts"] == 1 and missing["http_status"] == 404
    slow = records[urls["slow.jpg"]]
    assert slow["attempts"] == 3 and "timed out" in slow["error"] and slow["http_status"] is None
    # Redirects: the final URL is recorded.
    assert records[urls["r1"]]["final_url"] == urls["final_c.gif"]
    assert records[urls["r1"]]["format"] == "GIF"
    # What the server said versus what the bytes are.
    page = records[urls["page.jpg"]]
    assert page["content_type"] == "image/jpeg" and page["format"] is None and page["path"] is None
    assert records[urls["mirror_a-copy.jpg"]]["content_type"] == "application/octet-stream"
    assert records[urls["huge.jpg"]]["bytes"] <= 100_000 + 65_536  # cut off while streaming

    first, second = sorted((records[urls[n]] for n in ("a.jpg", "mirror_a-copy.jpg")),
                           key=lambda r: r["status"] != "ok")
    assert first["bytes"] == len(JPEG) and first["format"] == "JPEG"
    assert first["latency_ms"] > 0 and first["http_status"] == 200 and first["timestamp"]
    assert records[urls["a.jpg"]]["content_type"] == "image/jpeg"
    assert second["path"] == first["path"] and second["duplicate_of"] == first["url"]

    # The target: each distinct image once, named by its bytes, nothing else (no temporary files).
    expected = {content_name(data, fmt)[1]: data
                for data, fmt in ((JPEG, "JPEG"), (PNG, "PNG"), (PNG2, "PNG"), (GIF, "GIF"))}
    assert _files(target) == expected
    assert {o.path for o in list_source(str(target))} == set(expected)

    assert summary.counts["ok"] == 4 and summary.counts["duplicate"] == 3
    assert summary.repeated == 2 and not summary.nothing_fetched
    assert summary.bytes == sum(len(d) for d in expected.values()) + len(JPEG) + 2 * len(GIF)
    assert summary.p50_ms is not None and summary.p95_ms >= summary.p50_ms
    assert any("done" in line and "URLs/s" in line for line in said)  # progress lines


def test_concurrency_is_bounded(site, tmp_path):
    images = {f"/img/{i}.png": _image(100 + i, "PNG") for i in range(16)}
    for path, data in images.items():
        site.routes[path] = image_route(data, "image/png", delay=0.1)
    summary = download([site.base + p for p in images], str(tmp_path / "out"), tmp_path / "m.jsonl",
                       _options(concurrency=3))
    assert summary.counts == {"ok": 16}
    assert 2 <= site.max_in_flight <= 3


def test_resume_skips_finished_urls(site, tmp_path):
    urls = _serve_everything(site)
    first = [urls[n] for n in ("a.jpg", "b.png", "missing.jpg", "down.jpg", "page.jpg", "huge.jpg")]
    target, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    download(first, str(target), manifest, _options(retries=0))
    before = dict(site.requests)
    with manifest.open("a") as f:
        f.write('{"url": "http://cut.short/by-a-kill", "sta')  # a record a SIGKILL cut short

    summary = download([*first, urls["flaky.png"], urls["r1"]], str(target), manifest, _options(retries=0))
    for path in ("/a.jpg", "/b.png", "/missing.jpg", "/page.jpg", "/huge.jpg"):
        assert site.count(path) == before[path] == 1, path  # finished: not asked again
    assert site.count("/down.jpg") == 2  # a 503 is worth another try on the next run
    assert site.count("/flaky.png") == 1 and site.count("/r1") == 1
    assert summary.skipped == 5
    assert summary.counts == {"http_error": 2, "ok": 1}  # down.jpg again; flaky 500s once (no retries)
    records = _records(manifest)
    assert records[urls["r1"]]["status"] == "ok"
    assert all(line.startswith("{") and line.endswith("}") for line in manifest.read_text().splitlines()
               if "cut.short" not in line)


def test_interrupted_by_sigkill_then_resumed(site, tmp_path):
    """A real `vsearch download` killed mid-run: what it recorded is kept, and the re-run only
    fetches the rest."""
    images = {f"/slow/{i}.png": _image(200 + i, "PNG") for i in range(8)}
    for path, data in images.items():
        site.routes[path] = image_route(data, "image/png", delay=0.4)
    url_file = tmp_path / "urls.txt"
    url_file.write_text("\n".join(site.base + p for p in images) + "\n")
    target, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    cmd = [VSEARCH, "download", str(url_file), "--to", str(target), "--manifest", str(manifest),
           "--concurrency", "1", "--home", str(tmp_path / "home")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and (not manifest.exists() or len(manifest.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [json.loads(line)["url"] for line in manifest.read_text().splitlines()]
    assert 2 <= len(done_before) < len(images)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_before)} already done" in rerun.stdout
    for url in done_before:
        assert site.count(url.removeprefix(site.base)) == 1
    assert {r["status"] for r in _records(manifest).values()} == {"ok"}
    assert len(_records(manifest)) == len(images)
    assert {o.path for o in list_source(str(target))} == {content_name(d, "PNG")[1] for d in images.values()}


def test_download_into_s3(site, tmp_path, s3_endpoint, s3_credentials):
    urls = _serve_everything(site)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="photos")
    wanted = [urls[n] for n in ("a.jpg", "mirror_a-copy.jpg", "b.png", "page.jpg", "r1")]
    summary = download(wanted, "s3://photos/incoming", tmp_path / "m.jsonl", _options(),
                       endpoint_url=s3_endpoint)
    assert summary.counts == {"ok": 3, "duplicate": 1, "not_image": 1}
    listed = client.list_objects_v2(Bucket="photos", Prefix="incoming/")["Contents"]
    names = {o["Key"]: o["Size"] for o in listed}
    assert names == {f"incoming/{content_name(JPEG, 'JPEG')[1]}": len(JPEG),
                     f"incoming/{content_name(PNG, 'PNG')[1]}": len(PNG),
                     f"incoming/{content_name(GIF, 'GIF')[1]}": len(GIF)}
    body = client.get_object(Bucket="photos", Key=f"incoming/{content_name(PNG, 'PNG')[1]}")["Body"].read()
    assert body == PNG
    record = _records(tmp_path / "m.jsonl")[urls["a.jpg"]]
    assert record["uri"] == f"s3://photos/incoming/{content_name(JPEG, 'JPEG')[1]}"
    # The source listing the sensor uses sees exactly these objects.
    found = list_source("s3://photos/incoming", s3_endpoint)
    assert sorted(o.path for o in found) == sorted(k.removeprefix("incoming/") for k in names)


def test_cli_help_and_a_real_run(site, tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(main, ["download", "--help"]).output
    for option in ("--to", "--endpoint-url", "--concurrency", "--retries", "--timeout",
                   "--max-bytes", "--manifest", "--home"):
        assert option in help_text

    urls = _serve_everything(site)
    url_file = tmp_path / "urls.txt"
    url_file.write_text(f"{urls['a.jpg']}\n{urls['b.png']}\n{urls['missing.jpg']}\n# done\n")
    home, target = tmp_path / "home", tmp_path / "images"
    result = runner.invoke(main, ["download", str(url_file), "--to", str(target), "--home", str(home),
                                  "--concurrency", "2", "--retries", "1", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    assert "ok 2" in result.output and "http_error 1" in result.output and "p50" in result.output
    manifest = default_manifest(home, str(target))
    assert manifest.parent == home / "downloads" and manifest.exists()
    assert len(_records(manifest)) == 3
    assert len(list(target.iterdir())) == 2

    failing = tmp_path / "bad.txt"
    failing.write_text(f"{urls['missing.jpg']}\n{urls['page.jpg']}\n")
    result = runner.invoke(main, ["download", str(failing), "--to", str(target), "--home", str(home)])
    assert result.exit_code == 1  # not one image: the run failed
    result = runner.invoke(main, ["download", str(failing), "--to", str(target), "--concurrency", "0"])
    assert result.exit_code == 2  # bad arguments


def test_connection_refused_is_retried_then_failed(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/nothing-listens.jpg"
    summary = download([url], str(tmp_path / "out"), tmp_path / "m.jsonl", _options(retries=2))
    record = _records(tmp_path / "m.jsonl")[url]
    assert record["status"] == "failed" and record["attempts"] == 3 and record["error"]
    assert summary.nothing_fetched
    assert not os.path.exists(tmp_path / "out") or not any((tmp_path / "out").iterdir())

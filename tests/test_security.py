"""Security of the search service, tried by breaking it: a real service over a small collection
the pipeline materialized, hashed API keys on every write (and on reads and clicks where they are
private), rate limits per client, upload limits in bytes and pixels enforced before decoding,
formats decided by the bytes, image serving that never leaves the collection (raw requests to a
real uvicorn, so no client tidies the paths), injection strings that stay text, secrets that never
reach a log or an answer, and a schemathesis fuzzing pass over the OpenAPI schema.

Every test prints its figures (requests sent, by status); run with -s to see them."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import select
import shutil
import socket
import struct
import threading
import zlib
from collections import Counter
from pathlib import Path

import duckdb
import httpx
import pytest
import schemathesis
import uvicorn
from conftest import copy_caltech, wait_until_served
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from serving.app import Service, app_for_home
from serving.auth import KEYS_ENV, create_key, hash_key, request_is_local
from serving.limits import TokenBuckets
from vsearch_pipeline.core.layout import HomeLayout
from vsearch_pipeline.core.store import CurationDB
from vsearch_pipeline.runner import run_pipeline
from vsearch_pipeline.settings import load_settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("accordion", "airplanes", "butterfly")
PER_CLASS = 5
SECRET = b"TOP-SECRET-BYTES-next-to-the-collection"
S3_SECRET = "s3-secret-AbCdEf0123456789-never-logged"
INJECTIONS = ("x'); DROP TABLE tags; --", "' OR '1'='1", "\"; DELETE FROM queries; --",
              "a' UNION SELECT tag, id FROM tags --", "%' OR 1=1 --", "Robert'); DROP TABLE clicks;--",
              "1; ATTACH '/tmp/evil.duckdb' AS evil; --", "ünï'cödé\"`;\\")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """15 Caltech-101 photos, a secret file beside the collection, a keys file with one key."""
    root = tmp_path_factory.mktemp("security")
    images = copy_caltech(shared_data, root / "images", CLASSES, PER_CLASS)
    (root / "secret.txt").write_bytes(SECRET)
    (root / "home").mkdir()
    keys_file = root / "keys" / "api-keys"
    key = create_key(keys_file, "curator")
    home = root / "home"
    settings = load_settings(home, {"source": {"uri": str(images)}, "index": {"index_type": "flat"},
                                    "clusters": {"min_cluster_size": 3},
                                    "serving": {"refresh_interval_s": 3600, "search_log_flush_s": 0.2,
                                                "api_keys_file": str(keys_file),
                                                "rate_limit_per_s": 0}})
    with pytest.MonkeyPatch.context() as env:
        env.delenv(KEYS_ENV, raising=False)
        run_pipeline(home, settings, say=print)
        yield {"root": root, "home": home, "images": images, "settings": settings, "key": key,
               "keys_file": keys_file}


def _app(collection: dict, **serving):
    settings = collection["settings"]
    return app_for_home(collection["home"], settings.model_copy(
        update={"serving": settings.serving.model_copy(update=serving)}))


@pytest.fixture(scope="module")
def client(collection: dict):
    with TestClient(_app(collection)) as client:
        yield client


@pytest.fixture(scope="module")
def ids(client, collection) -> dict[str, str]:
    return {row["path"]: row["id"] for row in client.get(
        "/gallery", params={"limit": 500}, headers={"X-API-Key": collection["key"]}).json()["images"]}


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, "PNG")
    return out.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with almost no data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def _show(title: str, statuses: Counter) -> None:
    print(f"\n[{title}] {sum(statuses.values())} requests, by status: {dict(sorted(statuses.items()))}")


# ---- keys ------------------------------------------------------------------------------------

def _writes(ids: dict[str, str], label: int, version: str) -> list[tuple[str, str, dict]]:
    image = next(iter(ids.values()))
    return [("POST", "/tags", {"json": {"ids": [image], "tag": "sec"}}),
            ("DELETE", "/tags", {"json": {"ids": [image], "tag": "sec"}}),
            ("POST", f"/clusters/{label}/tag", {"json": {"tag": "sec-cluster"}}),
            ("PUT", "/index/pin", {"params": {"version": version}}),
            ("DELETE", "/index/pin", {}),
            ("POST", "/ingest", {"files": [("files", ("new.png", _png()))]})]


def _bad_credentials(key: str) -> list[dict[str, str]]:
    return [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"X-API-Key": key + "x"},
            {"X-API-Key": key[:-1]}, {"Authorization": f"Basic {key}"}, {"Authorization": key},
            {"Authorization": f"Bearer {hash_key(key)}"},  # the stored hash is not a key
            {"X-API-Key": ""}, {"Authorization": "Bearer "}]


def _reads(ids: dict[str, str], label: int) -> list[str]:
    image = next(iter(ids.values()))
    return ["/gallery", f"/similar/{image}", "/search/text?q=accordion", "/tags", "/clusters",
            f"/clusters/{label}", "/duplicates", f"/images/{image}", f"/images/{image}/thumbnail",
            "/metrics"]


def test_every_write_needs_a_valid_key(client, collection, ids):
    key, statuses = collection["key"], Counter()
    health = client.get("/health").json()
    label = client.get("/clusters").json()["clusters"][0]["label"]
    tags_before = client.get("/tags").json()
    ingested = collection["images"] / "ingest"
    for method, path, kwargs in _writes(ids, label, health["index_version"]):
        for headers in _bad_credentials(key):
            answer = client.request(method, path, headers=headers, **kwargs)
            statuses[answer.status_code] += 1
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert "a valid API key is needed" in answer.json()["detail"]
    assert client.get("/tags").json() == tags_before  # nothing was written
    assert client.get("/health").json()["pinned"] is None
    assert not ingested.exists() or not any(ingested.rglob("*.png"))
    refused = sum(statuses.values())
    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        for method, path, kwargs in _writes(ids, label, health["index_version"]):
            answer = client.request(method, path, headers=headers, **kwargs)
            statuses[answer.status_code] += 1
            assert answer.status_code == 200, (method, path, answer.text)
    assert len(list(ingested.rglob("*.png"))) == 1  # the same bytes twice: stored once
    members = client.get(f"/clusters/{label}", params={"limit": 500}).json()["images"]
    client.request("DELETE", "/tags", headers={"X-API-Key": key},
                   json={"ids": [m["id"] for m in members], "tag": "sec-cluster"})
    shutil.rmtree(ingested)
    for path in _reads(ids, label):  # reads and clicks stay public by default
        answer = client.get(path)
        statuses[answer.status_code] += 1
        assert answer.status_code == 200, (path, answer.text)
    shown = client.get(f"/similar/{next(iter(ids.values()))}", params={"k": 3}).json()
    click = client.post("/click", json={"query_id": shown["query_id"], "id": shown["results"][0]["id"]})
    statuses[click.status_code] += 1
    assert click.status_code == 200
    _show(f"writes: {refused} refused without a valid key", statuses)


def test_without_a_keys_file_writes_are_off(collection, ids, monkeypatch):
    monkeypatch.delenv(KEYS_ENV, raising=False)
    statuses = Counter()
    with TestClient(_app(collection, api_keys_file=None)) as client:
        health = client.get("/health").json()
        label = client.get("/clusters").json()["clusters"][0]["label"]
        for method, path, kwargs in _writes(ids, label, health["index_version"]):
            answer = client.request(method, path, headers={"X-API-Key": collection["key"]}, **kwargs)
            statuses[answer.status_code] += 1
            assert answer.status_code == 403 and "disabled until an API keys file" in answer.text
        assert client.get("/gallery").status_code == 200
    _show("writes with no keys file configured", statuses)


def _serve_process(collection: dict, host: str):
    """`vsearch serve` on the collection's home (no keys file there, none in the environment),
    as a person starts it; yields its base URL on 127.0.0.1 and a reader of what it printed."""
    import subprocess
    import sys

    port = _free_port()
    log = collection["root"] / f"serve-{host}-{port}.log"
    env = {k: v for k, v in os.environ.items() if k != KEYS_ENV}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "vsearch"), "serve", "--home",
             str(collection["home"]), "--host", host, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**env, "HF_HUB_OFFLINE": "1"})
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_served(base, lambda: process.poll() is None)
        yield base, log.read_text
    finally:
        process.terminate()
        process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_on_loopback_the_person_at_the_machine_writes_without_a_key(collection, ids):
    """A fresh home, `vsearch serve` on loopback: tagging from the page works with no key, but
    only for requests that are local in every respect (a rebound host name or another site's
    Origin is refused); a keys file, once created, is required from then on."""
    image = next(iter(ids.values()))
    for base, said in _serve_process(collection, "127.0.0.1"):
        assert "tagging and naming from this machine need no key" in said()
        assert httpx.get(f"{base}/health").json()["writes"] == "this_machine"
        tagged = httpx.post(f"{base}/tags", json={"ids": [image], "tag": "local-tag"})
        assert tagged.status_code == 200, tagged.text
        assert image in httpx.get(f"{base}/gallery", params={"tag": "local-tag"}).text
        label = httpx.get(f"{base}/clusters").json()["clusters"][0]["label"]
        named = httpx.post(f"{base}/clusters/{label}/tag", json={"tag": "local-cluster"})
        assert named.status_code == 200, named.text
        for headers in ({"Host": "evil.example"}, {"Origin": "http://evil.example"},
                        {"Origin": "null"}):
            refused = httpx.post(f"{base}/tags", json={"ids": [image], "tag": "x"}, headers=headers)
            assert refused.status_code == 403 and "only from this machine" in refused.text, headers
        for tag in ("local-tag", "local-cluster"):  # leave the home's tags as they were
            assert httpx.request("DELETE", f"{base}/tags", json={"ids": list(ids.values()),
                                                                  "tag": tag}).status_code == 200
        assert "serving 15 images (index " in said() and f" at {base}/ " in said(), said()
        key = create_key(HomeLayout(collection["home"]).api_keys, "curator")
        try:
            assert httpx.get(f"{base}/health").json()["writes"] == "api_key"
            assert httpx.post(f"{base}/tags", json={"ids": [image], "tag": "x"}).status_code == 401
            assert httpx.post(f"{base}/tags", json={"ids": [image], "tag": "keyed"},
                              headers={"X-API-Key": key}).status_code == 200
            assert httpx.request("DELETE", f"{base}/tags", json={"ids": [image], "tag": "keyed"},
                                 headers={"X-API-Key": key}).status_code == 200
        finally:
            HomeLayout(collection["home"]).api_keys.unlink()


def test_reachable_from_other_machines_writes_need_a_key_and_it_says_so(collection, ids):
    """Bound to every address, with no keys file: writes are refused as before, even from this
    machine, and the start-up says why in one line."""
    image = next(iter(ids.values()))
    for base, said in _serve_process(collection, "0.0.0.0"):
        lines = [line for line in said().splitlines() if "reachable from other machines" in line]
        assert len(lines) == 1 and "vsearch api-key create" in lines[0], said()
        assert httpx.get(f"{base}/health").json()["writes"] == "off"
        label = httpx.get(f"{base}/clusters").json()["clusters"][0]["label"]
        for method, path, kwargs in _writes(ids, label, httpx.get(f"{base}/health").json()[
                "index_version"]):
            answer = httpx.request(method, f"{base}{path}", **kwargs)
            assert answer.status_code == 403 and "disabled until an API keys file" in answer.text
        assert httpx.get(f"{base}/similar/{image}").status_code == 200


@pytest.mark.parametrize("client_host, headers, local", [
    ("127.0.0.1", {"host": "127.0.0.1:8000"}, True),
    ("::1", {"host": "[::1]:8000", "origin": "http://[::1]:8000"}, True),
    ("127.0.0.1", {"host": "localhost:8000", "origin": "http://localhost:8000"}, True),
    ("192.168.1.7", {"host": "127.0.0.1:8000"}, False),
    ("127.0.0.1", {"host": "photos.example:8000"}, False),
    ("127.0.0.1", {"host": "127.0.0.1:8000", "origin": "https://evil.example"}, False),
    ("127.0.0.1", {}, False)])
def test_what_counts_as_a_request_from_this_machine(client_host, headers, local):
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": "/tags", "client": (client_host, 5000),
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    assert request_is_local(Request(scope)) is local


def test_private_reads_and_clicks_need_a_key(collection, ids):
    key, statuses = collection["key"], Counter()
    with TestClient(_app(collection, public_reads=False, public_clicks=False)) as client:
        assert client.get("/health").json()["public_reads"] is False
        label = client.get("/clusters", headers={"X-API-Key": key}).json()["clusters"][0]["label"]
        photo = (collection["images"] / "accordion").glob("*.jpg").__next__().read_bytes()
        for path in _reads(ids, label):
            refused, allowed = client.get(path), client.get(path, headers={"X-API-Key": key})
            statuses.update([refused.status_code, allowed.status_code])
            assert refused.status_code == 401 and allowed.status_code == 200, path
        for path in ("/search", "/embed"):
            field = "file" if path == "/search" else "files"
            refused = client.post(path, files={field: ("q.jpg", photo)})
            allowed = client.post(path, files={field: ("q.jpg", photo)}, headers={"X-API-Key": key})
            statuses.update([refused.status_code, allowed.status_code])
            assert refused.status_code == 401 and allowed.status_code == 200, path
        shown = client.get(f"/similar/{next(iter(ids.values()))}", headers={"X-API-Key": key}).json()
        for path, extra in (("/click", {}), ("/feedback", {"relevant": True})):
            body = {"query_id": shown["query_id"], "id": shown["results"][0]["id"], **extra}
            refused = client.post(path, json=body)
            allowed = client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
            statuses.update([refused.status_code, allowed.status_code])
            assert refused.status_code == 401 and allowed.status_code == 200, path
        for path in ("/health", "/", "/static/app.js", "/static/style.css", "/openapi.json", "/docs"):
            answer = client.get(path)
            statuses[answer.status_code] += 1
            assert answer.status_code == 200, path  # probes and the page itself stay open
    _show("private reads and clicks", statuses)


# ---- rate limits -----------------------------------------------------------------------------

def test_rate_limit_per_client_answers_429_with_retry_after(collection):
    key, statuses = collection["key"], Counter()
    # 10 at once, then one per 100 s: the figures below do not depend on how fast the test runs.
    with TestClient(_app(collection, rate_limit_per_s=0.01, rate_limit_burst=10)) as client:
        by_ip = [client.get("/tags") for _ in range(15)]
        assert [a.status_code for a in by_ip] == [200] * 10 + [429] * 5
        late = by_ip[-1]
        assert 1 <= int(late.headers["retry-after"]) <= 100
        assert "too many requests" in late.json()["detail"]
        assert client.get("/health").status_code == 200  # probes are never limited
        wrong_key = client.get("/tags", headers={"X-API-Key": "made-up"})
        assert wrong_key.status_code == 429  # an unknown key buys no bucket of its own
        by_key = [client.get("/tags", headers={"X-API-Key": key}) for _ in range(12)]
        assert [a.status_code for a in by_key] == [200] * 10 + [429] * 2  # its own bucket
        statuses.update(a.status_code for a in [*by_ip, wrong_key, *by_key])
        metrics = client.get("/health")
        assert metrics.status_code == 200
    _show("rate limit 0.01/s, burst 10, per client", statuses)


def test_token_buckets_refill_and_forget_idle_clients():
    now = [0.0]
    buckets = TokenBuckets(rate=10, burst=5, max_clients=1000, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(5)] == [0.0] * 5
    assert buckets.take("a") == pytest.approx(0.1)
    now[0] += 0.25  # two tokens and a half back
    assert [buckets.take("a") == 0.0 for _ in range(3)] == [True, True, False]
    for n in range(50_000):  # a flood of distinct clients
        buckets.take(f"ip:{n}")
    assert len(buckets) <= 1000
    now[0] += 1.0  # everyone is full again: nothing to remember
    buckets.take("b")
    assert len(buckets) == 1
    print(f"\n[token buckets] 50,000 clients seen, at most {1000} remembered, 1 after they idled")


# ---- uploads ---------------------------------------------------------------------------------

def test_upload_limits_and_formats_are_decided_before_decoding(collection):
    photo = next((collection["images"] / "airplanes").glob("*.jpg")).read_bytes()
    statuses = Counter()
    cases = [  # (file name, bytes, declared type, expected status, words of the reason)
        ("notes.txt", _png(), "text/plain", 200, None),
        ("photo.jpg", photo, "application/octet-stream", 200, None),
        ("photo.jpg", b"<!doctype html><html><body>hi</body></html>", "image/jpeg", 415, "not JPEG, PNG"),
        ("logo.png", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/png", 415,
         "(unsupported_format): SVG (vector graphics) files are not supported"),
        ("scan.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "image/jpeg", 415,
         "(unsupported_format): PDF (document) files are not supported"),
        ("empty.jpg", b"", "image/jpeg", 400, "empty"),
        ("cut.jpg", photo[:400], "image/jpeg", 400, "corrupt"),
        ("bomb.png", _png_header(100_000, 100_000), "image/png", 413, "refused before decoding"),
        ("wide.png", _png((1200, 900)), "image/png", 413, "over the limit of 1000000 pixels"),
        ("big.jpg", b"\xff\xd8\xff" + b"\0" * 150_000, "image/jpeg", 413, "over 100000 bytes"),
    ]
    with TestClient(_app(collection, max_upload_bytes=100_000, max_upload_pixels=1_000_000)) as client:
        for name, data, declared, status, reason in cases:
            answer = client.post("/search", files={"file": (name, data, declared)}, data={"k": "3"})
            statuses[answer.status_code] += 1
            assert answer.status_code == status, (name, answer.text)
            if reason:
                assert reason in answer.json()["detail"], (name, answer.text)
        whole = client.post("/search", files={"file": ("huge.jpg", b"\xff\xd8\xff" + b"\0" * 400_000)})
        statuses[whole.status_code] += 1
        assert whole.status_code == 413  # over the body limit: the request is cut off while read
        embedded = client.post("/embed", files=[("files", ("ok.txt", _png())),
                                                ("files", ("bad.jpg", b"<html></html>"))]).json()
        statuses[200] += 1
        assert "vector" in embedded["embeddings"][0] and "not JPEG" in embedded["embeddings"][1]["error"]
    _show(f"uploads: {len(cases) + 2} files tried", statuses)


@pytest.fixture(scope="module")
def server(collection: dict):
    """The real service under uvicorn on 127.0.0.1, its logs going to the root logger (caplog)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        env.setenv("AWS_ACCESS_KEY_ID", "AKIA-test-id")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        config = uvicorn.Config(_app(collection, max_upload_bytes=100_000), host="127.0.0.1", port=port,
                                log_config=None, log_level="debug", access_log=True)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="uvicorn-security", daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        wait_until_served(base, thread.is_alive)
        yield {"base": base, "port": port}
        server.should_exit = True
        thread.join(timeout=30)


def _raw(port: int, head: bytes, body_chunks=(), timeout: float = 30) -> tuple[int, bytes]:
    """Send bytes as they are (no client normalizes the path) and read the answer's status and
    body; the server may answer, and close, before the body is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # it has answered: stop sending
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: what it said is still there to read
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def _get(port: int, target: bytes) -> tuple[int, bytes]:
    return _raw(port, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")


def test_a_declared_huge_body_is_refused_before_it_is_read(server):
    head = (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000000\r\n\r\n")
    status, body = _raw(server["port"], head)  # not one byte of the 10 GB is sent
    assert status == 413 and b"Content Too Large" in body
    sent = 0

    def chunks():  # no length declared: the body is counted as it arrives and cut off
        nonlocal sent
        part = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n"
        yield b"%x\r\n%s\r\n" % (len(part), part)
        for _ in range(1000):
            piece = b"\xff" * 65536
            sent += len(piece)
            yield b"%x\r\n%s\r\n" % (len(piece), piece)
    head = head.replace(b"Content-Length: 10000000000", b"Transfer-Encoding: chunked")
    status, _ = _raw(server["port"], head, chunks())
    assert status == 413 and sent < 1000 * 65536  # it stopped reading: the rest was never taken
    print(f"\n[body limits] a 10 GB declaration refused unread; a chunked 64 MB body refused, "
          f"{sent} bytes taken into socket buffers before it stopped")


TRAVERSALS = [b"../secret.txt", b"..%2Fsecret.txt", b"%2e%2e%2fsecret.txt", b"%2E%2E/secret.txt",
              b"%252e%252e%252fsecret.txt", b"..%252fsecret.txt", b"..\\secret.txt", b"..%5csecret.txt",
              b"%5c..%5csecret.txt", b"....//secret.txt", b"..%c0%afsecret.txt", b"secret.txt%00.jpg",
              b"%00", b"..%00/secret.txt", b"%2fetc%2fpasswd", b"file:%2f%2f%2fetc%2fpasswd"]


def test_image_serving_cannot_escape_the_collection(server, collection, ids):
    secret_path = str(collection["root"] / "secret.txt").encode()
    attempts = [*TRAVERSALS, secret_path.replace(b"/", b"%2f"), secret_path.replace(b"/", b"%252f")]
    targets = []
    for attempt in attempts:
        for route in (b"/images/%s", b"/images/%s/thumbnail", b"/similar/%s", b"/static/%s",
                      b"/images/../../%s", b"/static/../../%s"):
            targets.append(route % attempt)
    targets += [b"/images/" + secret_path, b"/static/" + secret_path, b"/static/../secret.txt",
                b"/static/%2e%2e/%2e%2e/secret.txt",
                b"/images/" + next(iter(ids.values())).encode() + b"/../.."]
    statuses = Counter()
    for target in targets:
        status, body = _get(server["port"], target)
        statuses[status] += 1
        assert status in (400, 404, 422), (target, status, body[:200])
        assert SECRET not in body and b"root:" not in body, target
    image_id = ids["accordion/image_0001.jpg"]
    status, body = _get(server["port"], b"/images/" + image_id.encode())
    assert status == 200 and body == (collection["images"] / "accordion" / "image_0001.jpg").read_bytes()
    _show(f"image serving: {len(targets)} escape attempts, the secret never came back", statuses)


# ---- SQL ---------------------------------------------------------------------------------------

def _tables(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_type = 'BASE TABLE' ORDER BY 1").fetchall()]
        return {name: con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}
    finally:
        con.close()


def test_injection_strings_stay_text(collection, ids):
    key, statuses = collection["key"], Counter()
    target = ids["butterfly/image_0001.jpg"]
    auth = {"X-API-Key": key}
    with TestClient(_app(collection)) as client:
        client.app.state.search_log.flush()
        before = _tables(collection["home"] / "curation.duckdb")
        for text in INJECTIONS:
            answers = [
                client.post("/tags", json={"ids": [target], "tag": text}, headers=auth),
                client.get("/search/text", params={"q": text, "k": 3}),
                client.get("/search/text", params={"q": "butterfly", "tag": text}),
                client.get("/gallery", params={"tag": text}),
                client.get(f"/similar/{target}", params={"tag": text, "k": 3}),
                client.post("/search", files={"file": ("q.png", _png())}, data={"tag": text, "k": "3"}),
            ]
            assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
            assert {r["id"] for r in answers[3].json()["images"]} == {target}
            refused = [client.get(f"/similar/{httpx.URL(path=text).raw_path.decode()}"),
                       client.get("/images/x", params={"q": text}),
                       client.post("/click", json={"query_id": text[:64], "id": text[:64]}),
                       client.post("/tags", json={"ids": [text], "tag": "x"}, headers=auth),
                       client.request("DELETE", "/tags", json={"ids": [text], "tag": text}, headers=auth)]
            assert [a.status_code for a in refused] == [404, 404, 404, 404, 200]
            statuses.update(a.status_code for a in answers + refused)
        for body in ({"ids": [target], "tag": "\ud800"}, {"ids": ["\udfff"], "tag": "x"}):  # lone surrogates
            for method in ("POST", "DELETE"):
                answer = client.request(method, "/tags", content=json.dumps(body), headers={
                    **auth, "Content-Type": "application/json"})
                statuses[answer.status_code] += 1
                assert answer.status_code == 422 and "surrogate" in answer.text
        click = client.post("/click", content=json.dumps({"query_id": "\ud800", "id": "x"}),
                            headers={"Content-Type": "application/json"})
        statuses[click.status_code] += 1
        assert click.status_code == 422
        stored = {t["tag"]: t["count"] for t in client.get("/tags").json()["tags"]}
        assert {t: stored.get(t) for t in INJECTIONS} == dict.fromkeys(INJECTIONS, 1)
        client.app.state.search_log.flush()
        for text in INJECTIONS:  # take them off again, through the same API
            client.request("DELETE", "/tags", json={"ids": [target], "tag": text}, headers=auth)
    after = _tables(collection["home"] / "curation.duckdb")
    assert set(after) == set(before)  # no table dropped, none attached or added
    assert after["tags"] == before["tags"]
    assert after["queries"] >= before["queries"] + 3 * len(INJECTIONS)
    con = duckdb.connect(str(collection["home"] / "curation.duckdb"), read_only=True)
    try:
        logged = {r[0] for r in con.execute("SELECT query FROM queries").fetchall()}
    finally:
        con.close()
    assert {f"text:{t.lower()}" for t in INJECTIONS} <= logged  # stored as the text it was
    _show(f"injection: {len(INJECTIONS)} strings in tags, queries, filters and ids", statuses)


# from names in code only (replace_table: a name refused unless it is one of REPLACED_TABLES)
BUILT_SQL = {"insert_rows", "_ensure_schema", "record_metrics", "replace_table"}


def test_no_sql_is_built_from_request_text():
    """The service runs no SQL itself (it goes through vsearch_pipeline.core.store), and in
    store.py only the functions that build SQL from table and column names written in the code
    (metric tables, inserts) use anything but a literal statement with `?` parameters."""
    serving_calls = [node for path in (ROOT / "serving").glob("*.py")
                     for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "sql")]
    assert serving_calls == []
    tree = ast.parse((ROOT / "vsearch_pipeline" / "core" / "store.py").read_text())
    literal, built, inserts = 0, set(), []
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
            if isinstance(call.func, ast.Attribute) and call.func.attr in ("execute", "executemany"):
                if isinstance(call.args[0], ast.Constant) or (
                        isinstance(call.args[0], ast.Name) and call.args[0].id.isupper()):
                    literal += 1
                else:
                    built.add(function.name)
            if getattr(call.func, "id", None) == "insert_rows" and function.name != "record_metrics":
                inserts.append(call.args[1])
    assert literal > 10 and built <= BUILT_SQL, built - BUILT_SQL
    from vsearch_pipeline.core.store import MetricsDB

    with pytest.raises(ValueError, match="not a table the pipeline replaces"):
        MetricsDB(":memory:").replace_table("tags; DROP TABLE tags", None)
    assert inserts and all(isinstance(table, ast.Constant) for table in inserts)
    print(f"\n[sql audit] {literal} literal statements in store.py; SQL built only in "
          f"{sorted(built)}, from names in the code; {len(inserts)} inserts into literal tables; "
          "no SQL in serving/")


# ---- secrets -----------------------------------------------------------------------------------

def test_secrets_never_reach_logs_or_answers(server, collection, ids, caplog):
    caplog.set_level(logging.DEBUG)
    key, base = collection["key"], server["base"]
    image = next(iter(ids.values()))
    wrong = [key + "x", key[:-1], key.upper(), "Bearer " + key]
    answers = []
    with httpx.Client(base_url=base, timeout=60) as http:
        for bad in wrong:
            answers.append(http.post("/tags", json={"ids": [image], "tag": "s"}, headers={"X-API-Key": bad}))
            answers.append(http.post("/tags", json={"ids": [image], "tag": "s"},
                                     headers={"Authorization": f"Bearer {bad}"}))
            answers.append(http.put("/index/pin", params={"version": "nope"}, headers={"X-API-Key": bad}))
        auth = {"X-API-Key": key}
        answers += [http.post("/tags", json={"ids": [image], "tag": "s"}, headers=auth),
                    http.request("DELETE", "/tags", json={"ids": [image], "tag": "s"}, headers=auth),
                    http.put("/index/pin", params={"version": "nope"}, headers={"X-API-Key": key}),
                    http.post("/tags", content=b"{not json", headers={"X-API-Key": key,
                                                                      "Content-Type": "application/json"}),
                    http.post("/ingest", files={"files": ("a.txt", b"hello")}, headers={"X-API-Key": key}),
                    http.get("/images/nope", headers={"X-API-Key": key}),
                    http.get("/health"), http.get("/metrics"), http.get("/openapi.json")]
    statuses = Counter(a.status_code for a in answers)
    assert statuses[401] == 3 * len(wrong) and statuses[200] >= 5
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == S3_SECRET  # the service had it to hand
    logs = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "refused POST /tags" in logs and "GET /health" in logs  # logs were written
    for secret in (key, key[:-1], hash_key(key), S3_SECRET):
        assert secret not in logs
        for answer in answers:
            assert secret not in answer.text and secret not in str(answer.headers)
    _show(f"secrets: {len(caplog.records)} log records and {len(answers)} answers searched", statuses)


# ---- the source changing after indexing --------------------------------------------------------

@pytest.fixture(scope="module")
def changing(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """A collection of its own, since its files are moved, deleted, cut and overwritten after
    indexing: 8 Caltech-101 photos and a re-encoded copy of one (a near-duplicate group)."""
    root = tmp_path_factory.mktemp("changing")
    images = copy_caltech(shared_data, root / "images", ("accordion", "airplanes"), 4)
    Image.open(images / "accordion" / "image_0001.jpg").save(images / "accordion" / "copy.jpg",
                                                             quality=70)
    home = root / "home"
    settings = load_settings(home, {"source": {"uri": str(images)}, "index": {"index_type": "flat"},
                                    "clusters": {"min_cluster_size": 3},
                                    "serving": {"refresh_interval_s": 3600, "rate_limit_per_s": 0,
                                                "search_log_flush_s": 0.2}})
    with pytest.MonkeyPatch.context() as env:
        env.delenv(KEYS_ENV, raising=False)
        run_pipeline(home, settings, say=print)
    return {"root": root, "home": home, "images": images, "settings": settings}


def _listed(client: TestClient, image_id: str) -> dict[str, set[str]]:
    """Where each list shows the image, by the `original` state it gives it there."""
    states: dict[str, set[str]] = {}
    similar_to = next(r["id"] for r in client.get("/gallery").json()["images"] if r["id"] != image_id)
    similar = client.get(f"/similar/{similar_to}", params={"k": 20, "fold": "false"}).json()["results"]
    lists = {"similar": similar,
             "gallery": client.get("/gallery", params={"limit": 500}).json()["images"],
             "duplicates": [i for g in client.get("/duplicates").json()["groups"] for i in g["images"]],
             "clusters": [i for c in client.get("/clusters", params={"examples": 24}).json()["clusters"]
                          for i in c["examples"]]}
    for name, rows in lists.items():
        states[name] = {r["original"] for r in rows if r["id"] == image_id}
    return states


def test_an_original_gone_or_changed_is_never_served_under_its_id(changing):
    """Moved, deleted, cut short, or overwritten (with bytes of the same length, or another
    photo): no 500, never the old id for new bytes; lists say so from one stat per result."""
    images = changing["images"]
    with TestClient(app_for_home(changing["home"], changing["settings"]),
                    raise_server_exceptions=False) as client:
        ids = {r["path"]: r["id"] for r in client.get("/gallery", params={"limit": 500}).json()["images"]}
        group = client.get("/duplicates").json()["groups"][0]["images"]
        assert {r["path"] for r in group} == {"accordion/image_0001.jpg", "accordion/copy.jpg"}
        assert {r["original"] for r in client.get("/gallery").json()["images"]} == {"present"}
        other = (images / "airplanes" / "image_0004.jpg").read_bytes()
        flipped = bytearray((images / "airplanes" / "image_0002.jpg").read_bytes())
        flipped[len(flipped) // 2] ^= 0xFF
        changes = {  # path: (what happens to it, status served, state listed, words of the reason)
            "accordion/copy.jpg": (lambda p: p.rename(images / "moved.jpg"), 410, "missing",
                                   "moved or deleted"),
            "accordion/image_0002.jpg": (lambda p: p.unlink(), 410, "missing", "moved or deleted"),
            "accordion/image_0003.jpg": (lambda p: p.write_bytes(p.read_bytes()[:2000]), 409, "changed",
                                         "changed after it was indexed"),
            "airplanes/image_0001.jpg": (lambda p: p.write_bytes(other), 409, "changed",
                                         "changed after it was indexed"),
            "airplanes/image_0002.jpg": (lambda p: p.write_bytes(bytes(flipped)), 409, "present",
                                         "changed after it was indexed"),  # same size: seen when served
        }
        for path, (change, *_) in changes.items():
            change(images / path)
        statuses = Counter()
        for path, (_, status, state, reason) in changes.items():
            for url in (f"/images/{ids[path]}", f"/images/{ids[path]}/thumbnail"):
                answer = client.get(url)
                statuses[answer.status_code] += 1
                assert answer.status_code == status and reason in answer.json()["detail"], (path, answer.text)
            listed = _listed(client, ids[path])
            assert listed["gallery"] == listed["similar"] == {state}, (path, listed)
            if path == "accordion/copy.jpg":
                assert listed["duplicates"] == {state}
        intact = ids["accordion/image_0004.jpg"]
        original = (images / "accordion" / "image_0004.jpg").read_bytes()
        assert client.get(f"/images/{intact}").content == original
        assert client.get(f"/images/{intact}/thumbnail").status_code == 200
        assert _listed(client, intact)["gallery"] == {"present"}
        states = {r["original"] for c in client.get("/clusters", params={"examples": 24}).json()["clusters"]
                  for r in c["examples"]}
        assert states <= {"present", "missing", "changed"} and len(states) > 1
        found = client.post("/search", files={"file": ("q.jpg", other)}, data={"k": "20"}).json()
        overwritten = ids["airplanes/image_0001.jpg"]
        assert {r["original"] for r in found["results"] if r["id"] == overwritten} == {"changed"}
    _show("a changed source: 5 originals moved, deleted, cut and overwritten", statuses)


def test_every_answer_says_nosniff(client, collection, ids):
    """Pages, scripts, images, JSON, errors of every kind, a 429 and Starlette's own 500."""
    image = next(iter(ids.values()))
    answers = [client.get(url) for url in (
        "/", "/static/app.js", "/health", "/gallery", f"/images/{image}", f"/images/{image}/thumbnail",
        "/openapi.json", "/docs", "/no-such-page", "/gallery?limit=0", "/images/ffffffffffffffff")]
    answers.append(client.post("/tags", json={"ids": [image], "tag": "x"}))  # no key: 401
    with TestClient(_app(collection, rate_limit_per_s=0.001, rate_limit_burst=1)) as limited:
        answers += [limited.get("/gallery"), limited.get("/gallery")]
    failing = Service()

    @failing.get("/fails")
    def fails() -> None:
        raise RuntimeError("a bug")

    answers.append(TestClient(failing, raise_server_exceptions=False).get("/fails"))
    assert {a.status_code for a in answers} >= {200, 401, 404, 422, 429, 500}
    assert [a.headers.get("x-content-type-options") for a in answers] == ["nosniff"] * len(answers)
    _show("nosniff", Counter(a.status_code for a in answers))


# ---- numbers that are no numbers ---------------------------------------------------------------

NOT_FINITE = ("inf", "-inf", "nan", "NaN", "Infinity", "1e400", "-1e400")
HUGE_INTS = ("9" * 40, "-" + "9" * 40, str(2**63), str(2**64))


def test_nan_infinity_and_huge_numbers_are_a_422_everywhere(client, collection, ids):
    """Every numeric input of the service: query parameters, form fields and JSON bodies."""
    image, auth, statuses = next(iter(ids.values())), {"X-API-Key": collection["key"]}, Counter()
    label = client.get("/clusters").json()["clusters"][0]["label"]
    photo = (collection["images"] / "accordion" / "image_0001.jpg").read_bytes()
    gets = [("/gallery", "offset"), ("/gallery", "limit"), ("/duplicates", "offset"),
            ("/duplicates", "limit"), ("/clusters", "examples"), (f"/clusters/{label}", "offset"),
            (f"/clusters/{label}", "limit"), (f"/similar/{image}", "k"), ("/search/text?q=a", "k"),
            (f"/images/{image}/thumbnail", "size")]
    answers = [client.get(url, params={name: value}) for url, name in gets
               for value in NOT_FINITE + HUGE_INTS]
    answers += [client.get(f"/clusters/{value}") for value in NOT_FINITE + HUGE_INTS]
    answers += [client.post(f"/clusters/{value}/tag", json={"tag": "x"}, headers=auth)
                for value in NOT_FINITE + HUGE_INTS]
    answers += [client.post("/search", files={"file": ("q.jpg", photo)}, data={"k": value})
                for value in NOT_FINITE + HUGE_INTS]
    bboxes = [f"{v},0,10,10" for v in NOT_FINITE] + [f"0,0,{v},10" for v in NOT_FINITE]
    boxed = [client.post("/search", files={"file": ("q.jpg", photo)}, data={"bbox": box, "k": "3"})
             for box in bboxes]
    assert all("bbox must be four" in a.json()["detail"] for a in boxed), [a.text for a in boxed]
    bodies = [("POST", "/tags", '{"ids": [%s], "tag": "x"}'),
              ("POST", "/tags", '{"ids": ["a"], "tag": %s}'),
              ("DELETE", "/tags", '{"ids": ["a"], "tag": %s}'),
              ("POST", "/click", '{"query_id": %s, "id": "x"}'),
              ("POST", "/feedback", '{"query_id": "q", "id": "x", "relevant": %s}'),
              ("POST", f"/clusters/{label}/tag", '{"tag": %s}')]
    for method, url, body in bodies:
        for value in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 40, "[[[[NaN]]]]",
                      "[" * 800 + "NaN" + "]" * 800):  # nested deeper than a 422 can echo
            answers.append(client.request(method, url, content=body % value, headers={
                **auth, "Content-Type": "application/json"}))
    for answer in answers + boxed:
        statuses[answer.status_code] += 1
        assert answer.status_code == 422, (answer.request.url, answer.request.content[:200], answer.text)
        assert answer.json()["detail"]  # a reason, in JSON
    _show(f"numbers: {len(answers) + len(boxed)} NaNs, infinities and huge ints", statuses)


# ---- tags: one meaning per text, one state in memory and on disk ---------------------------------

def test_a_tag_is_the_same_tag_however_it_is_typed(client, collection, ids):
    """Padded, decomposed (NFC) or wrapped in zero-width characters, a tag names what it was
    stored as on every path that takes one; a tag of nothing visible is refused on each."""
    auth, statuses = {"X-API-Key": collection["key"]}, Counter()
    first, second = list(ids.values())[:2]
    label = client.get("/clusters").json()["clusters"][0]["label"]

    def check(answer, status: int):
        statuses[answer.status_code] += 1
        assert answer.status_code == status, (answer.request.url, answer.text)
        return answer.json()

    stored = "caf\u00e9 au lait"  # typed below as: padded, decomposed, zero-width around
    typed = ["  caf\u00e9 au lait  ", "cafe\u0301 au lait", "\u200bcaf\u00e9 au lait\ufeff", stored]
    assert check(client.post("/tags", json={"ids": [first], "tag": typed[0]}, headers=auth), 200) == {
        "tag": stored, "added": 1}
    assert check(client.post("/tags", json={"ids": [first, second], "tag": typed[1]}, headers=auth),
                 200)["added"] == 1
    assert {t["tag"]: t["count"] for t in client.get("/tags").json()["tags"]}[stored] == 2
    photo = (collection["images"] / "accordion" / "image_0001.jpg").read_bytes()
    for text in typed:
        assert check(client.get("/gallery", params={"tag": text}), 200)["total"] == 2
        assert {r["id"] for r in check(client.get(f"/similar/{first}", params={"tag": text}), 200)
                ["results"]} == {second}
        assert len(check(client.get("/search/text", params={"q": "a", "tag": text}), 200)["results"]) == 2
        assert len(check(client.post("/search", files={"file": ("q.jpg", photo)},
                                     data={"tag": text}), 200)["results"]) == 2
    assert check(client.request("DELETE", "/tags", json={"ids": [first], "tag": typed[2]},
                                headers=auth), 200) == {"tag": stored, "removed": 1}
    assert check(client.request("DELETE", "/tags", json={"ids": [second], "tag": typed[0]},
                                headers=auth), 200) == {"tag": stored, "removed": 1}
    assert stored not in {t["tag"] for t in client.get("/tags").json()["tags"]}
    named = check(client.post(f"/clusters/{label}/tag", json={"tag": " \u200dcluster  name "},
                              headers=auth), 200)
    assert named["tag"] == "cluster  name"
    members = [r["id"] for r in client.get(f"/clusters/{label}", params={"limit": 500}).json()["images"]]
    check(client.request("DELETE", "/tags", json={"ids": members, "tag": "cluster  name\u200b"},
                         headers=auth), 200)
    for blank in ("\u200b", "\u200b\u200c\u200d", "\u3164", " \u2060 ", "\u00ad", "\ufe0f", "   "):
        check(client.post("/tags", json={"ids": [first], "tag": blank}, headers=auth), 422)
        check(client.request("DELETE", "/tags", json={"ids": [first], "tag": blank}, headers=auth), 422)
        check(client.post(f"/clusters/{label}/tag", json={"tag": blank}, headers=auth), 422)
        check(client.get("/gallery", params={"tag": blank}), 422)
        check(client.get(f"/similar/{first}", params={"tag": blank}), 422)
        check(client.get("/search/text", params={"q": "a", "tag": blank}), 422)
        check(client.post("/search", files={"file": ("q.jpg", photo)}, data={"tag": blank}), 422)
    assert not {t["tag"] for t in client.get("/tags").json()["tags"]} & {stored, "cluster  name"}
    _show("tag text: 4 spellings of one tag, 7 invisible ones", statuses)


def _served_tags(client: TestClient) -> set[tuple[str, str]]:
    return {(tag, row["id"]) for row in client.get("/gallery", params={"limit": 500}).json()["images"]
            for tag in row["tags"]}


def test_racing_tag_writes_leave_memory_and_database_alike(client, collection, ids):
    """A POST and a DELETE of one tag on one image at the same moment, from real threads against
    the running app (its writer thread grouping them into one transaction), round after round:
    after each, what the service serves is what `curation.duckdb` holds."""
    auth, rounds, statuses = {"X-API-Key": collection["key"]}, 60, Counter()
    stored = CurationDB(str(collection["home"] / "curation.duckdb"))
    targets = list(ids.values())[:2]
    start = threading.Barrier(4)

    def send(method: str, image_id: str) -> None:
        start.wait()
        answer = client.request(method, "/tags", json={"ids": [image_id], "tag": "race"}, headers=auth)
        statuses[answer.status_code] += 1

    disagreements = []
    for n in range(rounds):
        order = ("POST", "DELETE") if n % 2 else ("DELETE", "POST")
        workers = [threading.Thread(target=send, args=(method, image_id))
                   for image_id in targets for method in order]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        served, on_disk = _served_tags(client), set(stored.all_tags())
        if served != on_disk:
            disagreements.append((n, served ^ on_disk))
    client.request("DELETE", "/tags", json={"ids": targets, "tag": "race"}, headers=auth)
    assert not disagreements, disagreements
    assert set(statuses) <= {200, 404} and statuses[200] >= 2 * rounds
    _show(f"racing tags: {rounds} rounds of POST and DELETE at once", statuses)


# ---- fuzzing -----------------------------------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("VSEARCH_FUZZ_EXAMPLES", "30"))
FUZZED: Counter = Counter()


@pytest.fixture(scope="module")
def fuzz_target(collection):
    """The service with a valid key in every request, and no rate limit (the fuzzer is fast)."""
    yield _app(collection), collection["key"]
    _show(f"schemathesis: up to {FUZZ_EXAMPLES} examples per operation", FUZZED)


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_target):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_target[0])


def test_fuzzing_the_openapi_schema_finds_no_server_error(fuzz_schema, fuzz_target):
    """Every operation, with valid and with invalid data (schemathesis' positive and negative
    modes), a valid key in each request so that the writes are exercised too: no 5xx."""
    key, failures = fuzz_target[1], []
    for operation in (result.ok() for result in fuzz_schema.get_all_operations()):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def fuzz(case):
                response = case.call(headers={"X-API-Key": key})
                FUZZED[response.status_code] += 1
                try:
                    case.validate_response(response, checks=[not_a_server_error])
                except Exception as err:  # collected: every failure is reported below
                    failures.append(f"{case.as_curl_command()}\n  -> {response.status_code}: "
                                    f"{response.text[:300]} ({type(err).__name__})")

            try:
                fuzz()
            except Unsatisfiable:  # no invalid request exists for it (an operation without input)
                assert mode is GenerationMode.NEGATIVE
    assert not failures, "\n".join(failures[:20])

"""The search service under load while the collection changes under it.

A real `vsearch serve` process on 127.0.0.1 takes a mix of `/similar`, `/search` uploads (whole
photos and crops), text searches, tag writes and clicks from several client threads for a bounded
time and number of requests, while two new index materializations run in their own processes and
are swapped in: new photos added to the source, then a different index type. Every request must
succeed, the responses must come from all three index versions, every tag written must be there
afterwards, and the server's resident memory after the warm-up must not grow past a stated bound.
The figures (requests, latency percentiles per kind, memory) are printed.

`VSEARCH_LOAD_SECONDS` sets how long the load runs (default 120 s); it runs at least until both
swaps have been seen.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import yaml
from conftest import copy_caltech, free_port, wait_until_served
from PIL import Image

from serving.auth import create_key
from vsearch_pipeline.runner import run_pipeline
from vsearch_pipeline.settings import load_settings, save_settings

pytestmark = pytest.mark.slow

CLASSES = ("accordion", "airplanes", "butterfly", "camera", "ketch")
ADDED_CLASS = "laptop"  # photos added to the source while the load runs: the first swap
PER_CLASS = 12
CLIENTS = 4
LOAD_SECONDS = float(os.environ.get("VSEARCH_LOAD_SECONDS", "120"))
MAX_REQUESTS = 50_000
WARM_UP_S = 20.0
# Growth of the server's RSS from the end of the warm-up to the peak. The index, the model and the
# text encoder are loaded by then; what may grow is the query cache (1024 vectors), the search-log
# buffer, the tag index and a second index held during a swap, all small at this size.
MEMORY_GROWTH_BOUND_MIB = 300
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TEXT_QUERIES = ("airplane", "accordion", "butterfly wings", "a camera", "sail boat", "laptop",
                "load-tagged image")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    root = tmp_path_factory.mktemp("load")
    images = copy_caltech(shared_data, root / "images", CLASSES, PER_CLASS)
    keys_file = root / "api_keys"
    key = create_key(keys_file, "load-test")
    home = root / "home"
    settings = load_settings(home, {
        "source": {"uri": str(images)},
        "index": {"index_type": "hnsw"},
        "clusters": {"min_cluster_size": 3},
        "serving": {"refresh_interval_s": 1.0, "search_log_flush_s": 0.5,
                    "api_keys_file": str(keys_file), "rate_limit_per_s": 0}})
    run_pipeline(home, settings, say=print)
    save_settings(home, settings)
    return {"home": home, "images": images, "key": key, "settings": settings,
            "photos": {p: Image.open(p).size for p in images.rglob("*.jpg")},
            "shared": shared_data}


@dataclass
class LoadRecord:
    """Every request's outcome, shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    tags_written: list[str] = field(default_factory=list)

    def count(self) -> int:
        return sum(map(len, self.seconds.values()))

    def add(self, kind: str, seconds: float, answer: httpx.Response | Exception) -> dict | None:
        with self.lock:
            self.seconds[kind].append(seconds)
            if isinstance(answer, Exception):
                self.failures.append(f"{kind}: {type(answer).__name__}: {answer}")
                return None
            if answer.status_code != 200:
                self.failures.append(f"{kind}: {answer.status_code} {answer.text[:300]}")
                return None
            body = answer.json()
            if "index_version" in body:
                self.versions.add(body["index_version"])
            return body


class LoadClient:
    """One client thread's loop: a weighted mix of the service's reads and writes."""

    MIX = (("similar", 4), ("upload", 2), ("crop", 1), ("text", 2), ("tag", 1), ("click", 2))

    def __init__(self, base: str, key: str, photos: dict[Path, tuple[int, int]], ids: list[str],
                 record: LoadRecord, seed: int) -> None:
        self.http = httpx.Client(base_url=base, timeout=120)
        self.key, self.photos, self.sizes, self.ids, self.record = key, sorted(photos), photos, ids, record
        self.random = random.Random(seed)
        self.last_search: dict | None = None
        self.seed = seed

    def run(self, stop: threading.Event) -> None:
        kinds, weights = zip(*self.MIX, strict=True)
        with self.http:
            while not stop.is_set() and self.record.count() < MAX_REQUESTS:
                kind = self.random.choices(kinds, weights)[0]
                getattr(self, kind)()

    def timed(self, kind: str, send) -> dict | None:
        started = time.perf_counter()
        try:
            answer = send()
        except httpx.HTTPError as err:
            answer = err
        return self.record.add(kind, time.perf_counter() - started, answer)

    def remember(self, body: dict | None) -> None:
        if body and body["results"]:
            self.last_search = body

    def similar(self) -> None:
        image_id = self.random.choice(self.ids)
        self.remember(self.timed("similar", lambda: self.http.get(f"/similar/{image_id}",
                                                                   params={"k": 10})))

    def upload(self, bbox: str | None = None, kind: str = "upload", photo: Path | None = None
               ) -> None:
        photo = photo or self.random.choice(self.photos)
        data = {"k": "10"} | ({"bbox": bbox} if bbox else {})
        self.remember(self.timed(kind, lambda: self.http.post(
            "/search", files={"file": (photo.name, photo.read_bytes())}, data=data)))

    def crop(self) -> None:
        photo = self.random.choice(self.photos)
        width, height = self.sizes[photo]
        x, y = self.random.randrange(width // 2), self.random.randrange(height // 2)
        box = f"{x},{y},{x + width // 3 + self.random.randrange(width // 6)},{y + height // 3}"
        self.upload(box, kind="crop", photo=photo)

    def text(self) -> None:
        query = self.random.choice(TEXT_QUERIES)
        self.remember(self.timed("text", lambda: self.http.get("/search/text",
                                                                params={"q": query, "k": 10})))

    def tag(self) -> None:
        tag = f"load-{self.seed}-{self.random.getrandbits(32):08x}"
        image_id = self.random.choice(self.ids)
        body = self.timed("tag", lambda: self.http.post(
            "/tags", json={"ids": [image_id], "tag": tag}, headers={"X-API-Key": self.key}))
        if body is not None:
            with self.record.lock:
                self.record.tags_written.append(tag)

    def click(self) -> None:
        if self.last_search is None:
            return self.similar()
        search = self.last_search
        chosen = self.random.choice(search["results"])["id"]
        self.timed("click", lambda: self.http.post("/click", json={"query_id": search["query_id"],
                                                                    "id": chosen}))


def sample_memory(process: psutil.Process, stop: threading.Event, samples: list[tuple[float, int]]
                  ) -> None:
    started = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - started, process.memory_info().rss))
        time.sleep(0.5)


def materialize(home: Path, config: dict) -> str:
    """`vsearch materialize` in its own process, as the pipeline runs next to a live service."""
    path = home.parent / f"config-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([str(Path(sys.executable).parent / "vsearch"), "materialize", "--home",
                          str(home), "--config", str(path)], capture_output=True, text=True,
                         timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run.stdout


def wait_for_version(http: httpx.Client, other_than: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        version = http.get("/health").json().get("index_version")
        if version and version != other_than:
            return version
        time.sleep(0.2)
    raise AssertionError(f"the service still serves {other_than} after {timeout_s} s")


def swap_twice(base: str, home: dict, swapped: list[str], errors: list[str]) -> None:
    """Add new photos and materialize, then change the index type and materialize again; wait for
    the service to serve each new version."""
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            time.sleep(WARM_UP_S)
            swapped.append(http.get("/health").json()["index_version"])
            copy_caltech(home["shared"], home["images"], (ADDED_CLASS,), PER_CLASS)
            materialize(home["home"], {})
            swapped.append(wait_for_version(http, swapped[-1]))
            materialize(home["home"], {"index": {"index_type": "flat"}})
            swapped.append(wait_for_version(http, swapped[-1]))
    except Exception as err:  # reported by the test, which must not hang on a dead thread
        errors.append(f"{type(err).__name__}: {err}")


def percentiles(seconds: list[float]) -> tuple[float, float, float, float]:
    values = np.array(seconds) * 1000
    return tuple(float(np.percentile(values, q)) for q in (50, 95, 99)) + (float(values.max()),)


def report_figures(record: LoadRecord, elapsed: float, memory: list[tuple[float, int]],
                   baseline: int) -> None:
    """Print the figures and keep them in test-artifacts/load.txt (CI shows no output of a test
    that passes)."""
    lines = [f"load: {record.count()} requests in {elapsed:.0f} s ({record.count() / elapsed:.1f}/s), "
             f"{CLIENTS} clients, {len(record.failures)} failed",
             f"{'kind':8} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"]
    for kind, seconds in sorted(record.seconds.items()):
        p50, p95, p99, top = percentiles(seconds)
        lines.append(f"{kind:8} {len(seconds):8d} {p50:8.1f} {p95:8.1f} {p99:8.1f} {top:8.1f}")
    peak = max(rss for _, rss in memory)
    lines.append(f"server RSS: {baseline / 2**20:.0f} MiB after the {WARM_UP_S:.0f} s warm-up, peak "
                 f"{peak / 2**20:.0f} MiB, end {memory[-1][1] / 2**20:.0f} MiB "
                 f"(bound: +{MEMORY_GROWTH_BOUND_MIB} MiB)")
    print("\n" + "\n".join(lines))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load.txt").write_text("\n".join(lines) + "\n")


def test_mixed_load_with_two_hot_swaps_fails_no_request(home: dict, tmp_path: Path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen([str(Path(sys.executable).parent / "vsearch"), "serve", "--home",
                               str(home["home"]), "--port", str(port)], stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_until_served(base, lambda: server.poll() is None)
        with httpx.Client(base_url=base, timeout=10) as http:
            ids = [row["id"] for row in http.get("/gallery", params={"limit": 500}).json()["images"]]

        record, stop, memory = LoadRecord(), threading.Event(), []
        swapped, swap_errors = [], []
        clients = [LoadClient(base, home["key"], home["photos"], ids, record, seed)
                   for seed in range(CLIENTS)]
        threads = [threading.Thread(target=c.run, args=(stop,)) for c in clients]
        threads.append(threading.Thread(target=sample_memory,
                                        args=(psutil.Process(server.pid), stop, memory)))
        swapper = threading.Thread(target=swap_twice, args=(base, home, swapped, swap_errors))
        started = time.monotonic()
        for thread in [*threads, swapper]:
            thread.start()
        swapper.join(timeout=LOAD_SECONDS + 1200)
        remaining = LOAD_SECONDS - (time.monotonic() - started)
        time.sleep(max(remaining, 10.0))  # keep loading the last version for a while
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        elapsed = time.monotonic() - started

        baseline = next(rss for at, rss in memory if at >= WARM_UP_S)
        report_figures(record, elapsed, memory, baseline)
        assert not swap_errors, swap_errors
        assert len(swapped) == 3 and len(set(swapped)) == 3, swapped
        assert record.failures == [], record.failures[:20]
        assert record.versions >= set(swapped), (record.versions, swapped)
        assert all(len(record.seconds[kind]) >= 10 for kind, _ in LoadClient.MIX), record.seconds.keys()
        peak = max(rss for _, rss in memory)
        assert peak - baseline < MEMORY_GROWTH_BOUND_MIB * 2**20

        with httpx.Client(base_url=base, timeout=30) as http:
            tags = {t["tag"] for t in http.get("/tags").json()["tags"]}
        assert set(record.tags_written) <= tags  # every acknowledged tag write is stored
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.seek(0)
        output = log.read()
        log.close()
    assert "Traceback" not in output, output[-4000:]

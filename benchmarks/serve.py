"""Serving: `/similar` on a one-million-vector index and `/search` with an uploaded JPEG, under wrk.

    python -m benchmarks serve [--quick] [--json FILE]

The index lives in a real vsearch home: its vectors are the default model's Caltech-101 embeddings
(the Parquet shards under ``VSEARCH_BENCH_VECTORS``; a fixed-seed synthetic base without them)
expanded to a million as `benchmarks.ann` does (random pairs mixed, noise shaped like their
spectrum), but in the model's own 1280 dimensions, so an uploaded photo embedded by the model
searches them. Two versions are written, each with its build record, as the faiss_index asset
writes them: the default's representation (the PCA-whitening the pipeline fits, to 256 axes, and
HNSW32 over 8-bit codes of the whitened vectors, with the whitening beside it so that uploads are
whitened as the collection was), and an exact flat index of the raw 1280 float32 dimensions (the
plain way) (`bench-hnsw` sorts last: the newest, served at start). `vsearch serve
--home` then runs as its own process, and wrk drives it on loopback: `/similar/{id}?k=10` over
random ids at several connection counts, then `/search` with Caltech JPEGs uploaded in turn (the
query cache is off, so every upload is decoded and embedded). The flat version is made live
through `PUT /index/pin` and driven the same way.

The home is kept under ``VSEARCH_BENCH_HOME`` (default ``~/.cache/vsearch/bench``) and reused when
its build record matches, since building a million-vector HNSW graph takes minutes. `--quick`:
20,000 vectors and 3-second loads.
"""

from __future__ import annotations

import gc
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from benchmarks.ann import (
    SEED,
    VECTORS_ENV,
    expand,
    pca_basis,
    pca_reduce,
    real_vectors,
    recall,
    synthetic_seed_vectors,
)
from benchmarks.pipeline import caltech_photos
from serving.auth import hash_key
from vsearch_pipeline.core.index import IndexParams, build_index, factory_string, set_search_params
from vsearch_pipeline.core.layout import (
    BUILD_FILE,
    BUILD_FORMAT,
    IDS_FILE,
    INDEX_FILE,
    HomeLayout,
    index_dir,
    manifest_path,
)
from vsearch_pipeline.core.manifest import complete_manifest
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
from vsearch_pipeline.core.models import load_model
from vsearch_pipeline.core.retrieval import VectorTransform
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.transform_fit import fitted_whitening
from vsearch_pipeline.settings import RetrievalSettings, load_settings, save_settings

HOME_ENV = "VSEARCH_BENCH_HOME"
HNSW = IndexParams("hnsw", M=32, efConstruction=40, efSearch=64, storage="SQ8")  # served
RECALL_EF_SEARCH = (32, 64, 128, 256)
FLAT = IndexParams("flat")
SIMILAR_CONNECTIONS = (1, 2, 4, 8)
SEARCH_CONNECTIONS = 2
RECALL_QUERIES = 200
TARGET_SIMILAR_P95_MS, TARGET_SIMILAR_RPS, TARGET_SEARCH_P95_MS = 20.0, 300.0, 150.0


# ----------------------------------------------------------------------------- the served home


def model_space_vectors(n: int, n_queries: int, dim: int) -> tuple[np.ndarray, np.ndarray, str]:
    """n base and n_queries query vectors in the model's space (`dim` wide, so that the served
    model's queries search them), generated as benchmarks.ann does."""
    vectors, source = real_vectors()
    if vectors is None:
        vectors = synthetic_seed_vectors(d=dim)
    if vectors.shape[1] != dim:
        raise ValueError(f"{source}: {vectors.shape[1]} dimensions, but the model's are {dim}")
    basis = pca_basis(vectors, vectors.shape[1])  # a full rotation: generate there, rotate back
    seeds, variance = pca_reduce(vectors, vectors.shape[1])
    rng = np.random.default_rng(SEED)
    base = expand(seeds, variance, n, rng) @ basis
    queries = expand(seeds, variance, n_queries, rng) @ basis
    return np.ascontiguousarray(base, np.float32), np.ascontiguousarray(queries, np.float32), source


def fake_ids(n: int) -> list[str]:
    rng = np.random.default_rng(SEED + 1)
    return [f"{v:016x}" for v in rng.integers(0, 2**63, n, dtype=np.int64)]


def generated_uris(n: int) -> list[str]:
    return [f"bench://generated/{i:07d}.jpg" for i in range(n)]


def write_manifest(store: ArtifactStore, ids: list[str]) -> None:
    n = len(ids)
    uris = generated_uris(n)
    columns = {"id": ids, "uri": uris, "path": [u.removeprefix("bench://") for u in uris],
               "version": ["1"] * n, "bytes": [0] * n, "content_hash": ids, "width": [0] * n,
               "height": [0] * n, "format": ["JPEG"] * n, "status": ["ok"] * n, "reason": [None] * n}
    store.write_parquet(manifest_path("bench"), complete_manifest(pa.table(columns)))


def write_version(store: ArtifactStore, index: faiss.Index, params: IndexParams, ids: list[str],
                  version: str, model, build_s: float, recall: float,
                  transform: VectorTransform | None = None) -> dict:
    """One index version folder, laid out as the faiss_index asset writes it."""
    folder = index_dir(model.spec.key, version)
    for name, data in (transform or VectorTransform()).files().items():
        store.write_bytes(f"{folder}/{name}", data)
    uris = generated_uris(len(ids))
    store.write_parquet(f"{folder}/{IDS_FILE}", pa.table({
        "position": pa.array(range(len(ids)), pa.int64()), "id": ids, "uri": uris,
        "path": [u.removeprefix("bench://") for u in uris],
        "labels": pa.array([[]] * len(ids), pa.list_(pa.string())),
        "label_probs": pa.array([[]] * len(ids), pa.list_(pa.float32()))}))
    Path(store.path(folder)).mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, store.path(f"{folder}/{INDEX_FILE}"))  # the format serialize() writes
    build = {"format": BUILD_FORMAT, "version": version, "model": model.name, "model_key": model.spec.key,
             "model_version": model.version, "pretrained": model.spec.pretrained,
             "view": model.spec.view, "int8": model.spec.int8, "dimension": index.d,
             "count": int(index.ntotal), "factory": factory_string(params, index.d),
             "params": params.as_dict(), "mode": "full", "build_seconds": round(build_s, 1),
             "recall_at_10": recall}
    store.write_json(f"{folder}/{BUILD_FILE}", build)
    return build


def prepare_home(home: Path, n: int) -> dict:
    """The served home, built or (when its record matches) reused; returns the record."""
    record_path = home / "bench-serve.json"
    wanted = {"n": n, "hnsw": HNSW.as_dict(), "seed": SEED, "vectors": os.environ.get(VECTORS_ENV),
              "model_key": ModelSpec(DEFAULT_MODEL).key,
              "whitening_dims": RetrievalSettings().whitening_dims}
    serving = {"serving": {"query_cache_size": 0, "rate_limit_per_s": 0,  # wrk is one client
                           "api_keys_file": str(HomeLayout(home).api_keys)}}
    if record_path.exists() and json.loads(record_path.read_text()).get("wanted") == wanted:
        print(f"# reusing the served home {home}", flush=True)
        save_settings(home, load_settings(home, serving))
        write_bench_key(home)
        return json.loads(record_path.read_text())
    shutil.rmtree(home, ignore_errors=True)
    save_settings(home, load_settings(home, serving))
    write_bench_key(home)
    store = ArtifactStore(str(HomeLayout(home).artifacts))
    model = load_model(ModelSpec(DEFAULT_MODEL))
    start = time.perf_counter()
    base, queries, source = model_space_vectors(n, RECALL_QUERIES, model.dim)
    print(f"# data: {n} x {base.shape[1]}; {source}; generated in {time.perf_counter() - start:.0f} s",
          flush=True)
    ids = fake_ids(n)
    write_manifest(store, ids)
    start = time.perf_counter()
    transform = VectorTransform(whitening=fitted_whitening(base, RetrievalSettings()))
    served = np.concatenate([transform.apply(base[i:i + 100_000]) for i in range(0, n, 100_000)])
    queries = transform.apply(queries)
    whitening_s = time.perf_counter() - start
    print(f"# whitening to {served.shape[1]} axes fitted and applied in {whitening_s:.0f} s",
          flush=True)
    start = time.perf_counter()
    hnsw = build_index(served, HNSW, seed=SEED)
    hnsw_build_s = time.perf_counter() - start
    truth = faiss.knn(queries, served, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    recall_by_ef = {}
    for ef in RECALL_EF_SEARCH:
        set_search_params(hnsw, replace(HNSW, efSearch=ef))
        recall_by_ef[ef] = round(recall(hnsw.search(queries, 10)[1], truth), 4)
    set_search_params(hnsw, HNSW)
    hnsw_recall = recall_by_ef[HNSW.efSearch]
    print(f"# {factory_string(HNSW, hnsw.d)} efConstruction {HNSW.efConstruction}: built in "
          f"{hnsw_build_s:.0f} s; recall@10 by efSearch {recall_by_ef} ({RECALL_QUERIES} queries "
          f"against exact search); served at efSearch {HNSW.efSearch}", flush=True)
    dimension = hnsw.d
    write_version(store, hnsw, HNSW, ids, "bench-hnsw", model, hnsw_build_s, hnsw_recall, transform)
    del hnsw, served  # one copy of the vectors beside the base at a time
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)
    del base
    write_version(store, exact, FLAT, ids, "bench-flat", model, 0.0, 1.0)
    del exact
    gc.collect()
    record = {"wanted": wanted, "source": source, "dimension": dimension,
              "whitening_s": round(whitening_s, 1),
              "hnsw_build_s": round(hnsw_build_s, 1), "hnsw_recall_at_10": hnsw_recall,
              "hnsw_recall_by_ef_search": recall_by_ef,
              "versions": ["bench-hnsw", "bench-flat"]}
    record_path.write_text(json.dumps(record, indent=2))
    return record


# ------------------------------------------------------------------------------- the service


def resident_mb(pid: int) -> float:
    """The process's resident memory (VmRSS), in MB."""
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        if entry.startswith("VmRSS:"):
            return round(int(entry.split()[1]) / 1024, 1)
    return float("nan")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BENCH_KEY = secrets.token_urlsafe(32)  # the pin needs a key: a fresh one each run


def get_json(url: str, method: str = "GET") -> dict:
    request = urllib.request.Request(url, method=method, headers={"X-API-Key": BENCH_KEY})
    with urllib.request.urlopen(request, timeout=600) as reply:
        return json.loads(reply.read())


def write_bench_key(home: Path) -> str:
    """A keys file in the home holding only this run's key; returns its path."""
    path = HomeLayout(home).api_keys
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(f"bench:{hash_key(BENCH_KEY)}\n")
    return str(path)


def wait_for_version(url: str, version: str, server: subprocess.Popen, limit_s: float = 1200) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        if server.poll() is not None:
            raise RuntimeError(f"vsearch serve exited with {server.returncode}")
        try:
            if get_json(f"{url}/health").get("index_version") == version:
                return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(1)
    raise TimeoutError(f"index {version} was not live after {limit_s} s")


def wait_until_ready(url: str, server: subprocess.Popen, limit_s: float = 1200) -> float:
    """Seconds until /health says searches by image and by text answer without loading first
    (the service warms its models in the background; measuring during that measures it too)."""
    start = time.perf_counter()
    while not all(get_json(f"{url}/health")["ready"].values()):
        if server.poll() is not None or time.perf_counter() - start > limit_s:
            raise RuntimeError("the service's query models did not load")
        time.sleep(0.5)
    return time.perf_counter() - start


def start_server(home: Path, port: int, log_path: Path) -> subprocess.Popen:
    vsearch = Path(sys.executable).parent / "vsearch"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log_path.open("wb") as log:
        return subprocess.Popen([str(vsearch), "serve", "--home", str(home), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


# ---------------------------------------------------------------------------------------- wrk


DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, '
    .. '"non_2xx": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def similar_script(ids: list[str], folder: Path) -> Path:
    sample = random.Random(SEED).sample(ids, min(len(ids), 20_000))
    table = ",".join(f'"{i}"' for i in sample)
    path = folder / "similar.lua"
    path.write_text(f"local ids = {{{table}}}\nmath.randomseed({SEED})\n"
                    "request = function()\n"
                    '  return wrk.format("GET", "/similar/" .. ids[math.random(#ids)] .. "?k=10")\nend\n'
                    + DONE_LUA)
    return path


def search_script(photos: list[Path], folder: Path) -> Path:
    files = ",".join(f'"{p}"' for p in photos)
    path = folder / "search.lua"
    path.write_text(f"local files = {{{files}}}\n" + r"""
local boundary = "vsearchbenchboundary"
local bodies, turn = {}, 0
for i, name in ipairs(files) do
  local f = assert(io.open(name, "rb")); local data = f:read("*a"); f:close()
  bodies[i] = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.jpg\"\r\n"
    .. "Content-Type: image/jpeg\r\n\r\n" .. data .. "\r\n--" .. boundary
    .. "\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n10\r\n--" .. boundary .. "--\r\n"
end
request = function()
  turn = turn % #bodies + 1
  return wrk.format("POST", "/search", {["Content-Type"] = "multipart/form-data; boundary=" .. boundary},
                    bodies[turn])
end
""" + DONE_LUA)
    return path


def drive(url: str, script: Path, connections: int, seconds: int) -> dict:
    """One wrk run (one thread, `connections` open at once); latency in ms, rate in requests/s."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("WRK_JSON"))[9:])
    return {"connections": connections, "seconds": seconds, "requests": raw["requests"],
            "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
            "p50_ms": raw["p50_us"] / 1000, "p95_ms": raw["p95_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000, "errors": raw["errors"], "non_2xx": raw["non_2xx"]}


def line(name: str, row: dict) -> str:
    return (f"| {name:<28} | {row['connections']:>5} | {row['rps']:>8.1f} | {row['p50_ms']:>8.1f} | "
            f"{row['p95_ms']:>8.1f} | {row['p99_ms']:>8.1f} | {row['errors'] + row['non_2xx']:>6} |")


def measure_version(url: str, version: str, ids: list[str], photos: list[Path], folder: Path,
                    seconds: int, connections: tuple[int, ...]) -> dict:
    similar = similar_script(ids, folder)
    drive(url, similar, 4, 5)  # warm: the first requests page the index in
    rows = {"similar": [], "search": None}
    for c in connections:
        rows["similar"].append(drive(url, similar, c, seconds))
        print(line(f"{version} /similar k=10", rows["similar"][-1]), flush=True)
    search = search_script(photos, folder)
    drive(url, search, 1, 2)
    rows["search"] = drive(url, search, SEARCH_CONNECTIONS, seconds)
    print(line(f"{version} /search upload", rows["search"]), flush=True)
    return rows


def query_photos(n: int = 50) -> list[Path]:
    photos = caltech_photos(quick=False)
    return random.Random(SEED).sample(photos, n)


def summary(hnsw: dict, flat: dict) -> dict:
    meeting = [r for r in hnsw["similar"] if r["p95_ms"] < TARGET_SIMILAR_P95_MS]
    best = max(meeting, key=lambda r: r["rps"], default=None)
    flat_best = max(flat["similar"], key=lambda r: r["rps"])
    return {"similar_best_under_p95_target": best,
            "similar_target_met": bool(best and best["rps"] >= TARGET_SIMILAR_RPS),
            "similar_rps_vs_flat": round(max(r["rps"] for r in hnsw["similar"]) / flat_best["rps"], 1),
            "search_p95_ms": hnsw["search"]["p95_ms"],
            "search_target_met": hnsw["search"]["p95_ms"] < TARGET_SEARCH_P95_MS}


def run(quick: bool) -> dict:
    n, seconds = (20_000, 3) if quick else (1_000_000, 20)
    connections = (1, 4) if quick else SIMILAR_CONNECTIONS
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    root = Path(os.environ.get(HOME_ENV, Path.home() / ".cache" / "vsearch" / "bench"))
    home = root / f"serve-{n}"
    record = prepare_home(home, n)
    ids = fake_ids(n)
    photos = query_photos()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        server = start_server(home, port, folder / "server.log")
        try:
            load_s = wait_for_version(url, "bench-hnsw", server)
            rss_live = resident_mb(server.pid)  # the index alone: the query models load next
            warm_s = wait_until_ready(url, server)
            rss_ready = resident_mb(server.pid)
            print(f"# vsearch serve: {n} vectors live in {load_s:.0f} s, the query models loaded "
                  f"{warm_s:.0f} s later; wrk -t1 on loopback, "
                  f"{seconds} s per load\n| {'endpoint':<28} | conns | req/s    | p50 ms   | p95 ms   | "
                  f"p99 ms   | errors |\n|{'-' * 30}|-------|----------|----------|----------|----------|"
                  f"--------|", flush=True)
            hnsw = measure_version(url, "hnsw", ids, photos, folder, seconds, connections)
            rss_after = resident_mb(server.pid)
            get_json(f"{url}/index/pin?version=bench-flat", method="PUT")
            swap_s = wait_for_version(url, "bench-flat", server)
            flat = measure_version(url, "flat (exact)", ids, photos, folder, seconds, (connections[-1],))
            get_json(f"{url}/index/pin", method="DELETE")
        finally:
            server.terminate()
            server.wait(60)
            server_log = (folder / "server.log").read_text(errors="replace")
    errors = [ln for ln in server_log.splitlines() if "Traceback" in ln or " 500 " in ln]
    result = {"n": n, "record": record, "load_s": round(load_s, 1), "pin_swap_s": round(swap_s, 1),
              "warm_up_s": round(warm_s, 1),
              "server_rss_mb_live": rss_live, "server_rss_mb_ready": rss_ready,
              "server_rss_mb_after_load": rss_after,
              "hnsw": hnsw, "flat": flat, "server_errors": errors[:5]}
    result.update(summary(hnsw, flat))
    best = result["similar_best_under_p95_target"]
    print(f"# /similar: best under p95 {TARGET_SIMILAR_P95_MS:g} ms: "
          f"{best['rps'] if best else 0:.0f} req/s at {best['connections'] if best else '-'} connections "
          f"(target {TARGET_SIMILAR_RPS:g}: {'met' if result['similar_target_met'] else 'NOT met'}); "
          f"{result['similar_rps_vs_flat']}x exact flat search's rate\n"
          f"# /search upload p95 {result['search_p95_ms']:.1f} ms (target {TARGET_SEARCH_P95_MS:g}: "
          f"{'met' if result['search_target_met'] else 'NOT met'}); server errors: {len(errors)}\n"
          f"# the service's resident memory with the default index live: {rss_live:.0f} MB; with the "
          f"image and text query models loaded: {rss_ready:.0f} MB; after the load: {rss_after:.0f} MB")
    return result

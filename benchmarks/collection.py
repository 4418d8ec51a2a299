"""The collection steps at 100,000 and 1,000,000 images: wall time and peak memory of each, and
how they grow, so that a user knows where one machine stops.

    python -m benchmarks collection [--quick] [--json FILE]

Each size gets a generated home laid out as the per-batch job leaves it, in batches of 100,000:
manifests, embedding shards of both views of the default model (1280 float32 dimensions, made
from the real Caltech-101 vectors under ``VSEARCH_BENCH_VECTORS`` as benchmarks.ann makes them;
a fixed-seed synthetic base without them) and pHash files. 1% of the images are planted copies
of another (their vector plus a little noise, their pHash with up to 4 bits flipped), and a
grounding set pairs each copy with its original, so the evaluation has queries to answer.
Then each asset of `refresh_collection` is materialized in a new process, in the job's order,
with the home's default settings: the process's wall time and its peak resident memory (from
wait4), against a process that only loads the definitions (the floor every step pays). There is
no plain way to compare with here; the comparison is between the two sizes (growth against the
10x more images). `--quick`: 5,000 and 20,000 images.

The source folder holds an empty file per image (the index step lists the source, to leave out
what was deleted, and that listing is part of its cost); no step reads an image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.serve import model_space_vectors, resident_mb
from vsearch_pipeline.core.batches import batch_key
from vsearch_pipeline.core.embed import embeddings_table
from vsearch_pipeline.core.grounding import format_grounding
from vsearch_pipeline.core.layout import (
    EMBEDDINGS,
    HASHES,
    MANIFESTS,
    HomeLayout,
    embeddings_path,
    manifest_path,
)
from vsearch_pipeline.core.manifest import complete_manifest
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
from vsearch_pipeline.core.models import load_model
from vsearch_pipeline.core.phash_files import write_hashes
from vsearch_pipeline.core.sources import SourceObject, list_source
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.settings import load_settings, save_settings

REPO = Path(__file__).resolve().parents[1]
HOME_ENV = "VSEARCH_BENCH_HOME"
SIZES = {False: (100_000, 1_000_000), True: (5_000, 20_000)}
BATCH_ROWS = 100_000
COPY_SHARE, COPY_NOISE, COPY_MAX_BITS, SEED = 0.01, 0.05, 4, 0
STEPS = ("near_duplicate_groups", "projection_head", "retrieval_transform", "faiss_index",
         "clusters", "curation_grounding", "evaluation")
STEP_TIMEOUT_S, STEP_MEMORY_MB = 3600, 19_000
STEP_CODE = """
import json, sys, time
from pathlib import Path
from dagster import AssetKey
from vsearch_pipeline.definitions import make_definitions
from vsearch_pipeline.runner import open_instance
from vsearch_pipeline.settings import load_settings
home, asset = Path(sys.argv[1]), sys.argv[2]
instance = open_instance(home)
defs = make_definitions(home, load_settings(home))
figures = {}
if asset != "-":
    job = defs.resolve_implicit_global_asset_job_def()
    start = time.perf_counter()
    result = job.execute_in_process(asset_selection=[AssetKey(asset)], instance=instance,
                                    raise_on_error=True)
    figures["run_s"] = time.perf_counter() - start
    for event in result.get_asset_materialization_events():
        for name, value in event.materialization.metadata.items():
            if isinstance(value.value, (int, float)) and not isinstance(value.value, bool):
                figures[name] = value.value
# VmHWM, not ru_maxrss: across fork and exec ru_maxrss keeps the parent's high-water mark
hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
peak_mb = int(hwm.split()[1]) / 1024
print("FIGURES " + json.dumps({"peak_rss_mb": round(peak_mb, 1), "figures": figures}))
"""


# ---------------------------------------------------------------------------- the generated home


def planted_copies(vectors: np.ndarray, hashes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Overwrite the last 1% of rows with noisy copies of random earlier rows (in place);
    returns the original of each copy, by row."""
    n = len(vectors)
    copies = np.arange(n - int(n * COPY_SHARE), n)
    originals = rng.integers(0, copies[0], len(copies))
    noisy = vectors[originals] + rng.normal(0, COPY_NOISE / np.sqrt(vectors.shape[1]),
                                            (len(copies), vectors.shape[1])).astype(np.float32)
    vectors[copies] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    flips = np.zeros(len(copies), np.uint64)
    for _ in range(COPY_MAX_BITS):
        bits = rng.integers(0, 64, len(copies)).astype(np.uint64)
        flips ^= np.where(rng.random(len(copies)) < 0.5, np.uint64(1) << bits, np.uint64(0))
    hashes[copies] = hashes[originals] ^ flips
    return originals


def write_files(source: Path, key: str, ids: list[str]) -> None:
    """An empty file per image, 1,000 to a folder: the source the index step lists."""
    for first in range(0, len(ids), 1000):
        folder = source / key / f"{first // 1000:03d}"
        folder.mkdir(parents=True)
        for image_id in ids[first:first + 1000]:
            (folder / f"{image_id}.jpg").touch()


def write_batch(store: ArtifactStore, key: str, objects: list[SourceObject], ids: list[str],
                vectors: np.ndarray, hashes: np.ndarray, models: list) -> None:
    """The batch's manifest (from the real listing of its files), shards and pHashes."""
    n = len(ids)
    store.write_parquet(manifest_path(key), complete_manifest(pa.table({
        "id": ids, "uri": [o.uri for o in objects], "path": [o.path for o in objects],
        "version": [o.version for o in objects], "bytes": [0] * n, "content_hash": ids,
        "width": [640] * n, "height": [480] * n, "format": ["JPEG"] * n, "status": ["ok"] * n,
        "reason": [None] * n})))
    for model in models:  # the copy view gets the same vectors: its cost is what is measured
        store.write_parquet(embeddings_path(model.spec.key, key),
                            embeddings_table(ids, vectors, model.name, model.version))
    write_hashes(store, key, zip(ids, (int(h) for h in hashes), strict=True))


def forget_derived(home: Path) -> None:
    """Back to what the per-batch job leaves: every step then runs in full, not incrementally."""
    layout = HomeLayout(home)
    for folder in layout.artifacts.iterdir():
        if folder.name not in (MANIFESTS, EMBEDDINGS, HASHES):
            shutil.rmtree(folder)
    for path in (layout.metrics_db, layout.curation_db):
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".wal").unlink(missing_ok=True)
    shutil.rmtree(layout.dagster, ignore_errors=True)


def prepare_home(home: Path, n: int) -> dict:
    """A home of n generated images (reused when its record matches); returns the record."""
    record_path = home / "bench-collection.json"
    wanted = {"n": n, "seed": SEED, "copies": COPY_SHARE, "batch_rows": BATCH_ROWS,
              "vectors": os.environ.get("VSEARCH_BENCH_VECTORS"),
              "model_key": ModelSpec(DEFAULT_MODEL).key}
    if record_path.exists() and json.loads(record_path.read_text()).get("wanted") == wanted:
        print(f"# reusing the generated home {home}, without what an earlier run derived", flush=True)
        forget_derived(home)
        return json.loads(record_path.read_text())
    shutil.rmtree(home, ignore_errors=True)
    start = time.perf_counter()
    search = load_model(ModelSpec(DEFAULT_MODEL))
    models = [search, load_model(search.spec.copy_spec)]
    vectors, _, source = model_space_vectors(n, 0, search.dim)
    rng = np.random.default_rng(SEED + 2)
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    originals = planted_copies(vectors, hashes, rng)
    ids = [f"{i:012x}" for i in range(n)]
    folder = home / "source"
    keys = [batch_key(number) for number in range(1, (n - 1) // BATCH_ROWS + 2)]
    for number, key in enumerate(keys):
        write_files(folder, key, ids[number * BATCH_ROWS:(number + 1) * BATCH_ROWS])
    listing = list_source(str(folder))  # sorted by path, so in id order within each batch
    store = ArtifactStore(str(HomeLayout(home).artifacts))
    for number, key in enumerate(keys):
        rows = slice(number * BATCH_ROWS, min(n, (number + 1) * BATCH_ROWS))
        write_batch(store, key, listing[rows], ids[rows], vectors[rows], hashes[rows], models)
    copies = range(n - len(originals), n)
    grounding = home / "planted-copies.csv"
    grounding.write_text(format_grounding(
        (f"g{c}", ids[row]) for c, o in zip(copies, originals, strict=True) for row in (o, c)))
    save_settings(home, load_settings(home, {"source": {"uri": str(folder)},
                                             "evaluation": {"grounding_sets": [str(grounding)]}}))
    record = {"wanted": wanted, "source": source, "copies": len(originals),
              "generated_s": round(time.perf_counter() - start, 1)}
    record_path.write_text(json.dumps(record, indent=2))
    print(f"# {n} images generated and written in {record['generated_s']:.0f} s; {source}",
          flush=True)
    return record


# ------------------------------------------------------------------------------- the steps


def run_step(home: Path, asset: str) -> dict:
    """One asset materialized in a new process (`-`: none, the floor): its wall time, its peak
    resident memory (the process's own VmHWM at its end) and the asset's numeric metadata. A
    step past `STEP_MEMORY_MB` of resident memory is stopped (the machine is shared), as is one
    past `STEP_TIMEOUT_S`; either is reported as such and the other steps still run."""
    env = {**os.environ, "VSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", STEP_CODE, str(home), asset], cwd=REPO,
                                 env=env, stdout=out, stderr=err, text=True)
        stopped = watch(child, start)
        wall = round(time.perf_counter() - start, 1)
        out.seek(0)
        err.seek(0)
        output, errors = out.read(), err.read()
    if stopped:
        return {"asset": asset, "wall_s": wall, "stopped": stopped}
    if child.returncode:  # said, and the other steps still measured
        return {"asset": asset, "wall_s": wall, "failed": errors.strip()[-2000:]}
    report = json.loads(next(ln for ln in output.splitlines() if ln.startswith("FIGURES "))[8:])
    return {"asset": asset, "wall_s": wall, **report}


def watch(child: subprocess.Popen, start: float) -> str | None:
    """Wait for the child; kill it past the memory or time limit and say which (and when this
    process is interrupted: a step busy in native code would outlive it)."""
    try:
        return _watch(child, start)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _watch(child: subprocess.Popen, start: float) -> str | None:
    while child.poll() is None:
        time.sleep(0.5)
        why = None
        if resident_mb(child.pid) > STEP_MEMORY_MB:
            why = f"over {STEP_MEMORY_MB:,} MB of resident memory"
        elif time.perf_counter() - start > STEP_TIMEOUT_S:
            why = f"over {STEP_TIMEOUT_S:,} s"
        if why:
            return why
    return None


# ------------------------------------------------------------------------------------- the run


def measure_size(home: Path, n: int) -> dict:
    record = prepare_home(home, n)
    floor = run_step(home, "-")
    print(f"# {n:,} images; a process that loads the definitions: {floor['wall_s']} s, "
          f"{floor['peak_rss_mb']:.0f} MB\n| step | wall s | above floor s | asset's own s | peak RSS MB "
          f"| above floor MB |\n|---|---:|---:|---:|---:|---:|", flush=True)
    steps = []
    for asset in STEPS:
        step = run_step(home, asset)
        if "peak_rss_mb" in step:
            step["above_floor_s"] = round(max(0.0, step["wall_s"] - floor["wall_s"]), 1)
            step["above_floor_mb"] = round(step["peak_rss_mb"] - floor["peak_rss_mb"], 1)
        steps.append(step)
        print(step_line(step), flush=True)
    return {"n": n, "home": record, "floor": floor, "steps": steps,
            "wall_s": round(sum(s["wall_s"] for s in steps), 1),
            "peak_rss_mb": max((s.get("peak_rss_mb", 0) for s in steps), default=0)}


def step_line(step: dict) -> str:
    if "peak_rss_mb" not in step:
        why = (f"stopped: {step['stopped']}" if "stopped" in step
               else f"failed: {step['failed'].splitlines()[-1]}")
        return f"| {step['asset']} | {step['wall_s']} | {why} | | | |"
    own = step["figures"].get("seconds")
    return (f"| {step['asset']} | {step['wall_s']:.1f} | {step['above_floor_s']:.1f} | "
            f"{'' if own is None else f'{own:.1f}'} | {step['peak_rss_mb']:,.0f} | "
            f"{step['above_floor_mb']:,.0f} |")


def growth(small: dict, large: dict) -> list[dict]:
    """Per step: how its time and memory above the floor grew from the smaller size to the
    larger, and the time's growth as an exponent of the size ratio (1: linear)."""
    ratio = large["n"] / small["n"]
    rows = []
    for a, b in zip(small["steps"], large["steps"], strict=True):
        if "peak_rss_mb" not in a or "peak_rss_mb" not in b:
            continue
        time_ratio = max(b["above_floor_s"], 0.1) / max(a["above_floor_s"], 0.1)
        memory_ratio = b["above_floor_mb"] / max(a["above_floor_mb"], 1.0)
        rows.append({"asset": a["asset"], "time_ratio": round(time_ratio, 2),
                     "time_exponent": round(float(np.log(time_ratio) / np.log(ratio)), 2),
                     "memory_ratio": round(memory_ratio, 2)})
        print(f"# {a['asset']}: time above the floor x{time_ratio:.1f} (exponent "
              f"{rows[-1]['time_exponent']}), memory above it x{memory_ratio:.1f}, for x{ratio:.0f} "
              f"images", flush=True)
    return rows


def run(quick: bool) -> dict:
    root = Path(os.environ.get(HOME_ENV, Path.home() / ".cache" / "vsearch" / "bench"))
    sizes = [measure_size(root / f"collection-{n}", n) for n in SIZES[quick]]
    return {"sizes": sizes, "growth": growth(*sizes)}

"""Peak memory of an IVF index built shard by shard against the plain way (every vector loaded).

    python -m benchmarks.ivf_shard_memory [--vectors N] [--dim D] [--shards S] [--json FILE]

Writes N unit vectors (from a fixed seed, around `--clusters` random centres so that recall means
something) as S embedding shards in a temporary folder, one shard at a time through
`embeddings_table`, so the generator never holds them all. Then each build runs in a fresh
process, so each peak RSS (VmHWM, or ``ru_maxrss``) is its own:

- shards: `core.sharded_index.build_ivf_by_shards`;
- plain:  `core.layout.load_embeddings`, then `core.index.build_index` with the same parameters.

Both are scored with recall@k on the same queries against an exact search over the shards, and
the shard-by-shard peak is printed beside the ceiling predicted by `sharded_index.memory_ceiling`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import psutil

from vsearch_pipeline.core.index import IndexParams, build_index, resolve_params
from vsearch_pipeline.core.sharded_index import (
    DEFAULT_BATCH_ROWS,
    build_ivf_by_shards,
    memory_ceiling,
    recall_by_shards,
    shard_row_counts,
    sharded_params,
    vector_dim,
)
from vsearch_pipeline.core.storage import ArtifactStore

MODEL_KEY = "bench"
TYPES = {
    "ivf-pq": IndexParams("ivf-pq"),
    "opq-ivf-pq": IndexParams("ivf-pq", opq=True),
    "ivf-flat": IndexParams("ivf-flat"),
}
MIB = 1 << 20


def write_shards(root: str, n: int, d: int, shards: int, clusters: int, seed: int) -> None:
    """n unit vectors as `shards` embedding shards, generated and written one shard at a time."""
    from vsearch_pipeline.core.embed import embeddings_table
    from vsearch_pipeline.core.layout import embeddings_path

    store = ArtifactStore(root)
    centres = np.random.default_rng(seed).normal(size=(max(clusters, 1), d)).astype(np.float32)
    start = 0
    for shard in range(shards):
        rows = n // shards + (shard < n % shards)
        rng = np.random.default_rng([seed, shard])
        vectors = rng.normal(size=(rows, d)).astype(np.float32)
        if clusters:
            vectors += centres[rng.integers(0, clusters, rows)]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"{i:016x}" for i in range(start, start + rows)]
        store.write_parquet(embeddings_path(MODEL_KEY, f"b{shard:05d}"),
                            embeddings_table(ids, vectors, "bench-model", "1"))
        start += rows


def _peak_mib() -> float:
    """This process's peak RSS. VmHWM where there is /proc: ru_maxrss survives exec, so a child
    would report the parent's RSS at fork time if that was higher."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / MIB


def measure(method: str, type_name: str, root: str, n_queries: int, k: int, batch_rows: int,
            seed: int) -> dict:
    """One build in this (fresh) process: peak RSS, wall time, recall@k and the prediction."""
    store = ArtifactStore(root)
    from vsearch_pipeline.core.artifacts import load_embeddings
    from vsearch_pipeline.core.layout import embeddings_dir

    shards = store.list(embeddings_dir(MODEL_KEY), ".parquet")
    params = TYPES[type_name]
    imports = _rss_mib()
    started = time.perf_counter()
    if method == "shards":
        index, ids = build_ivf_by_shards(store, shards, params, batch_rows=batch_rows, seed=seed)
        params = sharded_params(store, shards, params)
    else:
        ids, vectors, _ = load_embeddings(store, MODEL_KEY)
        params = resolve_params(params, len(ids), vectors.shape[1])
        index = build_index(vectors, params, seed=seed)
        del vectors
    wall = time.perf_counter() - started
    peak, after = _peak_mib(), _rss_mib()
    recall = recall_by_shards(index, ids, store, shards, k=k, n_queries=n_queries, seed=seed + 1,
                              batch_rows=batch_rows)
    n, d = sum(shard_row_counts(store, shards)), vector_dim(store, shards)
    predicted = memory_ceiling(params, n, d, batch_rows=batch_rows) if method == "shards" else None
    return {
        "method": method, "index": type_name, "vectors": index.ntotal, "dim": d,
        "params": params.as_dict(), "imports_mib": round(imports, 1), "peak_rss_mib": round(peak, 1),
        "build_mib": round(peak - imports, 1), "rss_after_build_mib": round(after, 1),
        "predicted_build_mib": round(predicted["peak"] / MIB, 1) if predicted else None,
        "predicted_terms_mib": {t: round(b / MIB, 1) for t, b in predicted.items()} if predicted else None,
        "wall_s": round(wall, 1), f"recall@{k}": round(recall, 4),
    }


def _in_fresh_process(*args) -> dict:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, *args).result()


def table(results: list[dict], k: int) -> str:
    header = ("method", "index", "vectors", "peak RSS MiB", "imports MiB", "build MiB",
              "predicted MiB", "wall s", f"recall@{k}")
    rows = [(r["method"], r["index"], f"{r['vectors']:,}", f"{r['peak_rss_mib']:.0f}",
             f"{r['imports_mib']:.0f}", f"{r['build_mib']:.0f}",
             f"{r['predicted_build_mib']:.0f}" if r["predicted_build_mib"] else "-",
             f"{r['wall_s']:.1f}", f"{r[f'recall@{k}']:.3f}") for r in results]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for type_name in dict.fromkeys(r["index"] for r in results):
        by = {r["method"]: r for r in results if r["index"] == type_name}
        if {"shards", "plain"} <= by.keys():
            s, p = by["shards"], by["plain"]
            lines.append(f"{type_name}: plain / shards peak RSS = "
                         f"{p['peak_rss_mib'] / s['peak_rss_mib']:.2f}x, "
                         f"build memory (peak - imports) = {p['build_mib'] / s['build_mib']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=320)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=1000, help="0: uniform on the sphere")
    parser.add_argument("--types", default="ivf-pq,ivf-flat", help=f"comma-separated, of {list(TYPES)}")
    parser.add_argument("--methods", default="shards,plain")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also save the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ivf-shards-") as root:
        started = time.perf_counter()
        write_shards(root, args.vectors, args.dim, args.shards, args.clusters, args.seed)
        print(f"wrote {args.vectors:,} x {args.dim} float32 vectors as {args.shards} shards "
              f"in {time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs, "
              f"{psutil.virtual_memory().total / (1 << 30):.0f} GiB", flush=True)
        results = []
        for type_name in args.types.split(","):
            for method in args.methods.split(","):
                results.append(_in_fresh_process(method, type_name, root, args.queries, args.k,
                                                  args.batch_rows, args.seed))
                print(f"  done: {method} {type_name} in {results[-1]['wall_s']} s", flush=True)
    print(table(results, args.k))
    if args.json:
        machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
                   "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1)}
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

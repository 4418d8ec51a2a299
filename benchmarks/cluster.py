"""Clustering 100,000 vectors: the pipeline's HDBSCAN after PCA against HDBSCAN on raw vectors.

Vectors are real-derived where ``VSEARCH_BENCH_VECTORS`` names an embeddings folder of the
pipeline (Parquet shards with ``id`` and ``vector``; the classes come from the manifest beside
it, ``../../manifest``): each new vector mixes two photos of one class plus noise, so the class
stays the ground truth. Without it, a fixed-seed synthetic Gaussian mixture stands in (said in
the figures). The plain way (hdbscan on the raw 1280-d vectors) runs on a smaller n that
finishes; the pipeline runs on that n as well, for the ratio.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vsearch_pipeline.core.cluster import ClusterParams, cluster_labels
from vsearch_pipeline.core.embed import table_vectors
from vsearch_pipeline.core.metrics import cluster_metrics

FULL_N, QUICK_N = 100_000, 10_000
PLAIN_N = {True: 2_000, False: 5_000}
TARGET_SECONDS = 120.0


def real_vectors(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vectors and class ids (-1: no class, e.g. BACKGROUND_Google) of a pipeline run."""
    tables = [pq.read_table(p, columns=["id", "vector"]) for p in sorted(folder.glob("*.parquet"))]
    shards = sorted((folder / "../../manifest").glob("*.parquet"))
    manifest = [pq.read_table(p, columns=["id", "path"]) for p in shards]
    folder_of = {i: Path(p).parent.name for t in manifest
                 for i, p in zip(t.column("id").to_pylist(), t.column("path").to_pylist(), strict=True)}
    vectors = np.concatenate([table_vectors(t) for t in tables])
    names = [folder_of.get(i, "") for t in tables for i in t.column("id").to_pylist()]
    classes = sorted({n for n in names if n and n != "BACKGROUND_Google"})
    index = {c: k for k, c in enumerate(classes)}
    return vectors, np.array([index.get(n, -1) for n in names], np.int64)


def synthetic_vectors(rng: np.random.Generator, n: int = 9000, dim: int = 1280,
                      classes: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-seed Gaussian mixture of unit vectors, when no real vectors are at hand."""
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, size=n)
    vectors = centres[labels] + rng.normal(scale=1.2, size=(n, dim))
    return _unit(vectors), labels


def expand(vectors: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` vectors, each a random mix of two vectors of one class plus a little noise."""
    first = rng.integers(0, len(vectors), size=n)
    partner = first.copy()
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        picked = np.flatnonzero(labels[first] == label)
        partner[picked] = rng.choice(members, size=picked.size)
    weight = rng.uniform(0.3, 0.7, size=(n, 1)).astype(np.float32)
    mixed = weight * vectors[first] + (1 - weight) * vectors[partner]
    noise = rng.normal(scale=0.01, size=mixed.shape).astype(np.float32)
    return _unit(mixed + noise), labels[first]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def timed_clusters(vectors: np.ndarray, truth: np.ndarray, params: ClusterParams) -> dict:
    start = time.perf_counter()
    labels = cluster_labels(vectors, params)
    seconds = time.perf_counter() - start
    quality = cluster_metrics(vectors, labels, truth)
    return {"n": len(vectors), "seconds": round(seconds, 2),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in quality.items()}}


def load(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    folder = os.environ.get("VSEARCH_BENCH_VECTORS")
    if folder and Path(folder).is_dir():
        vectors, labels = real_vectors(Path(folder))
        return vectors, labels, f"real: {folder} ({len(vectors)} vectors, expanded)"
    vectors, labels = synthetic_vectors(rng)
    return vectors, labels, "synthetic fixed-seed mixture (VSEARCH_BENCH_VECTORS not set)"


def run(quick: bool) -> dict:
    rng = np.random.default_rng(11)
    base, base_labels, source = load(rng)
    vectors, truth = expand(base, base_labels, QUICK_N if quick else FULL_N, rng)
    print(f"data: {source}; {vectors.shape}", flush=True)
    params = ClusterParams()
    pipeline = timed_clusters(vectors, truth, params)
    print(f"pipeline (HDBSCAN after PCA {params.n_components}): {pipeline}", flush=True)
    small = PLAIN_N[quick]
    pipeline_small = timed_clusters(vectors[:small], truth[:small], params)
    plain = timed_clusters(vectors[:small], truth[:small], ClusterParams(reduce="none"))
    print(f"at n={small}: pipeline {pipeline_small}\n  plain (HDBSCAN on raw {vectors.shape[1]}-d): {plain}")
    figures = {"source": source, "params": params.as_dict(), "pipeline": pipeline,
               "pipeline_small_n": pipeline_small, "plain_small_n": plain,
               "plain_over_pipeline_time": round(plain["seconds"] / max(pipeline_small["seconds"], 1e-3), 2),
               "target_seconds": TARGET_SECONDS}
    if not quick:
        figures["under_target"] = pipeline["seconds"] < TARGET_SECONDS
    print(f"summary: {pipeline['n']} vectors in {pipeline['seconds']} s; plain/pipeline time at n={small}: "
          f"{figures['plain_over_pipeline_time']}x", flush=True)
    return figures

"""Clustering 100,000 vectors: the pipeline's HDBSCAN after PCA against the hdbscan library.

Vectors are real-derived where ``VSEARCH_BENCH_VECTORS`` names an embeddings folder of the
pipeline (Parquet shards with ``id`` and ``vector``; the classes come from the manifest beside
it, ``../../manifest``): each new vector mixes two photos of one class plus noise, so the class
stays the ground truth. Without it, a fixed-seed synthetic Gaussian mixture stands in (said in
the figures). The plain ways run on a smaller n that finishes: the hdbscan library on the same
PCA-reduced vectors (its KD-tree Boruvka; the labels' agreement with the pipeline's k-NN-graph
HDBSCAN is reported as adjusted Rand), and the hdbscan library on the raw 1280-d vectors.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import adjusted_rand_score

from vsearch_pipeline.core.cluster import (
    MIN_SAMPLES,
    ClusterParams,
    cluster_images,
    reduce_dimensions,
)
from vsearch_pipeline.core.embed import table_vectors
from vsearch_pipeline.core.knn_hdbscan import knn_hdbscan_labels
from vsearch_pipeline.core.metrics import cluster_metrics

FULL_N, QUICK_N = 100_000, 10_000
PCA_N, RAW_N = {True: 5_000, False: 20_000}, {True: 1_000, False: 5_000}
TARGET_SECONDS = 120.0
SAME_SIZE = 5  # the minimum cluster size both HDBSCANs are compared at


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


def timed(fn, vectors: np.ndarray, truth: np.ndarray) -> tuple[dict, np.ndarray]:
    start = time.perf_counter()
    labels = fn(vectors)
    seconds = time.perf_counter() - start
    quality = cluster_metrics(vectors, labels, truth)
    return {"n": len(vectors), "seconds": round(seconds, 2),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in quality.items()}}, labels


def library_hdbscan(params: ClusterParams):
    """The plain way: hdbscan.HDBSCAN (KD-tree Boruvka) after the same reduction."""
    import hdbscan

    def labels(vectors: np.ndarray) -> np.ndarray:
        reduced = reduce_dimensions(vectors, params).astype(np.float64)
        return hdbscan.HDBSCAN(min_cluster_size=SAME_SIZE,
                               min_samples=MIN_SAMPLES).fit_predict(reduced)

    return labels


def load(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    folder = os.environ.get("VSEARCH_BENCH_VECTORS")
    if folder and Path(folder).is_dir():
        vectors, labels = real_vectors(Path(folder))
        return vectors, labels, f"real: {folder} ({len(vectors)} vectors, expanded)"
    vectors, labels = synthetic_vectors(rng)
    return vectors, labels, "synthetic fixed-seed mixture (VSEARCH_BENCH_VECTORS not set)"


def compare(vectors: np.ndarray, truth: np.ndarray, n: int, params: ClusterParams,
            plain: ClusterParams, name: str) -> dict:
    """The pipeline's k-NN-graph HDBSCAN and the hdbscan library (after `plain`'s reduction, the
    same minimum sizes) on the first n vectors: the same algorithm, so their labels agree."""
    ours, our_labels = timed(lambda v: knn_hdbscan_labels(reduce_dimensions(v, plain), SAME_SIZE,
                                                           MIN_SAMPLES), vectors[:n], truth[:n])
    theirs, their_labels = timed(library_hdbscan(plain), vectors[:n], truth[:n])
    row = {"n": n, "pipeline": ours, "library": theirs,
           "library_over_pipeline_time": round(theirs["seconds"] / max(ours["seconds"], 1e-3), 2),
           "agreement_ari": round(float(adjusted_rand_score(their_labels, our_labels)), 4)}
    print(f"at n={n}, against the hdbscan library {name}:\n  pipeline {ours}\n  library  {theirs}\n"
          f"  library/pipeline time {row['library_over_pipeline_time']}x; labels agree at adjusted Rand "
          f"{row['agreement_ari']}", flush=True)
    return row


def run(quick: bool) -> dict:
    rng = np.random.default_rng(11)
    base, base_labels, source = load(rng)
    vectors, truth = expand(base, base_labels, QUICK_N if quick else FULL_N, rng)
    print(f"data: {source}; {vectors.shape}", flush=True)
    params = ClusterParams()
    pipeline, _ = timed(lambda v: cluster_images(v, params).labels, vectors, truth)
    print(f"pipeline (covering HDBSCAN after PCA {params.n_components}, core.cluster): {pipeline}",
          flush=True)
    after_pca = compare(vectors, truth, PCA_N[quick], params, params, f"after PCA {params.n_components}")
    raw = compare(vectors, truth, RAW_N[quick], params, ClusterParams(reduce="none"),
                  f"on the raw {vectors.shape[1]}-d vectors")
    figures = {"source": source, "params": params.as_dict(), "pipeline": pipeline,
               "library_after_pca": after_pca, "library_raw": raw, "target_seconds": TARGET_SECONDS}
    if not quick:
        figures["under_target"] = pipeline["seconds"] < TARGET_SECONDS
    print(f"summary: {pipeline['n']} vectors in {pipeline['seconds']} s (target {TARGET_SECONDS:g} s); the "
          f"hdbscan library takes {after_pca['library_over_pipeline_time']}x the time after PCA "
          f"(n={after_pca['n']}) and {raw['library_over_pipeline_time']}x on raw vectors (n={raw['n']})",
          flush=True)
    return figures

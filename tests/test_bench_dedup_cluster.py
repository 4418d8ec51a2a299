"""Smoke runs of the dedup and cluster benchmarks: they finish and write every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "benchmarks", name, "--quick", "--json", str(out)],
                   cwd=ROOT, check=True, timeout=300, capture_output=True)
    return json.loads(out.read_text())["figures"]


@pytest.mark.slow
def test_dedup_benchmark_reports_both_tools_and_the_scale(tmp_path: Path, shared_data: Path) -> None:
    """The benchmark reads the photos where the tests do (VSEARCH_TEST_DATA or ../shared/data)."""
    figures = run_benchmark("dedup", tmp_path / "dedup.json")
    for tool in ("vsearch", "imagededup"):
        assert {"seconds", "pairs", "precision", "recall"} <= set(figures[tool])
    assert figures["threshold"] == 10 and figures["speedup"] > 0
    assert [row["n"] for row in figures["grouping"]] == [100_000, 200_000]
    assert figures["grouping_all_planted_found"] is True


@pytest.mark.slow
def test_cluster_benchmark_reports_time_and_quality(tmp_path: Path) -> None:
    figures = run_benchmark("cluster", tmp_path / "cluster.json")
    assert figures["pipeline"]["n"] == 10_000
    for key in ("seconds", "n_clusters", "noise_share", "silhouette", "purity", "adjusted_rand", "nmi",
                "coverage"):
        assert key in figures["pipeline"] and key in figures["library_raw"]["library"]
    for row in (figures["library_after_pca"], figures["library_raw"]):
        assert row["library_over_pipeline_time"] > 0
    # the k-NN-graph HDBSCAN finds what the hdbscan library finds on the same reduced vectors
    assert figures["library_after_pca"]["agreement_ari"] > 0.95

"""Smoke test of the serving benchmark: `python -m benchmarks serve --quick --json F`.

It starts `vsearch serve` on a generated index and drives it with wrk, so it checks that every
request of the load was answered without an error, not how fast."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_serve_quick_answers_every_request(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "serve.json"
    env = {k: v for k, v in os.environ.items() if k != "VSEARCH_BENCH_VECTORS"}  # the synthetic base
    env.update(VSEARCH_BENCH_HOME=str(tmp_path / "homes"), VSEARCH_TEST_DATA=str(shared_data))
    done = subprocess.run([sys.executable, "-m", "benchmarks", "serve", "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.read_text())["figures"]
    assert figures["n"] == 20_000 and figures["server_errors"] == []
    loads = figures["hnsw"]["similar"] + figures["flat"]["similar"] + [figures["hnsw"]["search"],
                                                                       figures["flat"]["search"]]
    for load in loads:
        assert load["requests"] > 0 and load["errors"] == 0 and load["non_2xx"] == 0
        assert 0 < load["p50_ms"] <= load["p95_ms"] <= load["p99_ms"]
    assert 0.0 < figures["record"]["hnsw_recall_at_10"] <= 1.0
    assert figures["similar_rps_vs_flat"] > 0
    # served at the default's representation: 256 whitened axes over 8-bit codes
    assert figures["record"]["dimension"] == 256 and figures["record"]["wanted"]["hnsw"]["storage"] == "SQ8"
    assert figures["server_rss_mb_live"] > 0 and figures["server_rss_mb_ready"] > 0
    assert figures["warm_up_s"] >= 0  # measured once the query models had loaded

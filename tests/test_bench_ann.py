"""Smoke test of the vector search benchmark: `python -m benchmarks ann --quick --json F`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ann_quick_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "ann.json"
    env = {k: v for k, v in os.environ.items() if k != "VSEARCH_BENCH_VECTORS"}  # the synthetic base
    done = subprocess.run([sys.executable, "-m", "benchmarks", "ann", "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "synthetic base" in done.stdout
    figures = json.loads(out.read_text())["figures"]
    families = {row["family"] for row in figures["rows"]}
    assert {"flat", "hnsw", "ivf-flat", "hnsw-sq8-refine", "ivf-pq4fs-refine"} <= families
    assert all(0.0 <= row["recall_at_10"] <= 1.0 and row["qps"] > 0 for row in figures["rows"])
    assert figures["ivf_nprobe1_recall"] is not None
    assert figures["plot"] == "None" or Path(figures["plot"]).exists()

"""Smoke test of the collection-steps benchmark: `python -m benchmarks collection --quick`.

Two generated homes (5,000 and 20,000 images, 1% of them planted copies), each collection asset
materialized in a process of its own. It checks that every step ran and found what was planted,
and that the memory figures are the step's own, not how fast anything was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.collection import STEPS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_collection_quick_runs_every_step_and_finds_the_planted_copies(tmp_path: Path) -> None:
    out = tmp_path / "collection.json"
    env = {k: v for k, v in os.environ.items() if k != "VSEARCH_BENCH_VECTORS"}  # the synthetic base
    env.update(VSEARCH_BENCH_HOME=str(tmp_path / "homes"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "benchmarks", "collection", "--quick", "--json",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(out.read_text())["figures"]
    assert [size["n"] for size in figures["sizes"]] == [5_000, 20_000]
    for size in figures["sizes"]:
        steps = {step["asset"]: step for step in size["steps"]}
        assert list(steps) == list(STEPS)
        assert not [s for s in steps.values() if "failed" in s or "stopped" in s], steps
        copies = size["home"]["copies"]
        assert copies == size["n"] // 100
        groups = steps["near_duplicate_groups"]["figures"]
        assert groups["images"] == size["n"] and groups["groups"] >= 0.9 * copies
        assert steps["faiss_index"]["figures"]["vectors"] == size["n"]
        assert steps["evaluation"]["figures"]["planted-copies/recall@10"] >= 0.95
        # each step's peak is its own process's (VmHWM), above what loading the definitions takes
        assert steps["faiss_index"]["peak_rss_mb"] > size["floor"]["peak_rss_mb"] > 100
    assert [row["asset"] for row in figures["growth"]] == list(STEPS)

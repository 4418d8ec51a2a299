"""The search-quality comparison through the pipeline: every 10th Caltech-101 photo, each
retrieval setting materialized in turn, its figures read back from the evaluation asset's rows
in DuckDB. The settings on by default must beat the raw backbone there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.quality import SETTINGS
from vsearch_pipeline.settings import RetrievalSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_retrieval_beats_the_raw_backbone_in_the_evaluation_table(
        tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "quality.json"
    subprocess.run([sys.executable, "-m", "benchmarks", "quality", "--quick", "--json", str(out)],
                   cwd=ROOT, check=True, timeout=900, capture_output=True)
    figures = json.loads(out.read_text())["figures"]
    print(json.dumps(figures, indent=1))
    raw = figures["raw backbone"]
    assert raw["retrieval"].startswith("whiten=0,dba=0,qe=0") and raw["queries"] > 800
    first = figures["first run"]  # the embeddings step, read back from its metrics
    assert first["embedded"] == raw["queries"] and first["embedding_seconds"] > 0
    (default,) = [row for name, row in figures.items() if name.endswith("(default)")]
    assert default["retrieval"] == "whiten=0,dba=10,qe=10x1,alpha=3.0,rerank=none,ndfloor=0.7"
    defaults = RetrievalSettings()  # the row called default is measured with the defaults
    assert (defaults.whitening, defaults.database_augmentation_k, defaults.query_expansion_k,
            defaults.query_expansion_rounds, defaults.expansion_alpha, defaults.rerank,
            defaults.near_duplicate_floor) == (True, 10, 10, 1, 3.0, "none", 0.7)
    # 868 photos are too few to whiten (24 per axis): the whitening rows stay unwhitened
    assert figures["whitening"]["retrieval"].startswith("whiten=0,")
    assert default["map@10"] > raw["map@10"] + 0.01
    assert default["map@10"] >= figures["DBA + alpha-QE"]["map@10"] - 0.005
    served = figures["default, served by HNSW32,SQ8 (the served default)"]
    assert served["map@10"] >= default["map@10"] - 0.005  # what the service holds loses nothing
    assert served["served_bytes_per_image"] < figures["default, served by HNSW32 over float32"][
        "served_bytes_per_image"] / 2
    assert figures["DBA k=10"]["map@10"] > raw["map@10"]
    assert figures["k-reciprocal re-ranking"]["map@10"] > raw["map@10"]
    assert figures["alpha-QE k=10"]["map@10"] >= raw["map@10"] - 0.005
    assert figures["projection head + default"]["retrieval"].startswith(default["retrieval"] + ",head=")
    assert [name for name in figures if name != "first run"] == list(SETTINGS)
    for name in SETTINGS:  # each setting was really built and measured
        row = figures[name]
        assert 0 < row["map@10"] <= 1 and row["query_ms"] > 0

"""The folding benchmark, quick: through the real service, folded near-duplicates never shorten
the result list, and folding keeps most of the search quality by class."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_folded_results_are_k_cards_and_keep_the_quality(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "folding.json"
    subprocess.run([sys.executable, "-m", "benchmarks", "folding", "--quick", "--json", str(out)],
                   cwd=ROOT, check=True, timeout=900, capture_output=True)
    figures = json.loads(out.read_text())["figures"]
    print(json.dumps(figures, indent=1))
    for measured in figures.values():
        assert measured["cards folded"] == measured["cards unfolded"] == 10.0
        assert measured["map@10 folded"] >= 0.8 * measured["map@10 unfolded"]
    faces = figures["Caltech-101 Faces + Faces_easy"]
    assert faces["map@10 folded"] >= faces["map@10 unfolded"]  # crops fold under their originals

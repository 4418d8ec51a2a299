"""The layout module: every path name of a home, and light enough for the command line."""

import subprocess
import sys
from pathlib import Path

from vsearch_pipeline.core.layout import HomeLayout


def test_home_layout_names_every_file_of_a_home(tmp_path: Path):
    home = HomeLayout(tmp_path)
    assert home.settings_file == tmp_path / "vsearch.yaml"
    assert home.artifacts == tmp_path / "artifacts"
    assert home.metrics_db == tmp_path / "vsearch.duckdb"
    assert home.curation_db == tmp_path / "curation.duckdb"
    assert home.dagster == tmp_path / "dagster"
    assert home.pin_file == tmp_path / "serving_pin"
    assert home.api_keys == tmp_path / "api-keys"
    assert home.demo == tmp_path / "demo"
    assert home.downloads == tmp_path / "downloads"


def test_layout_imports_neither_torch_nor_dagster():
    code = ("import sys, vsearch_pipeline.core.layout; "
            "print(sorted(m for m in ('torch', 'dagster') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

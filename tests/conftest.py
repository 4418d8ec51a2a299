"""Shared fixtures: where the real test photos are (../shared/data or VSEARCH_TEST_DATA)."""

import os
from pathlib import Path

import pytest

DATA_ENV = "VSEARCH_TEST_DATA"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    path = Path(os.environ.get(DATA_ENV, default)).resolve()
    if not (path / "caltech101").is_dir():
        pytest.skip(f"test photos not found at {path} (set {DATA_ENV})")
    return path

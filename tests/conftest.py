"""Shared fixtures: where the real test photos are (../shared/data or VSEARCH_TEST_DATA)."""

import os
from pathlib import Path

import pytest

DATA_ENV = "VSEARCH_TEST_DATA"


def _data_root() -> Path:
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return Path(os.environ.get(DATA_ENV, default)).resolve()


def _folder(name: str) -> Path:
    path = _data_root() / name
    if not path.is_dir():
        pytest.skip(f"test photos not found at {path} (set {DATA_ENV})")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    _folder("caltech101")
    return _data_root()


@pytest.fixture(scope="session")
def cases() -> Path:
    """The imagededup test images: edited copies, odd formats, a corrupt file."""
    return _folder("dedup_cases")

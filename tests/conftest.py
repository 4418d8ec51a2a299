"""Shared fixtures: where the real test photos are (../shared/data or VSEARCH_TEST_DATA)."""

import os
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 server on 127.0.0.1 (moto in server mode, as s3fs's own tests use), one per
    test module, stopped afterwards. Use with `s3_credentials`."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch):
    """Dummy credentials: s3fs and boto3 insist on some, moto accepts any."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def copy_caltech(shared: Path, images: Path, classes: tuple[str, ...], per_class: int) -> Path:
    """The first `per_class` photos of each Caltech-101 class into images/<class>/."""
    import shutil

    for name in classes:
        (images / name).mkdir(parents=True, exist_ok=True)
        for photo in sorted((shared / "caltech101" / name).glob("*.jpg"))[:per_class]:
            shutil.copy(photo, images / name / photo.name)
    return images


def wait_until_served(base: str, alive, timeout_s: float = 180) -> None:
    """Poll `base`/health until the service answers with a live index; `alive()` says whether the
    server (thread or process) is still running, so a crash fails at once rather than at the end."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert alive(), "the service stopped while starting"
        try:
            if httpx.get(f"{base}/health", timeout=5).json().get("index_version"):
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"the service did not come up within {timeout_s} s"
        time.sleep(0.2)

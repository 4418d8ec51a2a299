"""Shared fixtures: where the real test photos are (../shared/data or VSEARCH_TEST_DATA)."""

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


@dataclass(frozen=True)
class KnownCopies:
    """The photos whose copies are all known, as the near-duplicate tests draw them: the Faces
    names (Faces/X and Faces_easy/X are one photo and its crop), `distractors` other Caltech-101
    photos, the dedup_cases edits (paths relative to the data root), and the Faces names in the
    order that splits them into a fit half (0::2) and a held-out half (1::2)."""

    faces: list[str]
    distractors: list[str]
    edits: list[str]
    halves: list[str]


def known_copies(shared: Path, cases: Path, distractors: int, seed: int = 7) -> KnownCopies:
    caltech = shared / "caltech101"
    faces = sorted(p.name for p in (caltech / "Faces").glob("*.jpg"))
    others = sorted(str(p.relative_to(shared)) for p in caltech.glob("*/*.jpg")
                    if p.parent.name not in ("Faces", "Faces_easy"))
    rng = np.random.default_rng(seed)
    drawn = [others[i] for i in rng.choice(len(others), distractors, replace=False)]
    edits = sorted(str(p.relative_to(shared)) for p in (cases / "mixed_images").iterdir())
    return KnownCopies(faces, drawn, edits, list(rng.permutation(faces)))


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

"""POST /ingest: uploads written into the collection's source behind hashed API keys, through the
real service (no index needed to take uploads), and `vsearch api-key create`."""

import hashlib
import io
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from serving.app import create_app
from serving.auth import KEYS_ENV, create_key, hash_key, parse_keys
from serving.holder import IndexHolder
from vsearch_pipeline.cli import main
from vsearch_pipeline.core.catalog import ArtifactRecords
from vsearch_pipeline.core.manifest import image_id
from vsearch_pipeline.core.model_spec import DEFAULT_KEY
from vsearch_pipeline.core.sources import list_source
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import CurationDB
from vsearch_pipeline.settings import ServingSettings


def _jpeg(seed: int, size: tuple[int, int] = (80, 60)) -> bytes:
    pixels = bytes((seed * 104729 + i * 17) % 253 for i in range(size[0] * size[1] * 3))
    out = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


HTML = b"<!doctype html><html><head><title>not a photo</title></head><body></body></html>"


def _no_index(tmp_path: Path) -> IndexHolder:
    """A holder over an empty storage: the service answers, with no index to search."""
    return IndexHolder(ArtifactRecords(ArtifactStore(str(tmp_path / "artifacts")), DEFAULT_KEY))


def _app(tmp_path: Path, keys_file: Path | None, source: Path | None, max_upload_bytes: int = 2_000_000):
    holder = _no_index(tmp_path)
    settings = ServingSettings(api_keys_file=str(keys_file) if keys_file else None,
                               max_upload_bytes=max_upload_bytes, refresh_interval_s=3600)
    curation = CurationDB(str(tmp_path / "curation.duckdb"))
    return create_app(holder, settings, curation, source_uri=str(source) if source else None)


@pytest.fixture
def keys_file(tmp_path, monkeypatch) -> tuple[Path, str]:
    monkeypatch.delenv(KEYS_ENV, raising=False)
    path = tmp_path / "secrets" / "api-keys"
    key = create_key(path, "uploader")
    return path, key


@pytest.fixture
def service(tmp_path, keys_file):
    source = tmp_path / "collection"
    source.mkdir()
    with TestClient(_app(tmp_path, keys_file[0], source, max_upload_bytes=50_000)) as client:
        yield client, source, keys_file[1]


def _files(*named: tuple[str, bytes]) -> list:
    return [("files", (name, data, "image/jpeg")) for name, data in named]


def test_a_key_is_needed(service):
    client, source, key = service
    photo = _files(("a.jpg", _jpeg(1)))
    missing = client.post("/ingest", files=photo)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post("/ingest", files=photo, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/ingest", files=photo, headers={"X-API-Key": key + "x"}).status_code == 401
    assert client.post("/ingest", files=photo, headers={"Authorization": f"Basic {key}"}).status_code == 401
    assert not any(source.rglob("*.jpg"))


def test_no_keys_file_means_ingest_is_off(tmp_path, monkeypatch):
    monkeypatch.delenv(KEYS_ENV, raising=False)
    (tmp_path / "collection").mkdir()
    with TestClient(_app(tmp_path, None, tmp_path / "collection")) as client:
        answer = client.post("/ingest", files=_files(("a.jpg", _jpeg(1))),
                             headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 403 and "keys file" in answer.json()["detail"]


def test_the_environment_names_the_keys_file(tmp_path, keys_file, monkeypatch):
    path, key = keys_file
    monkeypatch.setenv(KEYS_ENV, str(path))
    (tmp_path / "collection").mkdir()
    with TestClient(_app(tmp_path, tmp_path / "no-such-file", tmp_path / "collection")) as client:
        answer = client.post("/ingest", files=_files(("a.jpg", _jpeg(1))), headers={"X-API-Key": key})
    assert answer.status_code == 200, answer.text


def test_upload_lands_in_the_source_named_by_content(service):
    client, source, key = service
    photo = _jpeg(2)
    answer = client.post("/ingest", files=_files(("holiday.jpg", photo)),
                         headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    [entry] = answer.json()["files"]
    digest = hashlib.sha256(photo).hexdigest()
    assert entry["id"] == image_id(digest) == digest[:16]
    assert entry["path"] == f"ingest/{digest[:16]}.jpg" and entry["existed"] is False
    assert entry["format"] == "JPEG" and entry["bytes"] == len(photo)
    assert Path(entry["uri"]) == source / "ingest" / f"{digest[:16]}.jpg"
    assert (source / entry["path"]).read_bytes() == photo
    assert [o.path for o in list_source(str(source))] == [entry["path"]]  # what the sensor sees
    assert sorted(p.name for p in (source / "ingest").iterdir()) == [f"{digest[:16]}.jpg"]  # no temp files

    again = client.post("/ingest", files=_files(("same-again.jpg", photo)), headers={"X-API-Key": key})
    assert again.status_code == 200
    assert again.json()["files"][0]["existed"] is True and again.json()["existed"] == 1
    assert again.json()["files"][0]["path"] == entry["path"]


def test_bad_files_are_refused_with_reasons_while_good_ones_land(service):
    client, source, key = service
    good, big = _jpeg(3), _jpeg(4, size=(400, 300))
    assert len(big) > 50_000
    answer = client.post("/ingest", headers={"X-API-Key": key}, files=_files(
        ("page.jpg", HTML), ("good.jpg", good), ("big.jpg", big), ("empty.jpg", b"")))
    assert answer.status_code == 200, answer.text
    by_name = {e["filename"]: e for e in answer.json()["files"]}
    assert by_name["page.jpg"]["status"] == "not_image" and "not JPEG, PNG" in by_name["page.jpg"]["error"]
    assert by_name["big.jpg"]["status"] == "too_large" and "50000" in by_name["big.jpg"]["error"]
    assert by_name["empty.jpg"]["status"] == "empty"
    assert by_name["good.jpg"]["existed"] is False
    assert answer.json()["stored"] == 1 and answer.json()["refused"] == 3
    names = {p.name for p in (source / "ingest").iterdir()}
    assert names == {f"{hashlib.sha256(good).hexdigest()[:16]}.jpg"}  # nothing of the others written


def test_nothing_usable_is_a_400(service):
    client, source, key = service
    answer = client.post("/ingest", headers={"X-API-Key": key},
                         files=_files(("page.jpg", HTML), ("big.jpg", _jpeg(5, size=(400, 300)))))
    assert answer.status_code == 400
    assert "page.jpg" in answer.json()["detail"] and "big.jpg" in answer.json()["detail"]
    assert not (source / "ingest").exists()


def test_no_source_is_a_503(tmp_path, keys_file):
    path, key = keys_file
    with TestClient(_app(tmp_path, path, None)) as client:
        answer = client.post("/ingest", files=_files(("a.jpg", _jpeg(1))), headers={"X-API-Key": key})
    assert answer.status_code == 503 and "source" in answer.json()["detail"]


def test_keys_file_holds_hashes_only(keys_file):
    path, key = keys_file
    text = path.read_text()
    assert key not in text
    assert parse_keys(text) == {"uploader": hash_key(key)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="already has a key named"):
        create_key(path, "uploader")
    with pytest.raises(ValueError, match="key name"):
        create_key(path, "bad:name")


def test_revoking_a_key_by_deleting_its_line_takes_effect_without_restart(service, keys_file):
    client, _, key = service
    path, _ = keys_file
    other = create_key(path, "second")
    assert client.post("/ingest", files=_files(("a.jpg", _jpeg(6))), headers={"X-API-Key": other}
                       ).status_code == 200
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()
                            if not line.startswith("second:")))
    assert client.post("/ingest", files=_files(("a.jpg", _jpeg(7))), headers={"X-API-Key": other}
                       ).status_code == 401
    assert client.post("/ingest", files=_files(("a.jpg", _jpeg(7))), headers={"X-API-Key": key}
                       ).status_code == 200


def test_api_key_create_command(tmp_path, monkeypatch):
    monkeypatch.delenv(KEYS_ENV, raising=False)
    keys = tmp_path / "keys"
    result = CliRunner().invoke(main, ["api-key", "create", "ci-bot", "--keys-file", str(keys),
                                       "--home", str(tmp_path / "home")])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    assert len(key) >= 40 and key not in keys.read_text()
    assert keys.read_text() == f"ci-bot:{hashlib.sha256(key.encode()).hexdigest()}\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    again = CliRunner().invoke(main, ["api-key", "create", "ci-bot", "--keys-file", str(keys)])
    assert again.exit_code == 2 and "already has a key" in again.output
    # With --keys-file elsewhere: a hint to point the service at it.
    assert "point one of them at" in CliRunner().invoke(
        main, ["api-key", "create", "ci-bot2", "--keys-file", str(keys)]).stderr
    # Without --keys-file: the home's own file, which the service on that home reads.
    home = tmp_path / "home"
    result = CliRunner().invoke(main, ["api-key", "create", "laptop", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert (home / "api-keys").read_text().startswith("laptop:")
    assert "serve --home" in result.stderr and "point one of them" not in result.stderr

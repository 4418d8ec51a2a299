"""A keys file edited by hand, through the real service: a line that is not UTF-8, a UTF-8 BOM, a
malformed line or a UTF-16 file never turns a request into a 500. The bad line is skipped with a
warning that names the file and the line (never its text: it may hold a key pasted by mistake),
and every valid key keeps working, before and after the file changes under the running service."""

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.auth import KEYS_ENV, create_key, hash_key, parse_keys
from serving.holder import IndexHolder
from vsearch_pipeline.core.catalog import ArtifactRecords
from vsearch_pipeline.core.model_spec import DEFAULT_KEY
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import CurationDB
from vsearch_pipeline.settings import ServingSettings

FIRST, SECOND = "first-key-kept-by-a-person", "second-key-kept-by-a-person"
PASTED = "caf\xe9-a-key-pasted-in-latin-1"  # what must never reach the log


def _no_index(tmp_path: Path) -> IndexHolder:
    """A holder over an empty storage: the service answers, with no index to search."""
    return IndexHolder(ArtifactRecords(ArtifactStore(str(tmp_path / "artifacts")), DEFAULT_KEY))


@pytest.fixture
def keys_file(tmp_path, monkeypatch) -> Path:
    """A file as an editor on Windows might leave it: a BOM before the first key, then a Latin-1
    line, a line that is not name:hash, and a second key."""
    monkeypatch.delenv(KEYS_ENV, raising=False)
    path = tmp_path / "api-keys"
    path.write_bytes(b"\xef\xbb\xbf" + f"first:{hash_key(FIRST)}\r\n".encode()
                     + f"pasted:{PASTED}\r\n".encode("latin-1")
                     + b"just some words\r\n"
                     + f"second:{hash_key(SECOND)}\r\n".encode())
    return path


@pytest.fixture
def client(tmp_path, keys_file):
    """The real app with private reads, so GET /tags needs a key and nothing else (no index)."""
    settings = ServingSettings(api_keys_file=str(keys_file), public_reads=False,
                               refresh_interval_s=3600)
    app = create_app(_no_index(tmp_path), settings,
                     CurationDB(str(tmp_path / "curation.duckdb")))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _tags(client: TestClient, key: str) -> int:
    return client.get("/tags", headers={"X-API-Key": key}).status_code


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "vsearch.serving.auth" and r.levelno == logging.WARNING]


def test_valid_keys_work_around_a_line_that_is_not_utf8(client, keys_file, caplog):
    with caplog.at_level(logging.WARNING, logger="vsearch.serving.auth"):
        assert _tags(client, FIRST) == 200  # the BOM is not part of the first key's name
        assert _tags(client, SECOND) == 200
        assert _tags(client, "a-guess") == 401
    warned = [m for m in _warnings(caplog) if "line" in m and "skipped" in m]
    assert warned == [f"{keys_file} line 2 is not UTF-8 text; skipped (save the file as UTF-8)",
                      f"{keys_file} line 3 is not name:sha256hex; skipped"]
    assert not any("caf" in r.getMessage() or FIRST in r.getMessage() for r in caplog.records)


def test_a_bad_line_added_while_serving_is_skipped_and_the_rest_keep_working(client, keys_file,
                                                                            caplog):
    assert _tags(client, FIRST) == 200
    with keys_file.open("ab") as f:
        f.write(b"\xff\xfe\x00 binary junk\n")
    with caplog.at_level(logging.WARNING, logger="vsearch.serving.auth"):
        assert _tags(client, SECOND) == 200
    assert f"{keys_file} line 5 is not UTF-8 text; skipped (save the file as UTF-8)" \
        in _warnings(caplog)


def test_a_utf16_keys_file_turns_keys_off_with_a_warning_not_a_500(client, keys_file, caplog):
    keys_file.write_text(f"first:{hash_key(FIRST)}\n", encoding="utf-16")
    with caplog.at_level(logging.WARNING, logger="vsearch.serving.auth"):
        answer = client.get("/tags", headers={"X-API-Key": FIRST})
    assert answer.status_code == 403 and "keys file" in answer.json()["detail"]
    assert f"{keys_file} line 1 is not UTF-8 text; skipped (save the file as UTF-8)" \
        in _warnings(caplog)


def test_api_key_create_appends_to_a_file_with_a_bad_line(keys_file):
    key = create_key(keys_file, "third")
    assert parse_keys(keys_file.read_bytes()) == {"first": hash_key(FIRST),
                                                  "second": hash_key(SECOND),
                                                  "third": hash_key(key)}
    with pytest.raises(ValueError, match="already has a key named 'first'"):
        create_key(keys_file, "first")


def test_a_keys_file_that_cannot_be_read_closes_writes_with_a_503_that_says_why(client,
                                                                                 keys_file, caplog):
    """The file replaced by a folder (as a bad volume mount leaves it; root reads a mode-000
    file, so permissions cannot be tested here): guarded endpoints answer 503 naming the file,
    not 500, and open again once the file is back."""
    kept = keys_file.read_bytes()
    keys_file.unlink()
    keys_file.mkdir()
    with caplog.at_level(logging.WARNING, logger="vsearch.serving.auth"):
        answer = client.get("/tags", headers={"X-API-Key": FIRST})
    assert answer.status_code == 503
    assert str(keys_file) in answer.json()["detail"] and "cannot be read" in answer.json()["detail"]
    assert any("cannot be read" in w for w in _warnings(caplog))
    keys_file.rmdir()
    keys_file.write_bytes(kept)
    assert _tags(client, FIRST) == 200

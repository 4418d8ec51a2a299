"""File names that are not valid UTF-8, or hold control characters: recorded losslessly (see
`vsearch_pipeline.core.names`), read back as the same file, shown safely, and never able to
block a run, including from a batch file frozen by an earlier version of vsearch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pyarrow.parquet as pq
import pytest

from vsearch_pipeline.assets.common import markdown_table
from vsearch_pipeline.core.batches import (
    UnusableEntry,
    batch_objects,
    record_batch,
    stored_batches,
    unbatched,
)
from vsearch_pipeline.core.layout import batch_path
from vsearch_pipeline.core.manifest import build_manifest
from vsearch_pipeline.core.names import (
    opened_uri,
    recorded_path,
    recorded_uri,
    shown,
    text_safe,
)
from vsearch_pipeline.core.sources import list_source, read_head, read_object
from vsearch_pipeline.core.storage import ArtifactStore

VSEARCH = str(Path(sys.executable).parent / "vsearch")
BAD = b"bad\xff\xfe.jpg"  # not UTF-8
RAW_NAMES = [BAD, b"\x80", b"caf\xc3\xa9 \xe9t\xe9 100%.jpg", b"50%41\xff", b"%25\xc3", b"a\xf0\x9f\x98"]


def _raw(name: bytes) -> str:
    """The name as Python gets it from the filesystem (undecodable bytes as lone surrogates)."""
    return os.fsdecode(name)


# ----------------------------------------------------------------------------- the escaping


@pytest.mark.parametrize("name", RAW_NAMES)
def test_a_non_utf8_name_round_trips_to_its_exact_bytes(name: bytes) -> None:
    uri = recorded_uri(_raw(b"/photos/" + name))
    uri.encode("utf-8")  # storable as it is
    assert uri.startswith("file:///photos/")
    assert opened_uri(uri) == _raw(b"/photos/" + name)
    assert unquote_to_bytes(uri.removeprefix("file://")) == b"/photos/" + name
    assert unquote_to_bytes(recorded_path(_raw(name))) == name


def test_only_the_undecodable_bytes_and_percent_signs_are_escaped() -> None:
    assert recorded_path(_raw(BAD)) == "bad%FF%FE.jpg"
    assert recorded_path(_raw(b"caf\xc3\xa9 100% \xff")) == "café 100%25 %FF"


@pytest.mark.parametrize("name", ["bad%FF%FE.jpg", "100%.jpg", "file:x.jpg", "line\nbreak\t.jpg",
                                  "café 😀.jpg"])
def test_a_name_that_is_valid_text_is_recorded_as_it_is(name: str) -> None:
    """As earlier versions recorded it, so their batches and manifests keep meaning the same."""
    assert recorded_path(name) == name
    assert recorded_uri(f"/photos/{name}") == opened_uri(f"/photos/{name}") == f"/photos/{name}"


def test_a_real_name_that_looks_escaped_is_another_file(tmp_path: Path) -> None:
    """`bad%FF%FE.jpg` exists beside `bad\\xff\\xfe.jpg`: two URIs, each reads its own bytes."""
    root = os.fsencode(tmp_path)
    with open(root + b"/" + BAD, "wb") as f:
        f.write(b"the non-UTF-8 one")
    (tmp_path / "bad%FF%FE.jpg").write_bytes(b"the one named with percent signs")
    listed = list_source(str(tmp_path))
    assert len({o.uri for o in listed}) == 2
    by_uri = {o.uri: read_object(o.uri) for o in listed}
    assert by_uri[str(tmp_path / "bad%FF%FE.jpg")] == b"the one named with percent signs"
    assert by_uri[f"file://{tmp_path}/bad%FF%FE.jpg"] == b"the non-UTF-8 one"


def test_shown_escapes_control_characters_and_keeps_every_script() -> None:
    assert shown("a\nb\tc\x1bd\u202ee\x00.jpg") == "a\\nb\\tc\\x1bd\\u202ee\\x00.jpg"
    assert shown("café 写真 😀 100%.jpg") == "café 写真 😀 100%.jpg"
    assert shown("x\udcff") == "x\\udcff"


def test_text_safe_makes_a_message_with_a_raw_name_storable() -> None:
    message = text_safe(f"cannot open {_raw(BAD)}")
    assert message == "cannot open bad\\udcff\\udcfe.jpg"
    message.encode("utf-8")
    assert text_safe("café\n") == "café\n"


def test_a_markdown_table_keeps_one_line_per_row() -> None:
    table = markdown_table([{"path": "two\nlines|pipe.jpg", "reason": "x\r\ny"}]).value
    assert table.splitlines()[2] == "| two\\nlines\\|pipe.jpg | x\\r\\ny |"


# ----------------------------------------------------------------------------- along the path


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    """A folder whose file names are not UTF-8 or hold control characters."""
    folder = tmp_path / "odd"
    (folder / "sub").mkdir(parents=True)
    for name in (b"sub/" + BAD, b"new\nline.jpg", b"tab\tand\x1besc.jpg", b"100%.jpg"):
        with open(os.fsencode(folder) + b"/" + name, "wb") as f:
            f.write(b"bytes of " + name)
    return folder


def test_listing_reading_batching_and_the_manifest_take_every_name(odd_folder: Path,
                                                                     tmp_path: Path) -> None:
    listed = list_source(str(odd_folder))
    assert [o.path for o in listed] == ["100%.jpg", "new\nline.jpg", "sub/bad%FF%FE.jpg",
                                        "tab\tand\x1besc.jpg"]
    for obj in listed:
        name = unquote_to_bytes(obj.path) if obj.uri.startswith("file://") else obj.path.encode()
        assert read_object(obj.uri) == b"bytes of " + name
        assert read_head(obj.uri, 5) == b"bytes"
    store = ArtifactStore(str(tmp_path / "home"))
    record_batch(store, "b00001", listed, str(odd_folder), "test")
    assert batch_objects(store, "b00001") == listed
    assert unbatched(list_source(str(odd_folder)), stored_batches(store)) == []
    manifest = build_manifest(listed, read_object)
    store.write_parquet("manifest/b00001.parquet", manifest)  # the write that used to fail
    rows = store.read_parquet("manifest/b00001.parquet").to_pylist()
    assert [r["path"] for r in rows] == [o.path for o in listed]
    assert {r["status"] for r in rows} == {"not_image"}


@pytest.mark.usefixtures("s3_credentials")
def test_s3_keys_are_recorded_as_they_are_and_read_back(s3_endpoint: str) -> None:
    """S3 keys are UTF-8 by definition: one with `%FF`, `%41` or a tab is recorded unchanged (no
    `file://`, nothing decoded), and reading its recorded URI gives its bytes. (The moto server
    refuses a key with a newline, so none is tried here.)"""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="names")
    keys = ["set/bad%FF%FE.jpg", "set/pct%41 café.jpg", "set/tab\t100%.jpg"]
    for key in keys:
        client.put_object(Bucket="names", Key=key, Body=key.encode())
    listed = list_source("s3://names/set", s3_endpoint)
    assert [o.uri for o in listed] == sorted(f"s3://names/{k}" for k in keys)
    assert [read_object(o.uri, s3_endpoint) for o in listed] == sorted(k.encode() for k in keys)


def _old_batch(objects: list[dict]) -> dict:
    """A batch record as vsearch wrote it before names were escaped."""
    return {"created_at": "2026-11-01T00:00:00+00:00", "key": "b00001", "objects": objects,
            "source": "/photos", "trigger": "command line"}


def test_a_batch_frozen_with_a_raw_name_reads_in_the_form_the_listing_gives(odd_folder: Path,
                                                                           tmp_path: Path) -> None:
    listed = list_source(str(odd_folder))
    raw = [{"modified": o.modified, "path": os.fsdecode(unquote_to_bytes(o.path)),
            "size": o.size, "uri": opened_uri(o.uri), "version": o.version}
           if "%FF" in o.path else {**o.__dict__} for o in listed]
    store = ArtifactStore(str(tmp_path / "home"))
    # json.dumps writes a lone surrogate as "\udcff": exactly what the old code froze
    store.write_bytes(batch_path("b00001"), json.dumps(_old_batch(raw)).encode())
    assert "\\udcff" in store.read_bytes(batch_path("b00001")).decode()
    assert batch_objects(store, "b00001") == listed
    assert unbatched(listed, stored_batches(store)) == []  # not taken a second time


def test_an_entry_this_code_cannot_use_is_unreadable_and_the_rest_goes_on(tmp_path: Path) -> None:
    good = {"modified": 1.0, "path": "a.jpg", "size": 3, "uri": str(tmp_path / "a.jpg"),
            "version": "3-1.0"}
    (tmp_path / "a.jpg").write_bytes(b"abc")
    broken = [{"path": "no-uri.jpg", "size": 1, "version": "v"},
              {"uri": 7, "path": "x", "size": 1, "version": "v"},
              {"uri": "/p/\ud800x", "path": "lone high surrogate", "size": 1, "version": "v"},
              "not an entry"]
    store = ArtifactStore(str(tmp_path / "home"))
    store.write_json(batch_path("b00001"), _old_batch([good, *broken]))
    entries = batch_objects(store, "b00001")
    assert entries[0].uri == good["uri"]
    assert all(isinstance(e, UnusableEntry) for e in entries[1:])
    rows = build_manifest(entries, read_object).to_pylist()
    assert rows[0]["status"] == "not_image"
    assert [r["status"] for r in rows[1:]] == ["unreadable"] * 4
    assert all("cannot be used" in r["reason"] for r in rows[1:])
    assert rows[1]["path"] == "no-uri.jpg" and rows[3]["uri"] == "/p/\\ud800x"
    store.write_parquet("manifest/b00001.parquet", build_manifest(entries, read_object))


def test_a_batch_file_that_is_not_json_keeps_its_key_and_its_files_come_again(tmp_path: Path
                                                                              ) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jpg").write_bytes(b"abc")
    store = ArtifactStore(str(tmp_path / "home"))
    store.write_bytes(batch_path("b00001"), b'{"objects": [{"uri": "/src/a.j\xff')
    batches = stored_batches(store)
    assert list(batches) == ["b00001"] and "not JSON" in batches["b00001"]["unreadable"]
    assert unbatched(list_source(str(tmp_path / "src")), batches)[0].path == "a.jpg"
    [entry] = batch_objects(store, "b00001")
    assert isinstance(entry, UnusableEntry) and entry.path == batch_path("b00001")


# ----------------------------------------------------------------------------- end to end


def _materialize(source: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([VSEARCH, "materialize", "--home", str(home), "--source", str(source)],
                          capture_output=True, text=True, env=env, timeout=900, cwd=home.parent)


def _photos(shared_data: Path, count: int) -> list[Path]:
    return sorted((shared_data / "caltech101" / "Faces_easy").glob("*.jpg"))[:count]


def _manifest_rows(home: Path) -> list[dict]:
    folder = home / "artifacts" / "manifest"
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def odd_home(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """`vsearch materialize` of two photos and a third one whose name is not UTF-8, twice."""
    root = tmp_path_factory.mktemp("names")
    source, home = root / "src", root / "home"
    source.mkdir()
    first, second, odd = _photos(shared_data, 3)
    shutil.copy(first, source / "one.jpg")
    shutil.copy(second, source / "two\nlines.jpg")
    shutil.copy(odd, os.fsdecode(os.fsencode(source) + b"/" + BAD))
    runs = [_materialize(source, home), _materialize(source, home)]
    return {"home": home, "runs": runs, "odd_bytes": odd.read_bytes()}


@pytest.mark.slow
def test_a_non_utf8_name_is_ingested_embedded_and_searchable(odd_home: dict) -> None:
    first, _ = odd_home["runs"]
    assert first.returncode == 0, first.stderr[-3000:]
    rows = {r["path"]: r for r in _manifest_rows(odd_home["home"])}
    assert set(rows) == {"one.jpg", "two\nlines.jpg", "bad%FF%FE.jpg"}
    assert {r["status"] for r in rows.values()} == {"ok"}
    odd = rows["bad%FF%FE.jpg"]
    assert odd["uri"].startswith("file://") and read_object(odd["uri"]) == odd_home["odd_bytes"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    found = subprocess.run([VSEARCH, "search", odd["id"], "--home", str(odd_home["home"]),
                            "--json", "-k", "2"], capture_output=True, text=True, env=env)
    assert found.returncode == 0, found.stderr[-2000:]
    assert {r["path"] for r in json.loads(found.stdout)["results"]} == {"one.jpg", "two\nlines.jpg"}


@pytest.mark.slow
def test_the_service_serves_the_file_by_id(odd_home: dict) -> None:
    from fastapi.testclient import TestClient

    from serving.app import app_for_home
    from vsearch_pipeline.settings import load_settings

    home = odd_home["home"]
    odd = {r["path"]: r for r in _manifest_rows(home)}["bad%FF%FE.jpg"]
    with TestClient(app_for_home(home, load_settings(home))) as client:
        assert client.get(f"/images/{odd['id']}").content == odd_home["odd_bytes"]
        gallery = client.get("/gallery", params={"limit": 10}).json()["images"]
    assert {g["path"] for g in gallery} == {"one.jpg", "two\nlines.jpg", "bad%FF%FE.jpg"}


@pytest.mark.slow
def test_a_second_run_adds_nothing(odd_home: dict) -> None:
    second = odd_home["runs"][1]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "no new files since the last batch" in second.stderr
    assert [p.name for p in (odd_home["home"] / "artifacts" / "batches").iterdir()] == ["b00001.json"]
    assert len(_manifest_rows(odd_home["home"])) == 3


@pytest.mark.slow
def test_batch_files_from_an_older_version_do_not_block_a_run(tmp_path: Path,
                                                              shared_data: Path) -> None:
    """b00001 was frozen by the old code with the raw name (and one entry it cannot use),
    b00002 is damaged: the run succeeds, the named file is embedded, nothing is lost."""
    source, home = tmp_path / "src", tmp_path / "home"
    source.mkdir()
    first, odd = _photos(shared_data, 2)
    shutil.copy(first, source / "one.jpg")
    odd_name = os.fsdecode(os.fsencode(source) + b"/" + BAD)
    shutil.copy(odd, odd_name)
    info = os.stat(odd_name)
    old_entry = {"modified": info.st_mtime, "path": os.fsdecode(BAD), "size": info.st_size,
                 "uri": odd_name, "version": f"{info.st_size}-{info.st_mtime}"}
    batches = home / "artifacts" / "batches"
    batches.mkdir(parents=True)
    (batches / "b00001.json").write_text(json.dumps(_old_batch([old_entry, {"path": "lost.jpg"}])))
    (batches / "b00002.json").write_bytes(b'{"key": "b00002", "objects": [{"uri": "/src/one')
    run = _materialize(source, home)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "new ingest batch b00003" in run.stderr  # one.jpg, known to no readable batch
    manifests = {f.stem: pq.read_table(f).to_pylist()
                 for f in sorted((home / "artifacts" / "manifest").glob("*.parquet"))}
    assert [(r["path"], r["status"]) for r in manifests["b00001"]] == [
        ("bad%FF%FE.jpg", "ok"), ("lost.jpg", "unreadable")]
    assert [r["status"] for r in manifests["b00002"]] == ["unreadable"]
    assert "not JSON" in manifests["b00002"][0]["reason"]
    assert [(r["path"], r["status"]) for r in manifests["b00003"]] == [("one.jpg", "ok")]
    embedded = {i for f in (home / "artifacts" / "embeddings").rglob("*.parquet")
                for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()}
    assert manifests["b00001"][0]["id"] in embedded and manifests["b00003"][0]["id"] in embedded

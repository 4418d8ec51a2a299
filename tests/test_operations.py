"""What docs/operations.md promises an operator: a rollback (pin) outlives a restart of the
service, and `vsearch backup` taken while the service writes restores into a home that serves the
same answers, with the same index versions, tags and figures; a damaged backup or an occupied
home is refused before anything is copied."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest
from conftest import copy_caltech
from fastapi.testclient import TestClient

from serving.app import app_for_home
from serving.auth import create_key
from vsearch_pipeline.runner import run_pipeline
from vsearch_pipeline.settings import load_settings, save_settings

pytestmark = pytest.mark.slow

CLASSES = ("accordion", "airplanes", "butterfly")
PER_CLASS = 8
VSEARCH = str(Path(sys.executable).parent / "vsearch")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    """A home with two index versions (HNSW, then flat) and an API key for the writes."""
    root = tmp_path_factory.mktemp("operations")
    images = copy_caltech(shared_data, root / "images", CLASSES, PER_CLASS)
    home = root / "home"
    key = create_key(home / "api-keys", "operator")
    serving = {"refresh_interval_s": 3600, "search_log_flush_s": 0.2,
               "api_keys_file": str(home / "api-keys")}
    settings = load_settings(home, {"source": {"uri": str(images)}, "serving": serving,
                                    "clusters": {"min_cluster_size": 3}})
    run_pipeline(home, settings, say=print)
    first = _live_version(home, settings)
    settings = load_settings(home, {"source": {"uri": str(images)}, "serving": serving,
                                    "clusters": {"min_cluster_size": 3},
                                    "index": {"index_type": "flat"}})
    run_pipeline(home, settings, say=print)
    save_settings(home, settings)
    return {"root": root, "home": home, "settings": settings, "key": {"X-API-Key": key},
            "versions": (first, _live_version(home, settings))}


def _live_version(home: Path, settings) -> str:
    with TestClient(app_for_home(home, settings)) as client:
        return client.get("/health").json()["index_version"]


def _answers(client: TestClient) -> dict[str, list[str]]:
    """The ranked ids /similar gives for the first twelve images of the gallery."""
    ids = [row["id"] for row in client.get("/gallery", params={"limit": 12}).json()["images"]]
    return {i: [r["id"] for r in client.get(f"/similar/{i}", params={"k": 5, "fold": "false"})
                .json()["results"]] for i in ids}


def test_a_pin_outlives_a_restart_and_unpinning_goes_back_to_the_latest(home):
    old, new = home["versions"]
    assert old != new
    with TestClient(app_for_home(home["home"], home["settings"])) as client:
        assert client.get("/health").json()["index_version"] == new
        pinned = client.put("/index/pin", params={"version": old}, headers=home["key"])
        assert pinned.status_code == 200 and pinned.json()["index_version"] == old
    assert (home["home"] / "serving_pin").read_text().strip() == old
    with TestClient(app_for_home(home["home"], home["settings"])) as client:  # a restart
        health = client.get("/health").json()
        assert (health["index_version"], health["pinned"]) == (old, old)
        unpinned = client.delete("/index/pin", headers=home["key"]).json()
        assert (unpinned["index_version"], unpinned["pinned"]) == (new, None)
    assert not (home["home"] / "serving_pin").exists()
    with TestClient(app_for_home(home["home"], home["settings"])) as client:
        assert client.get("/health").json()["index_version"] == new


def test_a_backup_taken_while_tags_are_written_restores_the_same_service(home):
    source, backup = home["home"], home["root"] / "backup"
    stop = threading.Event()
    with TestClient(app_for_home(source, home["settings"])) as client:
        answers = _answers(client)
        some = list(answers)[:3]
        assert client.post("/tags", json={"ids": some, "tag": "kept"},
                           headers=home["key"]).status_code == 200

        def write_tags() -> None:
            n = 0
            while not stop.is_set():
                answer = client.post("/tags", json={"ids": [some[n % 3]], "tag": f"during-{n}"},
                                     headers=home["key"])
                assert answer.status_code == 200, answer.text
                n += 1

        writer = threading.Thread(target=write_tags)
        writer.start()
        try:
            run = subprocess.run([VSEARCH, "backup", "--home", str(source), str(backup)],
                                 capture_output=True, text=True, timeout=300)
        finally:
            stop.set()
            writer.join()
        assert run.returncode == 0, run.stderr[-3000:]
        print(run.stderr + run.stdout)

    moved = home["root"] / "damaged-home"
    source.rename(moved)  # the home is lost; the backup is restored where it was
    try:
        run = subprocess.run([VSEARCH, "restore", str(backup)], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        with TestClient(app_for_home(source, home["settings"])) as client:
            assert client.get("/health").json()["index_version"] == home["versions"][1]
            assert _answers(client) == answers
            tags = {t["tag"]: t["count"] for t in client.get("/tags").json()["tags"]}
            assert tags["kept"] == 3
            kept = client.get("/gallery", params={"tag": "kept"}).json()["images"]
            assert sorted(r["id"] for r in kept) == sorted(some)
        for database in ("vsearch.duckdb", "curation.duckdb"):
            with duckdb.connect(str(source / database), read_only=True) as con:
                assert con.execute("SELECT count(*) FROM information_schema.tables").fetchone()[0] > 0
        figures = subprocess.run([VSEARCH, "metrics", "--home", str(source), "--json"],
                                 capture_output=True, text=True, timeout=120)
        assert figures.returncode == 0 and "retrieval" in figures.stdout
    finally:
        shutil.rmtree(source, ignore_errors=True)
        moved.rename(source)


def test_restore_refuses_an_occupied_home_and_a_damaged_backup(home, tmp_path):
    backup = tmp_path / "backup"
    run = subprocess.run([VSEARCH, "backup", "--home", str(home["home"]), str(backup)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    occupied = subprocess.run([VSEARCH, "restore", str(backup)], capture_output=True, text=True,
                              env={**os.environ, "VSEARCH_HOME": ""}, timeout=120)
    assert occupied.returncode != 0 and "is not empty" in occupied.stderr
    index_file = next(backup.glob("artifacts/index/*/*/index.faiss"))
    index_file.write_bytes(index_file.read_bytes()[:100])
    target = tmp_path / "elsewhere"
    damaged = subprocess.run([VSEARCH, "restore", "--home", str(target), str(backup)],
                             capture_output=True, text=True, timeout=120)
    assert damaged.returncode != 0
    assert "taken from" in damaged.stderr  # refused for its path before its files are read
    shutil.move(str(home["home"]), str(tmp_path / "aside"))
    try:
        damaged = subprocess.run([VSEARCH, "restore", str(backup)], capture_output=True, text=True,
                                 timeout=120)
        assert damaged.returncode != 0 and "damaged" in damaged.stderr and "index.faiss" in damaged.stderr
        assert not home["home"].exists()  # nothing copied
    finally:
        shutil.move(str(tmp_path / "aside"), str(home["home"]))

"""Faults in the middle of a run: the S3 server stopped and started again, the process killed
with SIGKILL while writing an embedding shard, the FAISS index and a DuckDB table, and the disk
full while writing. After each, nothing half-written is read, the old artifacts are intact, and a
re-run yields exactly what an undisturbed run yields: the same ids, the same vectors (bit for bit),
the same index answers, hashes, near-duplicate groups and clusters.

The kills run `vsearch materialize` in a subprocess with a test-only `sitecustomize.py` (written
here, put on PYTHONPATH) that wraps one write and sends SIGKILL to its own process at that moment:
after half of a temporary file's bytes are written, or inside an open DuckDB transaction. The
command runs its jobs in process, so the process killed is the one writing. No fault injection
lives in the production code.

Signals: `vsearch materialize` gets a real SIGINT (to its process group, as Ctrl-C sends it) in
the middle of the embeddings step and a real SIGTERM (to the process alone) during the
collection steps; each stops the run within seconds with status 128 + the signal, one line,
the Dagster run CANCELED, and the re-run resumes to the undisturbed result. A read-only home
(a read-only bind mount, so that root cannot write either) and a full disk (a small tmpfs) end
the command with one line naming the path, and leave what was stored unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import free_port
from PIL import Image

from vsearch_pipeline.core.artifacts import latest_index_build, load_embeddings, load_manifests
from vsearch_pipeline.core.catalog import latest_clusters, latest_index, load_index
from vsearch_pipeline.core.index import search
from vsearch_pipeline.core.layout import embeddings_path, manifest_path
from vsearch_pipeline.core.model_spec import DEFAULT_KEY
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import METRIC_KINDS, MetricsDB
from vsearch_pipeline.runner import open_instance, run_pipeline
from vsearch_pipeline.settings import load_settings

pytestmark = pytest.mark.slow

CLASSES = ("accordion", "airplanes", "camera")
PER_CLASS = 8
MODEL_KEY = DEFAULT_KEY
SETTINGS = {"clusters": {"min_cluster_size": 3}}
K = 5
OUTAGE_S = 15  # longer than s3fs's own retries of one request (~10 s): a step must be retried
VSEARCH = str(Path(sys.executable).with_name("vsearch"))

KILL_HOOK = '''
"""Test-only (tests/test_faults.py): SIGKILL this process at one write, as VSEARCH_FAULT says."""
import json, os, signal

POINT = os.environ.get("VSEARCH_FAULT", "")


def _die(note):
    with open(os.environ["VSEARCH_FAULT_NOTE"], "w") as f:
        json.dump(note, f)
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


if POINT.startswith("file:"):  # a temporary artifact file whose path holds this text
    _real_fsync = os.fsync

    def _fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if ".part-" in name and POINT[5:] in name:
            size = os.fstat(fd).st_size
            os.ftruncate(fd, size // 2)  # half of the bytes reached the file, then the end
            _die({"point": POINT, "temporary": name, "bytes_written": size // 2, "bytes": size})
        return _real_fsync(fd)

    os.fsync = _fsync

if POINT.startswith("duckdb:"):  # inside the transaction that fills this table
    from vsearch_pipeline.core import store

    _real_insert = store.insert_rows

    def _insert_rows(con, table, rows, columns=None):
        _real_insert(con, table, rows, columns)
        if table == POINT[7:]:
            seen = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            _die({"point": POINT, "rows_inserted": len(rows), "rows_in_transaction": seen})

    store.insert_rows = _insert_rows
'''


# ---------------------------------------------------------------------------- the collection


def build_photos(shared: Path, images: Path) -> Path:
    """3 Caltech classes x 8 photos, plus two edited copies so that near-duplicate groups exist."""
    for name in CLASSES:
        (images / name).mkdir(parents=True)
        for photo in sorted((shared / "caltech101" / name).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(photo, images / name / photo.name)
    (images / "edits").mkdir()
    accordion = Image.open(images / "accordion" / "image_0001.jpg").convert("RGB")
    accordion.resize((accordion.width * 3 // 4, accordion.height * 3 // 4)).save(
        images / "edits" / "accordion_small.jpg", quality=90)
    Image.open(images / "airplanes" / "image_0001.jpg").convert("RGB").save(
        images / "edits" / "airplanes_q40.jpg", quality=40)
    return images


def outcome(home: Path, root: str, endpoint: str | None = None) -> dict:
    """What a run left, as every reader sees it: the manifest, the vectors, the served index's
    answers for every image as a query, the DuckDB hashes and groups, the cluster labels."""
    store = ArtifactStore(root, endpoint)
    manifest = load_manifests(store)
    ids, vectors, _ = load_embeddings(store, MODEL_KEY)
    order = np.argsort(ids, kind="stable")
    loaded = load_index(store, latest_index(store, MODEL_KEY))
    scores, positions = search(loaded.index, vectors[order], K)
    clusters = store.read_parquet(latest_clusters(store, MODEL_KEY))
    with MetricsDB(str(home / "vsearch.duckdb")).connect(read_only=True) as con:
        hashes = con.execute("SELECT id, partition, phash FROM perceptual_hashes ORDER BY ALL").fetchall()
        groups = con.execute("SELECT id, group_id FROM near_duplicate_groups ORDER BY ALL").fetchall()
    return {
        "manifest": sorted(zip(*(manifest.column(c).to_pylist()
                                 for c in ("path", "id", "content_hash", "status")), strict=True)),
        "ids": [ids[i] for i in order],
        "vectors": vectors[order],
        "index_ids": sorted(loaded.ids),
        "answers": [[loaded.ids[p] for p in row] for row in positions],
        "scores": scores,
        "hashes": hashes,
        "groups": groups,
        "clusters": sorted(zip(clusters.column("id").to_pylist(), clusters.column("label").to_pylist(),
                               strict=True)),
    }


def assert_same_result(got: dict, reference: dict) -> int:
    """The run equals the undisturbed one; returns how many values were compared."""
    assert got["manifest"] == reference["manifest"]
    assert got["ids"] == reference["ids"] and len(set(got["ids"])) == len(got["ids"])
    assert np.array_equal(got["vectors"], reference["vectors"])  # bit for bit
    assert got["index_ids"] == reference["index_ids"]
    assert got["answers"] == reference["answers"]
    np.testing.assert_allclose(got["scores"], reference["scores"], rtol=0, atol=1e-6)
    assert got["hashes"] == reference["hashes"]
    assert got["groups"] == reference["groups"]
    assert got["clusters"] == reference["clusters"]
    return (len(got["manifest"]) + got["vectors"].size + len(got["index_ids"])
            + sum(map(len, got["answers"])) + len(got["hashes"]) + len(got["groups"])
            + len(got["clusters"]))


def no_duplicates(home: Path, store: ArtifactStore) -> None:
    """One batch, one manifest and one shard, each id once; no metric filed twice."""
    assert store.list("batches", ".json") == ["batches/b00001.json"]
    assert store.list("manifest", ".parquet") == [manifest_path("b00001")]
    shard = store.read_parquet(embeddings_path(MODEL_KEY, "b00001"), columns=["id"]).column("id")
    assert len(set(shard.to_pylist())) == len(shard)
    with MetricsDB(str(home / "vsearch.duckdb")).connect(read_only=True) as con:
        for kind in METRIC_KINDS:
            twice = con.execute(f"SELECT run_id, asset, partition, metric FROM {kind}_metrics "
                                "GROUP BY ALL HAVING count(*) > 1").fetchall()
            assert not twice, (kind, twice)


def temporary_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.part-*"))


def materialize_args(home: Path, config: dict, folder: Path) -> list[str]:
    path = folder / f"{home.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return [VSEARCH, "materialize", "--home", str(home), "--config", str(path)]


def killed_run(home: Path, config: dict, point: str, folder: Path) -> dict:
    """`vsearch materialize` with the kill hook armed at `point`; returns the hook's note."""
    hook = folder / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(textwrap.dedent(KILL_HOOK))
    note = folder / f"note-{point.replace('/', '_').replace(':', '_')}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(hook), "VSEARCH_FAULT": point,
           "VSEARCH_FAULT_NOTE": str(note)}
    done = subprocess.run(materialize_args(home, config, folder), env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(note.read_text())
    print(f"SIGKILL at {point}: {found}")
    return found


def rerun(home: Path) -> None:
    summary = run_pipeline(home, load_settings(home), say=lambda _: None)
    assert summary["success"]


# ---------------------------------------------------------------------------- the reference


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    return build_photos(shared_data, tmp_path_factory.mktemp("faults") / "images")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, collection: Path) -> dict:
    """One undisturbed run of the collection: what every disturbed run must end up equal to."""
    home = tmp_path_factory.mktemp("reference") / "home"
    run_pipeline(home, load_settings(home, {**SETTINGS, "source": {"uri": str(collection)}}),
                 say=lambda _: None)
    result = outcome(home, str(home / "artifacts"))
    result["home"] = home  # a finished home, for the tests that only read it (never compared)
    assert len(result["ids"]) == PER_CLASS * len(CLASSES) + 2
    assert result["groups"], "the edited copies should form near-duplicate groups"
    print(f"reference: {len(result['ids'])} images, {len(result['groups'])} images in "
          f"near-duplicate groups, vectors {result['vectors'].shape}")
    return result


# ---------------------------------------------------------------------------- S3 outage


class RestartableS3:
    """A real moto S3 server on 127.0.0.1 that can be stopped (its port closed: connections are
    refused) and started again on the same port. Its buckets live in this process's moto backend,
    so they survive the restart, like a real server's disk."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.server._server.server_close()  # stop() alone leaves the socket listening


def upload(collection: Path, url: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=url)
    fs.mkdir("faults-photos")
    fs.mkdir("faults-artifacts")
    for path in sorted(collection.rglob("*.jpg")):
        fs.pipe_file(f"faults-photos/set/{path.relative_to(collection).as_posix()}", path.read_bytes())


def stop_when_exists(s3: RestartableS3, store: ArtifactStore, relpath: str, run: subprocess.Popen,
                     timeline: list) -> None:
    """Stop the server as soon as `relpath` exists (the run is past its first step), keep it
    down for OUTAGE_S seconds, start it again."""
    while run.poll() is None and not store.exists(relpath):
        time.sleep(0.1)
    if run.poll() is not None:
        return
    s3.stop()
    timeline.append(("stopped", time.monotonic()))
    time.sleep(OUTAGE_S)
    s3.start()
    timeline.append(("started", time.monotonic()))


def test_s3_outage_mid_run_is_retried_and_equals_an_undisturbed_run(
        tmp_path: Path, collection: Path, reference: dict, s3_credentials) -> None:
    s3 = RestartableS3()
    s3.start()
    try:
        upload(collection, s3.url)
        home = tmp_path / "home"
        config = {**SETTINGS,
                  "source": {"uri": "s3://faults-photos/set", "endpoint_url": s3.url},
                  "storage": {"root": "s3://faults-artifacts/vsearch", "endpoint_url": s3.url}}
        store = ArtifactStore("s3://faults-artifacts/vsearch", s3.url)
        run = subprocess.Popen(materialize_args(home, config, tmp_path),
                               env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        timeline: list = []
        chaos = threading.Thread(target=stop_when_exists,
                                 args=(s3, store, manifest_path("b00001"), run, timeline))
        chaos.start()
        output, _ = run.communicate(timeout=600)
        chaos.join()
        assert [event for event, _ in timeline] == ["stopped", "started"], output[-3000:]
        assert run.returncode == 0, output[-5000:]

        instance = open_instance(home)
        retried = retried_steps(instance)
        assert retried, "the outage should have failed at least one step attempt"
        no_duplicates(home, store)
        compared = assert_same_result(outcome(home, "s3://faults-artifacts/vsearch", s3.url), reference)
        print(f"S3 outage: server down {OUTAGE_S} s after the manifest was written; step retries "
              f"{len(retried)} ({', '.join(sorted(set(retried)))}); run succeeded without a re-run; "
              f"{compared} values equal to the undisturbed run")
    finally:
        s3.stop()


def retried_steps(instance) -> list[str]:
    from dagster import DagsterEventType

    steps = []
    for record in instance.get_run_records():
        events = instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
        steps += [e.step_key for e in events]
    return steps


def test_an_unreachable_source_fails_the_step_instead_of_marking_files_unreadable(s3_credentials) -> None:
    """A batch's manifest is never rewritten, so a file recorded `unreadable` during an outage
    would be lost for good. Timeouts are OSErrors, as a corrupt file's error is: the source
    resource tells them apart and fails the step (retried) instead."""
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
    from fsspec.exceptions import FSTimeoutError

    from vsearch_pipeline.core.manifest import build_manifest
    from vsearch_pipeline.core.sources import UNREACHABLE, SourceObject, SourceUnreachableError
    from vsearch_pipeline.resources import ImageSource

    outages = [ReadTimeoutError(endpoint_url="http://s3"), ConnectTimeoutError(endpoint_url="http://s3"),
               FSTimeoutError(), EndpointConnectionError(endpoint_url="http://s3")]
    assert all(isinstance(err, UNREACHABLE) for err in outages)
    assert isinstance(outages[0], OSError)  # why it matters: readers take OSError as the file's fault
    assert not any(isinstance(err, UNREACHABLE) for err in (FileNotFoundError(), PermissionError()))

    nobody = f"http://127.0.0.1:{free_port()}"  # a closed port: every connection refused
    source = ImageSource(uri="s3://photos/set", endpoint_url=nobody)
    photo = SourceObject("s3://photos/set/a.jpg", "a.jpg", 1000, "etag")
    with pytest.raises(SourceUnreachableError, match="did not answer for s3://photos/set/a.jpg"):
        build_manifest([photo], source.read)
    print(f"unreachable source: {len(outages)} kinds of outage error told from a bad file; "
          "the manifest step fails (and is retried) instead of recording the file unreadable")


# ---------------------------------------------------------------------------- SIGKILL


def test_sigkill_while_writing_never_leaves_a_half_written_artifact(
        tmp_path: Path, collection: Path, reference: dict) -> None:
    home = tmp_path / "home"
    artifacts = home / "artifacts"
    store = ArtifactStore(str(artifacts))
    config = {**SETTINGS, "source": {"uri": str(collection)}}
    kills = 0

    # 1. the embedding shard, half written
    note = killed_run(home, config, "file:/embeddings/", tmp_path)
    kills += 1
    partial = Path(note["temporary"])
    assert partial.exists() and partial.stat().st_size == note["bytes_written"] < note["bytes"]
    with pytest.raises(Exception):  # noqa: B017 - proof that the half file is not a Parquet file
        pq.read_table(partial)
    assert not store.exists(embeddings_path(MODEL_KEY, "b00001"))
    assert store.exists(manifest_path("b00001"))  # the steps before it finished
    with pytest.raises(ValueError, match="no embeddings"):  # readers see no shard, not half of one
        load_embeddings(store, MODEL_KEY)

    # 2. the FAISS index, half written (the run before it is re-done, shard included)
    note = killed_run(home, config, "file:index.faiss", tmp_path)
    kills += 1
    version = Path(note["temporary"]).parent
    assert sorted(p.name for p in version.iterdir() if not p.name.startswith(".")) == ["ids.parquet"]
    assert latest_index_build(store, MODEL_KEY) is None  # a version without build.json is no version
    with pytest.raises(LookupError):  # and the service finds no index to load
        latest_index(store, MODEL_KEY)
    ids, vectors, _ = load_embeddings(store, MODEL_KEY)
    order = np.argsort(ids, kind="stable")
    assert np.array_equal(vectors[order], reference["vectors"])

    rerun(home)
    compared = assert_same_result(outcome(home, str(artifacts)), reference)

    # 3. DuckDB, inside the transaction that replaces the near-duplicate groups
    db = MetricsDB(str(home / "vsearch.duckdb"))
    with db.connect(read_only=True) as con:
        before = con.execute("SELECT * FROM near_duplicate_groups ORDER BY ALL").fetchall()
        hashes_before = con.execute("SELECT count(*) FROM perceptual_hashes").fetchone()[0]
    note = killed_run(home, config, "duckdb:near_duplicate_groups", tmp_path)
    kills += 1
    assert note["rows_in_transaction"] == note["rows_inserted"] > 0
    with duckdb.connect(str(home / "vsearch.duckdb")) as con:  # opens read-write: the log replays
        after = con.execute("SELECT * FROM near_duplicate_groups ORDER BY ALL").fetchall()
        hashes_after = con.execute("SELECT count(*) FROM perceptual_hashes").fetchone()[0]
    assert after == before  # the old groups, same run id: the deletion was rolled back with the rest
    assert hashes_after == hashes_before

    rerun(home)
    compared += assert_same_result(outcome(home, str(artifacts)), reference)
    left = temporary_files(artifacts)
    assert all(".part-" in p.name for p in left)
    print(f"SIGKILL: {kills} kills (embedding shard, FAISS index, DuckDB transaction); "
          f"{len(left)} temporary files left by the kills, never read; {len(before)} group rows "
          f"intact; after the re-runs {compared} values equal to the undisturbed run")


# ---------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 8 MiB tmpfs, unmounted afterwards."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here to make a small tmpfs to fill")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """A file taking all but `leave` bytes of the disk's free space."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_disk_full_gives_a_clear_error_keeps_old_artifacts_and_a_rerun_completes(
        tmp_path: Path, collection: Path, reference: dict, small_disk: Path) -> None:
    home = tmp_path / "home"
    root = small_disk / "artifacts"
    settings = load_settings(home, {**SETTINGS, "source": {"uri": str(collection)},
                                    "storage": {"root": str(root)}})
    run_pipeline(home, settings, say=lambda _: None)
    store = ArtifactStore(str(root))
    shard = embeddings_path(MODEL_KEY, "b00001")
    old_shard = store.read_bytes(shard)
    old_index = latest_index_build(store, MODEL_KEY)
    files_before = {p: p.stat().st_size for p in root.rglob("*") if p.is_file()}

    filler = fill(small_disk, leave=len(old_shard) // 2)  # the shard no longer fits
    config = {**SETTINGS, "source": {"uri": str(collection)}, "storage": {"root": str(root)}}
    failed = subprocess.run(materialize_args(home, config, tmp_path), capture_output=True,
                            text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert failed.returncode == 1, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: cannot write to ") and "no space left on device" in last, last
    assert store.path(shard) in last  # the file that did not fit, named
    assert "Traceback" not in failed.stdout + failed.stderr

    assert store.read_bytes(shard) == old_shard  # the old artifacts, untouched and loadable
    assert latest_index_build(store, MODEL_KEY) == old_index
    assert_same_result(outcome(home, str(root)), reference)
    assert all(p.exists() and p.stat().st_size == size for p, size in files_before.items())
    assert temporary_files(root) == []

    filler.unlink()
    run_pipeline(home, settings, say=lambda _: None)
    compared = assert_same_result(outcome(home, str(root)), reference)
    assert temporary_files(root) == []
    print(f"disk full: 1 fault (ENOSPC writing {shard}, {len(old_shard)} bytes, "
          f"{len(old_shard) // 2} free); {len(files_before)} earlier artifacts intact, "
          f"0 temporary files left; after freeing space {compared} values equal to the "
          f"undisturbed run")




# ---------------------------------------------------------------------------- signals


def signalled_run(args: list[str], marker: str, signum: int, to_group: bool) -> tuple[int, str, float]:
    """Run `args` in its own process group; send `signum` (to the group, as Ctrl-C does, or to
    the process alone) once a line of its output holds `marker`. Returns the exit status, the
    output and the seconds from the signal to the exit. The group is killed afterwards, and
    after 600 s whatever happens."""
    run = subprocess.Popen(args, env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    watchdog = threading.Timer(600, os.killpg, (run.pid, signal.SIGKILL))
    watchdog.start()
    lines, sent = [], None
    try:
        for line in run.stdout:
            lines.append(line)
            if sent is None and marker in line:
                (os.killpg if to_group else os.kill)(run.pid, signum)
                sent = time.monotonic()
        status = run.wait(timeout=60)
    finally:
        watchdog.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    output = "".join(lines)
    assert sent is not None, f"never saw {marker!r}:\n{output[-3000:]}"
    return status, output, time.monotonic() - sent


def run_statuses(home: Path) -> list[tuple[str, str]]:
    """(job, status) of every run of the home's Dagster instance, oldest first."""
    runs = open_instance(home).get_runs()
    return [(r.job_name, r.status.value) for r in reversed(runs)]


def assert_stopped_by(signum: int, status: int, output: str, seconds: float) -> None:
    assert status == 128 + signum, output[-5000:]
    assert seconds < 30, f"stopped {seconds:.1f} s after the signal"
    said = [line for line in output.splitlines() if line.startswith("vsearch: interrupted")]
    assert len(said) == 1 and signal.Signals(signum).name in said[0], said
    assert "run the same command again to resume" in said[0]
    # the log tails Dagster starts for each step block SIGINT: no KeyboardInterrupt from them
    assert "Traceback (most recent call last)" not in output


def test_sigint_and_sigterm_stop_the_run_cleanly_and_a_rerun_resumes(
        tmp_path: Path, collection: Path, reference: dict) -> None:
    """Ctrl-C used to be swallowed inside the embedding step (the run went on to exit 0), and
    Dagster retried a step it interrupted, so repeated Ctrl-Cs became retries."""
    home = tmp_path / "home"
    store = ArtifactStore(str(home / "artifacts"))
    # batches of 4 images: the embedding step reaches a safe point every few hundred ms
    config = {**SETTINGS, "source": {"uri": str(collection)}, "model": {"batch_size": 4}}
    args = materialize_args(home, config, tmp_path)

    status, output, seconds = signalled_run(args, "==> embeddings b00001: ", signal.SIGINT, to_group=True)
    assert_stopped_by(signal.SIGINT, status, output, seconds)
    assert run_statuses(home) == [("process_batch", "CANCELED")]
    assert store.exists(manifest_path("b00001"))  # the steps before it finished and are kept
    assert not store.exists(embeddings_path(MODEL_KEY, "b00001"))  # stopped inside the step
    assert temporary_files(home / "artifacts") == []
    first = seconds

    status, output, seconds = signalled_run(args, "==> collection: ", signal.SIGTERM,
                                            to_group=False)
    assert_stopped_by(signal.SIGTERM, status, output, seconds)
    assert run_statuses(home)[1:] == [("process_batch", "SUCCESS"), ("refresh_collection", "CANCELED")]

    done = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_statuses(home)[-2:] == [("process_batch", "SUCCESS"), ("refresh_collection", "SUCCESS")]
    got = outcome(home, str(home / "artifacts"))
    assert store.list("batches", ".json") == ["batches/b00001.json"]  # resumed, not re-ingested
    for name in ("manifest", "ids", "index_ids", "hashes"):  # batch size 4 may move vector bits
        assert got[name] == reference[name], name
    print(f"signals: SIGINT to the group in the embedding step stopped the run in {first:.1f} s, "
          f"SIGTERM in the collection steps in {seconds:.1f} s (exit 130, 143; runs CANCELED); "
          f"the re-run equals the undisturbed run ({len(got['ids'])} ids)")


# ---------------------------------------------------------------------------- read-only home


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only_home(tmp_path: Path, reference: dict):
    """A copy of a finished home behind a read-only bind mount (root cannot write it either),
    unmounted afterwards."""
    home = tmp_path / "home"
    shutil.copytree(reference["home"], home)
    mounted = subprocess.run(["mount", "--bind", str(home), str(home)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot bind-mount the home read-only (needs root): {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(home)], check=True)
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


def vsearch(*args: str, home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([VSEARCH, *args, "--home", str(home)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def assert_one_line_about(done: subprocess.CompletedProcess, path: Path, reason: str) -> str:
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: cannot write to {path}") and reason in last, last
    return last


def test_a_read_only_home_is_one_line_and_nothing_stored_changes(
        read_only_home: Path, collection: Path) -> None:
    """It was a PermissionError traceback from materialize and an SQLAlchemy one from serve.
    Searching only reads (the index is found by its build record, not through the Dagster
    instance), so it works on a read-only home; the service writes tags and its search log."""
    home = read_only_home
    before = snapshot(home)
    lines = [assert_one_line_about(vsearch("materialize", "--source", str(collection), home=home),
                                   home, "read-only file system")]
    lines.append(assert_one_line_about(vsearch("serve", "--port", str(free_port()), home=home),
                                       home / "curation.duckdb", "read-only file system"))
    ids = pq.read_table(next((home / "artifacts" / "index" / MODEL_KEY).glob("*/ids.parquet")))
    query = ids.column("id")[0].as_py()
    found = vsearch("search", query, "--json", home=home)
    assert found.returncode == 0, found.stderr
    results = json.loads(found.stdout)["results"]
    assert results and query not in {r["id"] for r in results}
    figures = vsearch("metrics", "--json", home=home)  # reading DuckDB needs no write
    assert figures.returncode == 0 and "partitions" in json.loads(figures.stdout)
    assert snapshot(home) == before
    print("read-only home: materialize, serve, search each one line:\n  " + "\n  ".join(lines))


def test_a_home_without_write_permission_is_one_line(tmp_path: Path, collection: Path) -> None:
    """Root without the capabilities that let it ignore a folder's mode (setpriv), on a home
    folder with mode 555."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root's permission override")
    home = tmp_path / "home"
    home.mkdir(mode=0o555)
    home.chmod(0o555)
    done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", VSEARCH,
                           "materialize", "--source", str(collection), "--home", str(home)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    last = assert_one_line_about(done, home, "no permission")
    assert list(home.iterdir()) == []
    print(f"home without write permission: {last}")

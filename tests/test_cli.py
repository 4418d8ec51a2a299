"""The `vsearch` command as a person runs it: demo, search, bad settings, help; and the
Dagster definitions as `dagster-webserver` loads them through workspace.yaml."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
VSEARCH = str(Path(sys.executable).parent / "vsearch")


def _run(*args: str, home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "VSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([VSEARCH, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=home.parent)


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    home = tmp_path_factory.mktemp("cli") / "home"
    return home, _run("demo", home=home)


@pytest.mark.slow
def test_demo_runs_end_to_end(demo_home):
    home, result = demo_home
    assert result.returncode == 0, result.stderr[-3000:]
    assert "search --home" in result.stdout and "Example: " in result.stdout
    assert "1. 1.000  chelsea/crop.jpg" in result.stdout
    assert "ui --home" in result.stdout and "serve --home" in result.stdout
    assert "P@1" in result.stdout and "demo/quarter" in result.stdout  # a slice per case
    assert "==> embeddings b00001: " in result.stderr  # progress of the long step
    assert (home / "vsearch.duckdb").exists() and (home / "vsearch.yaml").exists()


@pytest.mark.slow
def test_demo_output_is_quiet_and_the_dagster_log_is_in_the_home(demo_home):
    """Not a terminal: one plain line per long step, no Dagster console lines (a 90-character
    prefix each), no library chatter; Dagster's event log is whole in <home>/logs/dagster.log."""
    home, result = demo_home
    output = result.stdout + result.stderr
    assert " - dagster - " not in output and "process_batch - " not in output
    assert "Loaded pretrained weights" not in output and "Loading weights" not in output
    assert "Traceback" not in output
    steps = [line for line in result.stderr.splitlines() if " ... " in line]
    assert [line.split(":")[0] for line in steps if line.endswith(" s")] == [
        "==> manifest b00001", "==> pHash b00001", "==> embeddings b00001",
        "==> partial-copy checks"], steps
    assert " pairs ... " in steps[-1]  # the checks count pairs of images
    assert all(line.endswith((" ...", " s")) for line in steps)
    assert len(result.stderr.splitlines()) < 15, result.stderr  # was 24 Dagster lines and more
    log = (home / "logs" / "dagster.log").read_text()
    for event in ("RUN_START", "STEP_START", "STEP_SUCCESS", "ASSET_MATERIALIZATION", "RUN_SUCCESS"):
        assert event in log
    assert "embeddings: " in log and "refresh_collection" in log


@pytest.mark.slow
def test_a_truncated_jpeg_as_query_is_one_line_with_the_reason(demo_home):
    home, _ = demo_home
    broken = home / "demo" / "images" / "broken" / "truncated.jpg"
    result = _run("search", str(broken), home=home)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a usable image (corrupt)" in lines[0], lines
    assert "truncated" in lines[0]


HEAVY = ("torch", "faiss", "dagster", "onnxruntime", "pyarrow")


def _search_in_a_fresh_process(cwd: Path, *args: str) -> tuple[int, str, list[str]]:
    """`vsearch search ARGS` with no --home and no VSEARCH_HOME: its exit status, what it
    said, and which heavy libraries it had loaded by then."""
    code = ("import sys; from vsearch_pipeline.cli import main\n"
            f"try:\n    main([*sys.argv[1:]], prog_name='vsearch')\n"
            "except SystemExit as stop:\n    status = stop.code\n"
            f"print(status, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k != "VSEARCH_HOME"}
    done = subprocess.run([sys.executable, "-c", code, "search", *args], capture_output=True,
                          text=True, env={**env, "PYTHONPATH": str(REPO)}, cwd=cwd, timeout=120)
    status, loaded = done.stdout.strip().splitlines()[-1].split(" ", 1)
    return int(status), done.stderr.strip(), json.loads(loaded.replace("'", '"'))


@pytest.mark.parametrize(("query", "said"), [
    ("nope.jpg", "no such file: nope.jpg"),
    ("photos/nope", "no such file: photos/nope"),
    ("PHOTO.JPEG", "no such file: PHOTO.JPEG"),
    ("photos", "photos is a folder, not an image file"),
])
def test_a_query_that_names_no_file_is_said_at_once(tmp_path, query, said):
    """Once looked up as an image id, after the index and the model had loaded (34 s)."""
    (tmp_path / "photos").mkdir()
    status, stderr, loaded = _search_in_a_fresh_process(tmp_path, query)
    assert status == 1 and stderr == f"Error: {said}" if "folder" not in said \
        else stderr.startswith(f"Error: {said}"), stderr
    assert loaded == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no .vsearch/dagster


@pytest.mark.parametrize("words", ["", "   ", "\t"])
def test_an_empty_text_query_is_refused(tmp_path, words):
    status, stderr, loaded = _search_in_a_fresh_process(tmp_path, "--text", words)
    assert status == 1 and stderr.startswith("Error: the text query is empty"), stderr
    assert loaded == [] and list(tmp_path.iterdir()) == []


def test_an_id_without_a_home_names_the_folder_looked_in(tmp_path):
    status, stderr, loaded = _search_in_a_fresh_process(tmp_path, "0123456789abcdef")
    assert status == 1 and f"no vsearch home at {tmp_path.resolve() / '.vsearch'}" in stderr
    assert list(tmp_path.iterdir()) == []  # nothing made: no .vsearch, no dagster/ in it


@pytest.mark.slow
def test_search_by_file_and_by_id_as_json(demo_home):
    home, _ = demo_home
    query = home / "demo" / "images" / "coffee" / "flip.jpg"
    by_file = json.loads(_run("search", str(query), "-k", "3", "--json", home=home).stdout)
    assert [r["rank"] for r in by_file["results"]] == [1, 2, 3]
    assert by_file["results"][0]["path"] == "coffee/flip.jpg"
    assert all(r["path"].startswith("coffee/") for r in by_file["results"])
    image_id = by_file["results"][0]["id"]
    by_id = json.loads(_run("search", image_id, "--json", "-k", "5", home=home).stdout)
    assert image_id not in [r["id"] for r in by_id["results"]]
    assert by_id["results"][0]["path"].startswith("coffee/")


@pytest.mark.slow
def test_search_by_text(demo_home):
    home, _ = demo_home
    found = json.loads(_run("search", "--text", "a cup of coffee", "-k", "3", "--json",
                            home=home).stdout)
    assert found["results"][0]["path"].startswith("coffee/")
    assert "coffee" in found["results"][0]["matched"]


@pytest.mark.slow
def test_metrics_prints_the_latest_figures(demo_home):
    home, _ = demo_home
    report = json.loads(_run("metrics", "--json", home=home).stdout)
    partitions = [dict(zip(report["partitions"]["columns"], r, strict=True))
                  for r in report["partitions"]["rows"]]
    files = sum(1 for p in (home / "demo" / "images").rglob("*") if p.is_file())
    assert partitions[0]["partition"] == "b00001" and partitions[0]["files"] == files
    assert partitions[0]["usable"] == partitions[0]["embedded"] == files - 1  # one truncated JPEG
    retrieval = {r[0]: dict(zip(report["retrieval"]["columns"], r, strict=True))
                 for r in report["retrieval"]["rows"]}
    assert retrieval["demo"]["precision@1"] >= 0.95
    groups, in_groups, largest = report["near_duplicates"]["rows"][0]
    assert groups >= 5 and in_groups >= 2 * groups and largest >= 2
    text = _run("metrics", home=home).stdout
    assert "retrieval" in text and "precision@1" in text and "b00001" in text


def test_metrics_without_a_run_is_a_clear_error(tmp_path):
    (tmp_path / "home").mkdir()  # a home, but no run yet (a missing home: the test further down)
    result = _run("metrics", home=tmp_path / "home")
    assert result.returncode == 1 and "run `vsearch materialize` first" in result.stderr


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0"])
def test_a_timeout_that_is_not_a_positive_finite_number_is_refused(tmp_path, timeout):
    """click's FloatRange lets NaN and infinity through: every comparison with NaN is false."""
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/a.jpg\n")
    result = _run("download", str(urls), "--to", str(tmp_path / "to"), "--timeout", timeout,
                  home=tmp_path / "home")
    assert result.returncode == 2
    assert f"'{timeout}' is not a positive, finite number of seconds" in result.stderr
    assert not (tmp_path / "to").exists()


@pytest.mark.slow
def test_search_says_where_the_matches_end(demo_home):
    """The nine versions of the cat photo match 'cat', then a line, then the rest; a query about
    nothing in the demo says that nothing matched well."""
    home, _ = demo_home
    lines = _run("search", "--text", "cat", "-k", "12", home=home).stdout.splitlines()
    cut = next(n for n, line in enumerate(lines) if "below this collection's match floor" in line)
    assert cut == 9 and all("chelsea/" in line for line in lines[:cut])
    assert not any("chelsea/" in line for line in lines[cut + 1:])
    nothing = _run("search", "--text", "zebra crossing in the rain", "-k", "3", home=home).stdout
    assert nothing.splitlines()[0].startswith("  nothing matched well")
    found = json.loads(_run("search", "--text", "cat", "--json", home=home).stdout)["results"]
    assert [r["match"] for r in found[:10]] == [True] * 9 + [False]


@pytest.mark.slow
def test_unknown_query_is_a_clear_error(demo_home):
    home, _ = demo_home
    result = _run("search", "no-such-image", home=home)
    assert result.returncode == 1
    assert "no image with id 'no-such-image'" in result.stderr


def test_bad_settings_fail_before_any_work(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("index:\n  index_type: annoy\n")
    home = tmp_path / "home"
    result = _run("materialize", "--source", str(tmp_path), "--config", str(config), home=home)
    assert result.returncode == 2
    assert "index.index_type" in result.stderr and "hnsw" in result.stderr
    assert not (home / "artifacts").exists()
    config.write_text("subset:\n  fraction: 1.5\n")
    result = _run("materialize", "--source", str(tmp_path), "--config", str(config), home=home)
    assert result.returncode != 0 and "fraction" in result.stderr


@pytest.mark.slow
def test_duplicates_export_keeps_one_file_per_group(demo_home):
    home, _ = demo_home
    said = _run("duplicates", home=home)
    assert said.returncode == 0, said.stderr
    assert "method combined" in said.stdout and "cosine floor" in said.stdout
    assert "crops checked (5 pairs per image)" in said.stdout
    target = home.parent / "drop.csv"
    assert _run("duplicates", "--export", str(target), home=home).returncode == 0
    with target.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and list(rows[0]) == ["group", "drop_uri", "drop_path", "drop_id", "keep_uri",
                                      "keep_path", "keep_id", "kept_by", "reason"]
    groups = json.loads(_run("metrics", "--json", home=home).stdout)["near_duplicates"]["rows"][0]
    kept = {r["group"]: r["keep_path"] for r in rows}
    assert len(kept) == groups[0]  # every group keeps one file, and only one
    assert not set(kept.values()) & {r["drop_path"] for r in rows}
    assert len(rows) == groups[1] - groups[0]  # the demo holds no exact copies
    # two folders of one photo's edits and another's: their cross duplicates, none across
    photo = Path(rows[0]["drop_path"]).parts[0]
    other = next(p.name for p in (home / "demo" / "images").iterdir() if p.name != photo)
    across = _run("duplicates", "--between", photo, other, home=home)
    assert across.returncode == 0 and f"0 files of folder {other}/" in across.stdout
    unknown = _run("duplicates", "--between", photo, "no-such-part", home=home)
    assert unknown.returncode == 1 and "'no-such-part' is neither a tag nor a folder" in unknown.stderr


def test_help_lists_every_command(tmp_path):
    result = _run("--help", home=tmp_path / "home")
    for command in ("demo", "materialize", "search", "duplicates", "grounding-from-folders", "ui",
                    "daemon"):
        assert command in result.stdout


def test_workspace_loads_in_dagster(tmp_path):
    env = {**os.environ, "VSEARCH_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster")}
    (tmp_path / "dagster").mkdir()
    dagster = str(Path(sys.executable).parent / "dagster")
    result = subprocess.run([dagster, "definitions", "validate", "-w", "workspace.yaml"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from vsearch_pipeline.definitions import defs

    names = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert names == {"raw_image_manifest", "sampled_subset", "embeddings", "perceptual_hashes",
                     "near_duplicate_groups", "projection_head", "retrieval_transform",
                     "faiss_index", "clusters", "curation_grounding", "evaluation",
                     "collection_insight"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_or_empty_source_is_a_clear_error(tmp_path):
    result = _run("materialize", "--source", str(tmp_path / "nowhere"), home=tmp_path / "home")
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    (tmp_path / "empty").mkdir()
    result = _run("materialize", "--source", str(tmp_path / "empty"), home=tmp_path / "home")
    assert result.returncode == 1
    assert "holds no files" in result.stderr


@pytest.fixture(scope="module")
def no_usable_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`vsearch materialize` of a source with files but no image among them."""
    source = tmp_path_factory.mktemp("notes")
    (source / "readme.jpg").write_text("not a photo")
    (source / "empty.png").write_bytes(b"")
    home = source.parent / "home"
    return home, _run("materialize", "--source", str(source), home=home)


def test_a_source_without_a_usable_image_is_one_clear_line(no_usable_image):
    """The manifest keeps each file's reason, and the run ends with one line saying why there is
    nothing to index, not the collection steps' tracebacks."""
    home, result = no_usable_image
    assert result.returncode == 1
    assert "nothing to index: none of its files is a usable image" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    manifest = pq.read_table(home / "artifacts" / "manifest" / "b00001.parquet")
    assert sorted(manifest.column("path").to_pylist()) == ["empty.png", "readme.jpg"]
    assert "ok" not in manifest.column("status").to_pylist()


def test_collection_steps_without_embeddings_fail_at_once_with_the_reason(no_usable_image):
    """The collection job as a sensor or the Dagster UI launches it (no pre-check in front):
    the steps fail with the reason and are not retried, since no retry can mend it."""
    from dagster import DagsterEventType

    from vsearch_pipeline.definitions import make_definitions
    from vsearch_pipeline.runner import open_instance
    from vsearch_pipeline.settings import load_settings

    home, _ = no_usable_image
    instance = open_instance(home)
    job = make_definitions(home, load_settings(home)).resolve_job_def("refresh_collection")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failures and all("no embeddings for model" in e.step_failure_data.error.message
                            for e in failures)
    assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]


@pytest.mark.slow
def test_serve_answers_on_the_demo_index(demo_home):
    """`vsearch serve` starts uvicorn on the home's latest index."""
    import time
    import urllib.request

    home, _ = demo_home
    port = _free_port()
    server = subprocess.Popen([VSEARCH, "serve", "--home", str(home), "--port", str(port)],
                              cwd=home.parent, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    health = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and health is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    health = json.load(r)
            except OSError:
                time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=30)
    assert health is not None and health["status"] == "ok" and health["vectors"] == 153


# ------------------------------------------------------------------- stopping the servers


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (its children's children too)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop_server(args: list[str], cwd: Path, signum: int, to_group: bool,
                 start_s: float = 240,
                 ready: str = "") -> tuple[int, float, str, dict[int, list[str]]]:
    """Start a `vsearch` server command in its own process group, wait until its port answers
    (and its output says `ready`), send `signum` (to the group, as Ctrl-C does, or to the
    process alone), and wait for it.
    Returns its exit status, the seconds it took to exit, its output and the processes it had
    started, with their command lines. Everything it started is killed afterwards, whatever
    happened."""
    import time

    port = int(args[args.index("--port") + 1])
    log = cwd / f"server-{port}.log"
    with open(log, "w") as out:
        server = subprocess.Popen([VSEARCH, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                                  start_new_session=True)  # the venv need not be activated
    started: dict[int, list[str]] = {}
    try:
        deadline = time.monotonic() + start_s
        while not _listening(port) or ready not in log.read_text():
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"not listening after {start_s} s"
            time.sleep(0.5)
        started = {pid: _command_line(pid) for pid in _descendants(server.pid)}
        (os.killpg if to_group else os.kill)(server.pid, signum)
        sent = time.monotonic()
        status = server.wait(timeout=60)
        return status, time.monotonic() - sent, log.read_text(), started
    finally:
        for pid in [server.pid, *started]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["sigterm", "ctrl-c"])
def test_serve_stops_cleanly_on_a_signal(demo_home, signum, to_group):
    """SIGTERM used to end the service 'killed by SIGTERM' (uvicorn raises it again after its
    graceful shutdown)."""
    home, _ = demo_home
    port = _free_port()
    status, seconds, output, _ = _stop_server(["serve", "--home", str(home), "--port", str(port)],
                                              home.parent, signum, to_group)
    assert status == 0, output[-3000:]
    assert seconds < 30 and not _listening(port)
    assert "Traceback" not in output and "vsearch: stopped" in output
    assert "Loaded pretrained weights" not in output and "Loading weights" not in output
    print(f"serve: {signal.Signals(signum).name} -> exit 0 in {seconds:.1f} s, port closed")


@pytest.mark.slow
def test_ui_runs_the_webserver_and_the_daemon_and_stops_both_on_sigterm(demo_home):
    """`vsearch ui` used to start the webserver alone (no sensor ever ticked) and SIGTERM to it
    left the webserver and its code server listening. Now the webserver and the daemon run
    under it, each with its code server, and SIGTERM to `vsearch ui` alone stops all of them."""
    home, _ = demo_home
    port = _free_port()
    status, seconds, output, started = _stop_server(
        ["ui", "--home", str(home), "--port", str(port)], home.parent, signal.SIGTERM,
        to_group=False, ready="with the daemon")
    assert status == 0, output[-3000:]
    commands = {" ".join(command) for command in started.values()}
    assert any("dagster-webserver" in c for c in commands), commands
    assert any("dagster-daemon run" in c for c in commands), commands
    assert f"Dagster UI at http://127.0.0.1:{port}/ with the daemon" in output
    assert "folder_new_files looks for new files in" in output and "vsearch: stopped" in output
    assert seconds < 30 and not _listening(port)
    assert not [pid for pid in started if _alive(pid)]
    assert "Traceback" not in output and "INFO" not in output  # Dagster's output: in logs/
    assert "dagster.daemon" in (home / "logs" / "daemon.log").read_text()
    print(f"ui: SIGTERM -> exit 0 in {seconds:.1f} s; {len(started)} processes it had started "
          "(webserver, daemon, their code servers) all gone, port closed")


def _command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@pytest.mark.parametrize("command", [["search", "image_0001"], ["serve", "--port", "1"],
                                     ["metrics"], ["ui", "--port", "1"], ["daemon"]])
def test_reading_commands_on_a_missing_home_say_so_in_one_line(tmp_path, command):
    home = tmp_path / "nowhere"
    result = subprocess.run([VSEARCH, *command, "--home", str(home)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()
    assert len(last) == 1 and str(home) in last[0], last
    assert "run `vsearch materialize" in last[0]
    assert not home.exists()  # a mistyped --home leaves nothing behind

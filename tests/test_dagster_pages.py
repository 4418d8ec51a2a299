"""The Dagster UI pages a person opens after `make demo`, driven in headless Chromium: the global
lineage shows the whole asset graph (not collapsed group boxes), the evaluation table fits the
asset page with every case of the demo's grounding set, and run constants are listed, not
plotted. Screenshots go to test-artifacts/."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VSEARCH = str(Path(sys.executable).parent / "vsearch")
CHROMIUM = os.environ.get("VSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
ASSETS = ("raw_image_manifest", "sampled_subset", "embeddings", "perceptual_hashes",
          "near_duplicate_groups", "projection_head", "retrieval_transform", "faiss_index",
          "clusters", "curation_grounding", "evaluation", "collection_insight")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("dagster-pages") / "home"
    done = subprocess.run([VSEARCH, "demo", "--home", str(home)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return home


@pytest.fixture(scope="module")
def dagster_ui(demo_home: Path):
    """`vsearch ui` on the demo home, as the README says; stopped with its whole process group."""
    port = _free_port()
    log = demo_home.parent / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen([VSEARCH, "ui", "--home", str(demo_home), "--port", str(port)],
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert ui.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/server_info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Dagster UI did not answer"
            time.sleep(1)
        yield base
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VSEARCH_CHROMIUM)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, dagster_ui: str):
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, base_url=dagster_ui)
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


# The text of every leaf element right of the asset list (the graph), as the browser lays it out.
GRAPH_NODE_TEXTS = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.children.length === 0 && e.textContent.trim())
  .filter(e => { const r = e.getBoundingClientRect();
                 return r.width > 0 && r.left > window.innerWidth * 0.35; })
  .map(e => e.textContent.trim())"""


def _shown_as(name: str, text: str) -> bool:
    """A node label, which the graph shortens in the middle ('retriev…_transform')."""
    head, _, tail = text.partition("\u2026")
    return text == name or (bool(tail) and name.startswith(head) and name.endswith(tail))


def _skip_the_welcome(page) -> None:
    """Dagster asks a first visitor to join its community; a person clicks Skip."""
    skip = page.get_by_text("Skip", exact=True)
    with contextlib.suppress(Exception):  # not asked this time
        skip.wait_for(state="visible", timeout=10_000)
        skip.click()
        skip.wait_for(state="hidden", timeout=10_000)


def test_global_lineage_opens_on_the_whole_graph(page):
    """One asset group: Dagster draws every asset and its edges at once, instead of six group
    boxes a person has to expand one by one."""
    from playwright.sync_api import expect

    page.goto("/asset-groups")
    expect(page.get_by_text("evaluation", exact=True).first).to_be_visible()
    _skip_the_welcome(page)
    page.wait_for_timeout(2000)  # the layout settles
    drawn = page.evaluate(GRAPH_NODE_TEXTS)
    missing = [name for name in ASSETS if not any(_shown_as(name, text) for text in drawn)]
    assert not missing, (missing, drawn)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dagster-global-lineage.png"))


def test_the_evaluation_table_fits_and_names_every_case(page):
    """The evaluation's summary has one row per grounding set and per case of its images
    (demo/quarter, demo/small_grey, ...) and few enough columns that the last one is on screen."""
    from playwright.sync_api import expect

    page.goto("/assets/evaluation")
    _skip_the_welcome(page)
    last_column = page.get_by_text("dup. precision", exact=True).first
    expect(last_column).to_be_visible()
    for case in ("demo/original", "demo/quarter", "demo/small_grey", "demo/mirror_turned15"):
        expect(page.get_by_text(case, exact=True).first).to_be_visible()
    box = last_column.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 1600, box
    page.screenshot(path=str(ARTIFACTS / "dagster-evaluation.png"), full_page=True)


def test_the_clusters_page_shows_the_map(page):
    """The clusters' metadata holds the map as a picture, and the asset page shows it (a
    Markdown entry: "[Show Markdown]" opens it)."""
    import re

    from playwright.sync_api import expect

    page.goto("/assets/clusters")
    _skip_the_welcome(page)
    row = page.get_by_role("row", name=re.compile(r"^map materialization")).first
    row.get_by_text("[Show Markdown]").click()
    picture = page.locator("img[alt='map of the collection']").first
    expect(picture).to_be_visible(timeout=60_000)
    assert picture.evaluate("img => img.complete && img.naturalWidth") == 900
    page.wait_for_timeout(1000)  # the dialog fades in
    page.screenshot(path=str(ARTIFACTS / "dagster-clusters-map.png"), full_page=True)


def test_constants_are_listed_not_plotted(demo_home: Path, dagster_ui: str):
    """Dagster plots every numeric metadata entry over runs: the batch size, the dimension and
    the bounds are text; what a run measured stays a number."""
    from dagster import AssetKey, DagsterInstance
    from dagster._core.definitions.metadata import FloatMetadataValue, IntMetadataValue

    from vsearch_pipeline.runner import dagster_home

    os.environ["DAGSTER_HOME"] = str(dagster_home(demo_home))
    with DagsterInstance.get() as instance:
        def metadata(asset: str) -> dict:
            event = instance.get_latest_materialization_event(AssetKey(asset))
            return event.asset_materialization.metadata

        embedded, index = metadata("embeddings"), metadata("faiss_index")
        evaluated = metadata("evaluation")
    numbers = (IntMetadataValue, FloatMetadataValue)
    for entries, constant in ((embedded, "batch_size"), (embedded, "dimension"),
                              (index, "dimension"), (evaluated, "grounding_sets")):
        assert not isinstance(entries[constant], numbers), constant
    assert embedded["dimension"].value == "1280"
    assert isinstance(embedded["images_per_second"], numbers)
    assert isinstance(evaluated["demo/map@10"], numbers)
    assert not any(key.startswith("demo/quarter/") for key in evaluated)  # slices: in the table


def _graphql(base: str, query: str) -> dict:
    answer = httpx.post(f"{base}/graphql", json={"query": query}, timeout=30)
    answer.raise_for_status()
    return answer.json()["data"]


AUTOMATION_STATE = """{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
  ... on RepositoryLocation { repositories {
    sensors { name sensorState { status ticks(limit: 20) { status runIds } } }
    schedules { name scheduleState { status } } } } } } } } }"""


def _automation(base: str) -> tuple[dict, dict]:
    """({sensor: (status, [its ticks' run ids])}, {schedule: status}) as the UI shows them."""
    sensors, schedules = {}, {}
    for entry in _graphql(base, AUTOMATION_STATE)["workspaceOrError"]["locationEntries"]:
        for repository in entry["locationOrLoadError"]["repositories"]:
            for s in repository["sensors"]:
                runs = [r for tick in s["sensorState"]["ticks"] for r in tick["runIds"]]
                sensors[s["name"]] = (s["sensorState"]["status"], runs)
            schedules |= {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
    return sensors, schedules


def test_the_daemon_runs_beside_the_ui(page, dagster_ui: str):
    """`vsearch ui` used to start the webserver alone: every daemon 'Not running', the sensors
    never ticked. Now each daemon reports a heartbeat and the automation is on by default."""
    from playwright.sync_api import expect

    deadline = time.monotonic() + 120
    while True:  # a daemon's first heartbeat comes once it has loaded the code
        health = _graphql(dagster_ui, "{ instance { daemonHealth { allDaemonStatuses { "
                                      "daemonType required healthy } } } }")
        statuses = health["instance"]["daemonHealth"]["allDaemonStatuses"]
        unhealthy = [s["daemonType"] for s in statuses if s["required"] and not s["healthy"]]
        if not unhealthy or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not unhealthy, statuses
    assert {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"} <= {s["daemonType"] for s in statuses}
    sensors, schedules = _automation(dagster_ui)
    assert {name: status for name, (status, _) in sensors.items()} == {
        "folder_new_files": "RUNNING", "index_after_batch": "RUNNING"}
    assert schedules == {"recluster_nightly": "RUNNING", "index_rebuild": "RUNNING"}
    page.goto("/deployment/daemons")
    _skip_the_welcome(page)
    expect(page.get_by_text("Sensors", exact=True).first).to_be_visible()
    expect(page.get_by_text("Running", exact=True).first).to_be_visible()
    expect(page.get_by_text("Not running", exact=True)).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "dagster-daemons.png"), full_page=True)


def test_a_file_dropped_into_the_source_becomes_searchable(page, demo_home: Path,
                                                           dagster_ui: str, shared_data: Path):
    """Nothing but the running `vsearch ui`: the sensor sees a new photo in the demo's source
    folder, a batch run embeds it, the index follows, and `vsearch search` knows its id (and
    answers with its nearest neighbours; before, it said no image has that id).
    Last in this module: it adds an image to the demo home."""
    import hashlib

    photo = shared_data / "caltech101" / "accordion" / "image_0001.jpg"
    if not photo.exists():
        pytest.skip(f"no {photo}")
    image_id = hashlib.sha256(photo.read_bytes()).hexdigest()[:16]
    search = [VSEARCH, "search", image_id, "--home", str(demo_home), "-k", "1", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    assert subprocess.run(search, capture_output=True, env=env, timeout=120).returncode == 1
    shutil.copyfile(photo, demo_home / "demo" / "images" / "dropped_accordion.jpg")
    dropped, found = time.monotonic(), None
    while found is None and time.monotonic() - dropped < 360:
        time.sleep(5)
        done = subprocess.run(search, capture_output=True, text=True, env=env, timeout=120)
        if done.returncode == 0:
            found = json.loads(done.stdout)["results"]
    seconds = time.monotonic() - dropped
    sensors, _ = _automation(dagster_ui)
    assert found is not None, (f"not searchable {seconds:.0f} s after it was dropped", sensors)
    assert found and image_id not in {row["id"] for row in found}, found  # its neighbours
    assert sensors["folder_new_files"][1] and sensors["index_after_batch"][1], sensors
    print(f"dropped photo searchable after {seconds:.0f} s, with no command run")
    page.goto("/automation")
    _skip_the_welcome(page)
    page.get_by_text("folder_new_files", exact=True).first.wait_for(state="visible")
    page.screenshot(path=str(ARTIFACTS / "dagster-sensor-ticked.png"), full_page=True)

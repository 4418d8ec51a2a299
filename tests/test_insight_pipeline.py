"""The insight asset and the map through the real pipeline and service: a small Caltech-101
collection with a photo in the wrong folder, a texture among photos, a dark and a blurred file;
then more images, which land on the map without moving anyone."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageEnhance, ImageFilter

from serving.app import app_for_home
from serving.auth import create_key
from vsearch_pipeline.core.artifacts import load_manifests
from vsearch_pipeline.core.catalog import latest_clusters
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.runner import run_pipeline
from vsearch_pipeline.settings import load_settings

pytestmark = pytest.mark.slow

CLASSES = ("accordion", "sunflower", "pizza", "airplanes")
PER_CLASS = 20
MOVED = ("sunflower/image_0003.jpg", "pizza/image_0003_sunflower.jpg")


def _texture(path: Path) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256] / 256.0
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * 23 * (x * 0.6 + y * 0.8))
    pixels = np.stack([stripes * 255, rng.random((256, 256)) * 80, (1 - stripes) * 200], -1)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def collection(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("insight")
    images = root / "images"
    caltech = shared_data / "caltech101"
    for name in CLASSES:
        (images / name).mkdir(parents=True)
        for photo in sorted((caltech / name).glob("*.jpg"))[:PER_CLASS]:
            if f"{name}/{photo.name}" != MOVED[0]:
                shutil.copy(photo, images / name / photo.name)
    shutil.copy(caltech / MOVED[0], images / MOVED[1])
    (images / "odd").mkdir()
    _texture(images / "odd" / "stripes.png")
    with Image.open(caltech / "airplanes" / "image_0100.jpg") as photo:
        ImageEnhance.Brightness(photo.convert("RGB")).enhance(0.15).save(images / "airplanes" / "dark.jpg")
        photo.convert("RGB").filter(ImageFilter.GaussianBlur(4)).save(images / "airplanes" / "blurred.jpg")
    home = root / "home"
    keys_file = root / "api-keys"
    auth = {"X-API-Key": create_key(keys_file, "curator")}
    settings = load_settings(home, {"source": {"uri": str(images)},
                                    "index": {"index_type": "flat"},
                                    "serving": {"refresh_interval_s": 3600,
                                                "api_keys_file": str(keys_file)}})
    run_pipeline(home, settings, say=print)
    return {"home": home, "images": images, "settings": settings, "caltech": caltech,
            "auth": auth}


def _id_of(home: Path, settings, path: str) -> str:
    manifest = load_manifests(ArtifactStore(settings.artifacts_root(home))).to_pylist()
    return next(r["id"] for r in manifest if r["path"] == path)


def test_tables_name_the_moved_photo_the_texture_and_the_poor_files(collection: dict) -> None:
    with duckdb.connect(str(collection["home"] / "vsearch.duckdb"), read_only=True) as con:
        mistakes = con.execute("SELECT path, label, suggested_label, label_confidence "
                               "FROM image_insight WHERE label_flagged").fetchall()
        odd = con.execute("SELECT path FROM image_insight ORDER BY outlier DESC LIMIT 2"
                          ).fetchall()
        flags = dict(con.execute("SELECT path, array_to_string(flags, ',') FROM image_quality "
                                 "WHERE len(flags) > 0").fetchall())
        counts = dict(con.execute("SELECT metric, value FROM insight_metrics").fetchall())
    assert (MOVED[1], "pizza", "sunflower") in [m[:3] for m in mistakes]
    assert len(mistakes) <= 2  # the moved photo, and at most one other
    assert "odd/stripes.png" not in [m[0] for m in mistakes]  # a folder of one is not reviewed
    assert ("odd/stripes.png",) in odd
    assert "dark" in flags["airplanes/dark.jpg"] and "blurry" in flags["airplanes/blurred.jpg"]
    assert counts["images"] == len(CLASSES) * PER_CLASS + 3
    assert counts["label_mistakes"] == len(mistakes) and counts["quality_dark"] >= 1


def test_service_pages_the_insight_and_colours_the_map(collection: dict) -> None:
    home, settings = collection["home"], collection["settings"]
    moved = _id_of(home, settings, MOVED[1])
    with TestClient(app_for_home(home, settings), headers=collection["auth"]) as client:
        mistakes = client.get("/label-mistakes").json()
        entry = next(m for m in mistakes["images"] if m["id"] == moved)
        assert entry["suggested"] == "sunflower" and entry["label"] == "pizza"
        assert entry["accept_tag"] == "label:sunflower" and 0.5 <= entry["confidence"] <= 1
        odd = client.get("/odd", params={"limit": 3}).json()
        assert odd["images"][0]["path"] == "odd/stripes.png"
        assert odd["images"][0]["outlier"] == 1.0 and odd["images"][0]["uniqueness"] > 0.9
        dark = client.get("/quality", params={"flag": "dark"}).json()
        assert "airplanes/dark.jpg" in [i["path"] for i in dark["images"]]
        assert client.get("/quality", params={"flag": "sharp"}).status_code == 422
        map_ = client.get("/map").json()
        assert map_["count"] == len(map_["ids"]) == len(map_["x"]) == len(map_["category"])
        assert set(map_["ids"]) >= {moved}
        by_label = client.get("/map", params={"colour": "label"}).json()
        assert set(by_label["names"]) == {*CLASSES, "odd"}
        # accepting the suggestion is a tag, and the map can be coloured by it
        assert client.post("/tags", json={"ids": [moved], "tag": entry["accept_tag"]}
                           ).status_code == 200
        by_tag = client.get("/map", params={"colour": "tag"}).json()
        assert by_tag["names"] == ["label:sunflower"]
        assert by_tag["category"][by_tag["ids"].index(moved)] == 0
        client.request("DELETE", "/tags", json={"ids": [moved], "tag": entry["accept_tag"]})


def test_new_images_land_on_the_map_without_moving_anyone(collection: dict) -> None:
    home, settings, images = collection["home"], collection["settings"], collection["images"]
    store = ArtifactStore(settings.artifacts_root(home))
    before = store.read_parquet(latest_clusters(store, settings.model.spec.key)).to_pylist()
    for photo in sorted((collection["caltech"] / "sunflower").glob("*.jpg"))[40:44]:
        shutil.copy(photo, images / "sunflower" / f"new_{photo.name}")
    run_pipeline(home, settings, say=print)
    after = {r["id"]: r for r in store.read_parquet(
        latest_clusters(store, settings.model.spec.key)).to_pylist()}
    assert len(after) == len(before) + 4
    assert all((after[r["id"]]["x"], after[r["id"]]["y"]) == (r["x"], r["y"]) for r in before)
    sunflowers = np.array([(r["x"], r["y"]) for r in before
                           if r["id"] in {_id_of(home, settings, f"sunflower/{p.name}")
                                          for p in (images / "sunflower").glob("image_*.jpg")}])
    new = np.array([(r["x"], r["y"]) for i, r in after.items()
                    if i not in {b["id"] for b in before}])
    centre = sunflowers.mean(axis=0)
    spread = np.linalg.norm(sunflowers - centre, axis=1).max()
    assert (np.linalg.norm(new - centre, axis=1) <= spread).all()  # among the sunflowers


@pytest.fixture(scope="module")
def service(collection: dict):
    import threading

    import uvicorn
    from conftest import free_port, wait_until_served

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app_for_home(collection["home"], collection["settings"]),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_until_served(base, thread.is_alive)
    yield base
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright (tests/test_web_page.py says how)."""
    from test_web_page import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VSEARCH_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _open_page(browser, service: str, key: str, height: int = 1100):
    """The web page with the API key in its tab (writes need it), ready; and its script errors."""
    context = browser.new_context(viewport={"width": 1400, "height": height}, base_url=service)
    context.add_init_script(f"sessionStorage.setItem('vsearch.apiKey', {key!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    return context, page, errors


def test_insight_tab_lists_and_accepts_in_chromium(collection: dict, service: str,
                                                   browser) -> None:
    """The Insight tab: the texture first among the odd ones, the moved photo with its
    suggestion, accepted with one click (a `label:` tag), and the dark file under "dark"."""
    from playwright.sync_api import expect
    from test_web_page import ARTIFACTS

    home, settings = collection["home"], collection["settings"]
    moved = _id_of(home, settings, MOVED[1])
    context, page, errors = _open_page(browser, service, collection["auth"]["X-API-Key"], 1200)
    page.click("#tab-insight")
    expect(page.locator("#odd-ones .card").first).to_have_attribute(
        "data-path", "odd/stripes.png", timeout=30_000)
    card = page.locator(f"#label-mistakes .card[data-id='{moved}']")
    expect(card.locator("[data-testid=mistake-labels]")).to_contain_text(
        "labelled pizza · neighbours say sunflower")
    page.select_option("#quality-flag", "dark")
    expect(page.locator("#quality-files .card[data-path='airplanes/dark.jpg']")).to_have_count(1)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "insight-tab.png"), full_page=True)
    card.locator("[data-testid=accept-label]").click()
    expect(card).to_have_attribute("data-accepted", "true")
    context.close()
    assert not errors, errors
    with TestClient(app_for_home(home, settings), headers=collection["auth"]) as client:
        tags = client.post("/tags/of", json={"ids": [moved]}).json()["tags"][moved]
        assert "label:sunflower" in tags
        client.request("DELETE", "/tags", json={"ids": [moved], "tag": "label:sunflower"})


def test_a_diverse_subset_through_the_pipeline_embeds_each_image_once(collection: dict,
                                                                       tmp_path: Path) -> None:
    """`subset.mode: diverse` embeds the batch to choose from it; the embeddings step then copies
    the chosen vectors instead of embedding them again, and every class is in the subset."""
    home = tmp_path / "diverse"
    settings = load_settings(home, {"source": {"uri": str(collection["images"])},
                                    "subset": {"mode": "diverse", "fraction": 0.1},
                                    "index": {"index_type": "flat"}})
    run_pipeline(home, settings, say=print)
    store = ArtifactStore(settings.artifacts_root(home))
    subset = store.read_parquet("subset/b00001.parquet").to_pylist()
    usable = [r for r in load_manifests(store).to_pylist() if r["status"] == "ok"]
    assert len(subset) == round(0.1 * len(usable))
    assert {r["path"].split("/")[0] for r in subset} >= set(CLASSES)
    with duckdb.connect(str(home / "vsearch.duckdb"), read_only=True) as con:
        figures = dict(con.execute(
            "SELECT asset || ':' || metric, value FROM (SELECT asset, metric, value FROM "
            "embedding_metrics UNION ALL SELECT asset, metric, value FROM subset_metrics)"
        ).fetchall())
    assert figures["sampled_subset:embedded_for_choice"] == len(usable)
    assert figures["embeddings:embedded_now"] == 0
    assert figures["embeddings:images"] == len(subset)


def test_the_report_is_one_self_contained_page(collection: dict, tmp_path: Path,
                                               browser) -> None:
    """`vsearch report --html`: every section, pictures inline, nothing fetched when opened
    (Chromium records every request), and the service's /report and the page's button give it
    too."""
    import re

    from click.testing import CliRunner
    from test_web_page import ARTIFACTS

    from vsearch_pipeline.cli import main

    target = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--home", str(collection["home"]),
                                       "--html", str(target)])
    assert result.exit_code == 0, result.output
    page = target.read_text(encoding="utf-8")
    for heading in ("The collection", "Near-duplicates", "Clusters", "Map", "Odd ones",
                    "Likely label mistakes", "Image quality", "Search quality"):
        assert f"<h2>{heading}</h2>" in page
    assert "<script" not in page
    assert not re.findall(r"(?:src|href)=['\"](?!data:)", page)  # every picture inline
    assert MOVED[1] in page and "pizza → sunflower" in page and "odd/stripes.png" in page
    assert page.count("<svg") == 4 and "data:image/png;base64," in page
    text = CliRunner().invoke(main, ["report", "--home", str(collection["home"])])
    assert "files to drop" in text.output and "blurry:" in text.output
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    requests: list[str] = []
    opened.on("request", lambda r: requests.append(r.url))
    opened.goto(target.as_uri())
    pictures = opened.eval_on_selector_all(
        "img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    opened.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    context.close()
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert len(pictures) >= 10 and all(pictures)


def test_the_page_opens_the_report(collection: dict, service: str, browser) -> None:
    import httpx

    answer = httpx.get(f"{service}/report", timeout=120)
    assert answer.status_code == 200 and "<h2>Odd ones</h2>" in answer.text
    context, page, errors = _open_page(browser, service, collection["auth"]["X-API-Key"])
    with context.expect_page(timeout=120_000) as popup:
        page.click("#report-open")
    report = popup.value
    report.wait_for_load_state()
    assert report.locator("h2", has_text="Likely label mistakes").count() == 1
    context.close()
    assert not errors, errors


def test_map_tab_draws_selects_and_tags_in_chromium(collection: dict, service: str,
                                                    browser) -> None:
    """The Map tab: every image drawn, coloured by label with a legend, a box selection over
    the whole map tags all of them through the selection bar, and find-similar searches."""
    from playwright.sync_api import expect
    from test_web_page import ARTIFACTS

    home, settings = collection["home"], collection["settings"]
    context, page, errors = _open_page(browser, service, collection["auth"]["X-API-Key"])
    page.click("#tab-map")
    expect(page.locator("#map-summary")).to_contain_text("images", timeout=30_000)
    count = int(page.locator("#map-summary").inner_text().split()[0])
    page.select_option("#map-colour", "label")
    expect(page.locator("[data-testid=map-legend]")).to_contain_text("sunflower")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "map-tab.png"))
    page.click("[data-testid=map-mode-box]")
    box = page.locator("#map canvas").bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=8)
    page.mouse.up()
    expect(page.locator("#selection-count")).to_have_text(f"{count} selected in the map")
    page.fill("#tag-input", "seen-on-map")
    page.click("#tag-selected-button")
    expect(page.locator("#status")).to_contain_text("Tagged")
    page.click("#map-similar")
    expect(page.locator("#results .card").first).to_be_visible(timeout=30_000)
    context.close()
    assert not errors, errors
    with TestClient(app_for_home(home, settings), headers=collection["auth"]) as client:
        by_tag = client.get("/map", params={"colour": "tag"}).json()
        assert "seen-on-map" in by_tag["names"]
        ids = by_tag["ids"]
        assert len(ids) == count
        client.request("DELETE", "/tags", json={"ids": ids, "tag": "seen-on-map"})

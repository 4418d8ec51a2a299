"""The web page of the search service, driven in headless Chromium against the real service (over
HTTP, uvicorn in a thread) on a small collection the pipeline materialized from Caltech-101
photos: gallery paging, upload (file input and drag-and-drop), crop box, text search, find
similar, near-duplicate folding, tagging and the tag filter, click and feedback logging, the
clusters and duplicates views, and API errors shown on the page."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import wait_until_served
from PIL import Image

from serving.app import app_for_home
from serving.auth import create_key
from vsearch_pipeline.runner import run_pipeline
from vsearch_pipeline.settings import load_settings

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("VSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = ("accordion", "sunflower", "pizza")
PER_CLASS = 8
LARGE = ("BACKGROUND_Google/image_0013.jpg", "background/image_0013.jpg")  # 1280x1024
DUPLICATE = ("accordion/image_0001.jpg", "accordion/image_0001_small.jpg")
PAGE_SIZE = 10
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
KEY_STORAGE = "vsearch.apiKey"  # where the page keeps the key for its tab
TIMEOUT_MS = 30_000  # the first text search loads the sentence model


@pytest.fixture(scope="module")
def collection(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """3 Caltech-101 classes x 8 photos, one large photo, and a resized copy of one photo."""
    root = tmp_path_factory.mktemp("web")
    images = root / "images"
    caltech = shared_data / "caltech101"
    for name in CLASSES:
        (images / name).mkdir(parents=True)
        for photo in sorted((caltech / name).glob("*.jpg"))[:PER_CLASS]:
            shutil.copy(photo, images / name / photo.name)
    (images / LARGE[1]).parent.mkdir()
    shutil.copy(caltech / LARGE[0], images / LARGE[1])
    with Image.open(images / DUPLICATE[0]) as original:
        original.resize((original.width * 3 // 4, original.height * 3 // 4)).save(
            images / DUPLICATE[1], quality=92)
    home = root / "home"
    keys_file = root / "api-keys"
    key = create_key(keys_file, "web-curator")
    settings = load_settings(home, {"source": {"uri": str(images)},
                                    "index": {"index_type": "flat"},
                                    "clusters": {"min_cluster_size": 3},
                                    "serving": {"refresh_interval_s": 3600,
                                                "api_keys_file": str(keys_file)}})
    run_pipeline(home, settings, say=print)
    return {"home": home, "images": images, "settings": settings, "key": key,
            "count": len(CLASSES) * PER_CLASS + 2}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def service(collection: dict):
    """The real service on a free port; yields its base URL."""
    yield from _serve(collection["home"], collection["settings"])


def _serve(home: Path, settings):
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app_for_home(home, settings),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_until_served(base, thread.is_alive)
    yield base
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def api(service: str):
    with httpx.Client(base_url=service, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VSEARCH_CHROMIUM)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, service: str):
    """The page, loaded and ready, with its gallery 10 images a page. It must raise no script
    error and ask for nothing but the service (no CDN, everything offline)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=service)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(WATCH_FORMS)
    page = context.new_page()
    script_errors, elsewhere = [], []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.on("request", lambda request: None if request.url.startswith((service, "data:", "blob:"))
            else elsewhere.append(request.url))
    page.goto(f"/?page_size={PAGE_SIZE}")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    assert not script_errors, script_errors
    assert not elsewhere, f"the page asked for things outside the service: {elsewhere}"


def _expect():
    from playwright.sync_api import expect

    return expect


def _is(method: str, path: str):
    """A predicate for page.expect_request/expect_response: this method on this path."""
    def matches(item) -> bool:
        request = getattr(item, "request", item)
        return request.method == method and httpx.URL(request.url).path == path
    return matches


# Chromium does not hand Playwright the body of a request that carries a file, so the page's
# fetch is watched from inside: each multipart form it sends is kept in window.sentForms.
WATCH_FORMS = """
window.sentForms = [];
const originalFetch = window.fetch;
window.fetch = function (input, init) {
  if (init && init.body instanceof FormData) {
    const fields = {};
    for (const [key, value] of init.body.entries()) {
      fields[key] = typeof value === "string" ? value : `file ${value.name} ${value.size}`;
    }
    window.sentForms.push({url: String(input), fields});
  }
  return originalFetch.apply(this, arguments);
};
"""


def _last_form(page) -> dict:
    """The fields of the last multipart form the page sent."""
    return page.evaluate("window.sentForms[window.sentForms.length - 1].fields")


def _card_values(page, selector: str, key: str) -> list[str]:
    return page.eval_on_selector_all(selector, f"cards => cards.map(c => c.dataset.{key})")


def _search_and_wait(page, action, method: str, path: str):
    """Run an action that searches; wait for the answer and for the page to show it."""
    with page.expect_response(_is(method, path)) as answer:
        action()
    response = answer.value
    assert response.ok, response.text()
    # this answer (not the one before it) is on the page
    _expect()(page.locator("#results")).to_have_attribute("data-query-id", response.json()["query_id"])
    _expect()(page.locator("#status")).to_have_attribute("data-kind", "ok")
    return response


def _sign_in(page, key: str) -> None:
    """Store the key as the page does after asking for it."""
    page.evaluate("([name, key]) => sessionStorage.setItem(name, key)", [KEY_STORAGE, key])


def _thumbnails_loaded(page, selector: str) -> bool:
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(i => i.complete)", arg=selector)
    return page.eval_on_selector_all(
        selector, "imgs => imgs.length > 0 && imgs.every(i => i.naturalWidth > 0)")


def test_gallery_shows_thumbnails_and_pages(page, api, collection):
    expect = _expect()
    pages = -(-collection["count"] // PAGE_SIZE)
    expect(page.locator("#gallery .card")).to_have_count(PAGE_SIZE)
    expect(page.locator("#gallery-page")).to_have_text(f"page 1 of {pages}")
    expect(page.locator("#gallery-prev")).to_be_disabled()
    assert _thumbnails_loaded(page, "#gallery .card img")
    first = api.get("/gallery", params={"offset": 0, "limit": PAGE_SIZE}).json()
    assert _card_values(page, "#gallery .card", "id") == [i["id"] for i in first["images"]]

    with page.expect_response(lambda r: httpx.URL(r.url).path == "/gallery"):
        page.click("#gallery-next")
    expect(page.locator("#gallery-page")).to_have_text(f"page 2 of {pages}")
    second = api.get("/gallery", params={"offset": PAGE_SIZE, "limit": PAGE_SIZE}).json()
    expect(page.locator("#gallery .card")).to_have_count(len(second["images"]))
    assert _card_values(page, "#gallery .card", "id") == [i["id"] for i in second["images"]]
    assert _thumbnails_loaded(page, "#gallery .card img")
    for _ in range(pages - 2):
        page.click("#gallery-next")
    expect(page.locator("#gallery-page")).to_have_text(f"page {pages} of {pages}")
    expect(page.locator("#gallery-next")).to_be_disabled()


def test_upload_drop_and_crop_box_search(page, collection, tmp_path):
    expect = _expect()
    images = collection["images"]
    # Drag-and-drop onto the drop zone: the dropped photo comes back first.
    dropped = base64.b64encode((images / "sunflower/image_0003.jpg").read_bytes()).decode()
    _search_and_wait(page, lambda: page.evaluate("""data => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        document.querySelector("#drop-zone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", dropped), "POST", "/search")
    expect(page.locator("#results .result-card").first).to_have_attribute(
        "data-path", "sunflower/image_0003.jpg")

    # The file input; near-duplicates fold under the best of them, and unfold on request.
    _search_and_wait(page, lambda: page.set_input_files("#file-input", images / DUPLICATE[0]),
                     "POST", "/search")
    sent = _last_form(page)
    assert sent["fold"] == "true" and "bbox" not in sent
    assert sent["file"] == f"file image_0001.jpg {(images / DUPLICATE[0]).stat().st_size}"
    top = page.locator("#results .result-card").first
    expect(top).to_have_attribute("data-path", DUPLICATE[0])
    expect(top.locator(".dup-badge")).to_have_text("+1 near-duplicate")
    expect(top.locator(".dup-list")).to_be_hidden()
    top.locator(".dup-badge").click()
    expect(top.locator(".dup-list .dup-item")).to_have_attribute("data-path", DUPLICATE[1])
    assert DUPLICATE[1] not in _card_values(page, "#results .result-card", "path")
    expect(page.locator("#status")).to_contain_text("1 near-duplicate folded")
    _search_and_wait(page, lambda: page.uncheck("#fold"), "POST", "/search")
    assert _last_form(page)["fold"] == "false"
    assert _card_values(page, "#results .result-card", "path")[:2] == list(DUPLICATE)
    expect(page.locator("#results .dup-badge")).to_have_count(0)
    page.check("#fold")

    # A large photo: the preview is scaled down; the crop box is sent in its own pixels.
    _search_and_wait(page, lambda: page.set_input_files("#file-input", images / LARGE[1]),
                     "POST", "/search")
    assert "bbox" not in _last_form(page)
    expect(page.locator("#results .result-card").first).to_have_attribute("data-path", LARGE[1])
    # The drop zone names the chosen file (the input itself is reset to allow choosing it again).
    expect(page.locator("#file-name")).to_contain_text("image_0013.jpg")
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#query-panel")).to_have_attribute("data-kind", "upload")
    expect(page.get_by_test_id("query-image")).to_be_visible()
    expect(page.locator("#status")).to_contain_text(re.compile(r"\d+(\.\d+)? ms"))
    natural, shown = page.eval_on_selector(
        "#preview", "img => [[img.naturalWidth, img.naturalHeight], [img.clientWidth, img.clientHeight]]")
    assert natural == [1280, 1024] and shown[0] < natural[0] / 2
    box = page.locator("#preview").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.7, steps=8)
    page.mouse.up()
    expect(page.locator("#crop-box")).to_be_visible()
    expect(page.locator("#bbox-label")).to_contain_text("of 1280×1024 px")
    answer = _search_and_wait(page, lambda: page.click("#search-button"), "POST", "/search")
    sent = [float(v) for v in _last_form(page)["bbox"].split(",")]
    wanted = [0.25 * 1280, 0.2 * 1024, 0.75 * 1280, 0.7 * 1024]
    assert all(abs(s - w) <= 8 for s, w in zip(sent, wanted, strict=True)), (sent, wanted)
    assert answer.json()["results"]
    expect(page.locator("#status")).to_contain_text("results for a crop of image_0013.jpg")
    # The query panel shows the upload with the crop box the results answer, where it was drawn.
    crop = page.get_by_test_id("query-crop-box")
    expect(crop).to_be_visible()
    image, drawn = page.get_by_test_id("query-image").bounding_box(), crop.bounding_box()
    assert abs((drawn["x"] - image["x"]) / image["width"] - 0.25) < 0.03
    assert abs(drawn["width"] / image["width"] - 0.5) < 0.03
    expect(page.locator("#results .result-card")).to_have_count(len(answer.json()["results"]))
    assert _thumbnails_loaded(page, "#results .result-card .thumb img")

    # The screenshot: a crop box on the query, its results, and the gallery.
    page.evaluate("window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    for target in (ARTIFACTS / "web_page.png", tmp_path / "web_page.png"):
        page.screenshot(path=str(target), full_page=True)
        with Image.open(target) as shot:
            assert shot.width == 1400 and shot.height >= 1000
            colours = shot.convert("RGB").resize((64, 64)).getcolors(64 * 64)
        assert target.stat().st_size > 50_000 and len(colours) > 500

    # Clearing the box searches the whole photo again.
    page.click("#clear-box")
    expect(page.locator("#crop-box")).to_be_hidden()
    _search_and_wait(page, lambda: page.click("#search-button"), "POST", "/search")
    assert "bbox" not in _last_form(page)


def test_text_search_shows_the_mode_and_what_matched(page, api):
    expect = _expect()
    page.fill("#text-query", "sunflower")
    answer = _search_and_wait(page, lambda: page.click("#text-search-button"), "GET", "/search/text")
    mode = answer.json()["mode"]
    assert mode in ("clip", "attached_text")
    expect(page.locator("#text-mode")).to_have_text(mode)
    expect(page.locator("#status")).to_contain_text(f"mode {mode}")
    paths = _card_values(page, "#results .result-card", "path")
    assert paths == [r["path"] for r in answer.json()["results"]]
    assert all(p.startswith("sunflower/") for p in paths[:PER_CLASS])
    if mode == "attached_text":
        expect(page.locator("#results .result-card").first.locator(".matched")).to_contain_text(
            "sunflower")


def test_find_similar_from_a_gallery_card(page):
    expect = _expect()
    card = page.locator("#gallery .card").nth(3)
    image_id = card.get_attribute("data-id")
    answer = _search_and_wait(page, lambda: card.locator(".similar-button").click(),
                              "GET", f"/similar/{image_id}")
    ids = _card_values(page, "#results .result-card", "id")
    assert ids == [r["id"] for r in answer.json()["results"]] and image_id not in ids
    expect(page.locator("#results-title")).to_contain_text(f"images like {card.get_attribute('data-path')}")
    # and from a result card
    first = page.locator("#results .result-card").first
    _search_and_wait(page, lambda: first.locator(".similar-button").click(),
                     "GET", f"/similar/{first.get_attribute('data-id')}")


def test_select_all_tag_and_filter_by_tag(page, api, collection):
    expect = _expect()
    page.fill("#k", "5")
    page.fill("#text-query", "pizza")
    _search_and_wait(page, lambda: page.click("#text-search-button"), "GET", "/search/text")
    expect(page.locator("#results .result-card")).to_have_count(5)
    expect(page.locator("#tag-selected-button")).to_be_disabled()  # nothing selected yet
    page.check("#select-all")
    expect(page.locator("#selection-count")).to_have_text(re.compile(r"^5 selected in the results"))
    expect(page.locator("#results .select-box:checked")).to_have_count(5)
    chosen = set(_card_values(page, "#results .result-card", "id"))
    page.fill("#tag-input", "web picked")
    # Tagging needs a key: the page asks for one when refused, keeps it for the tab and retries.
    with page.expect_response(_is("POST", "/tags")) as refused:
        page.click("#tag-selected-button")
    assert refused.value.status == 401
    expect(page.locator("#api-key-form")).to_be_visible()
    page.fill("#api-key-input", collection["key"])
    with page.expect_response(_is("POST", "/tags")) as tagged:
        page.click("#api-key-submit")
    assert tagged.value.ok and set(tagged.value.request.post_data_json["ids"]) == chosen
    assert tagged.value.request.headers["x-api-key"] == collection["key"]
    assert page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == collection["key"]
    expect(page.locator("#api-key-form")).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("Tagged 5 images")
    expect(page.locator("#tag-filter option[value='web picked']")).to_have_text("web picked (5)")

    # The filter applies to the gallery and to the search on screen.
    with page.expect_response(lambda r: httpx.URL(r.url).path == "/gallery"
                              and httpx.URL(r.url).params.get("tag") == "web picked") as gallery, \
            page.expect_response(_is("GET", "/search/text")) as search:
        page.select_option("#tag-filter", "web picked")
    assert gallery.value.ok and search.value.ok
    assert httpx.URL(search.value.url).params.get("tag") == "web picked"
    from_api = api.get("/gallery", params={"tag": "web picked", "limit": 100}).json()
    assert {i["id"] for i in from_api["images"]} == chosen and from_api["total"] == 5
    expect(page.locator("#gallery .card")).to_have_count(5)
    assert set(_card_values(page, "#gallery .card", "id")) == chosen
    expect(page.locator("#gallery .card .chip", has_text="web picked")).to_have_count(5)
    expect(page.locator("#gallery-total")).to_contain_text("5 images tagged")
    expect(page.locator("#status")).to_contain_text("tag “web picked”")
    assert set(_card_values(page, "#results .result-card", "id")) <= chosen

    # A search by example carries the filter too.
    card = page.locator("#gallery .card").first
    answer = _search_and_wait(page, lambda: card.locator(".similar-button").click(),
                              "GET", f"/similar/{card.get_attribute('data-id')}")
    assert httpx.URL(answer.url).params.get("tag") == "web picked"
    assert set(_card_values(page, "#results .result-card", "id")) <= chosen


def test_clicks_and_feedback_are_recorded(page):
    expect = _expect()
    page.fill("#text-query", "accordion")
    answer = _search_and_wait(page, lambda: page.click("#text-search-button"), "GET", "/search/text")
    query_id = answer.json()["query_id"]
    card = page.locator("#results .result-card").nth(1)
    image_id = card.get_attribute("data-id")
    with page.expect_response(_is("POST", "/click")) as click:
        card.locator(".thumb").click()
    assert click.value.ok and click.value.json()["recorded"] is True
    assert click.value.request.post_data_json == {"query_id": query_id, "id": image_id}
    expect(page.locator("#lightbox")).to_be_visible()
    expect(page.locator("#lightbox-caption")).to_have_text(card.get_attribute("data-path"))
    page.click("#lightbox-close")
    expect(page.locator("#lightbox")).to_be_hidden()

    with page.expect_response(_is("POST", "/feedback")) as feedback:
        card.locator(".feedback-down").click()
    assert feedback.value.ok
    assert feedback.value.request.post_data_json == {"query_id": query_id, "id": image_id,
                                                     "relevant": False}
    expect(card.locator(".feedback-down")).to_have_attribute("aria-pressed", "true")
    with page.expect_response(_is("POST", "/feedback")) as feedback:
        card.locator(".feedback-up").click()
    assert feedback.value.ok and feedback.value.request.post_data_json["relevant"] is True
    expect(card.locator(".feedback-up")).to_have_attribute("aria-pressed", "true")
    expect(card.locator(".feedback-down")).to_have_attribute("aria-pressed", "false")


def test_clusters_and_duplicates_side_by_side(page, api, tmp_path, collection):
    expect = _expect()
    clusters = api.get("/clusters").json()
    duplicates = api.get("/duplicates", params={"limit": 20}).json()
    assert clusters["clusters"] and duplicates["total"] >= 1
    page.click("#tab-curation")
    expect(page.locator("#clusters .cluster")).to_have_count(len(clusters["clusters"]))
    expect(page.locator("#duplicates .dup-group")).to_have_count(len(duplicates["groups"]))
    grouped = sum(c["size"] for c in clusters["clusters"])
    summary = f"{len(clusters['clusters'])} clusters of {grouped} images · " + (
        f"{clusters['noise']} image{'s' if clusters['noise'] != 1 else ''} in no cluster"
        if clusters["noise"] else "every image is in one")
    expect(page.locator("#clusters-summary")).to_have_text(summary)
    expect(page.locator("#gallery-view")).to_be_hidden()
    left, right = page.locator("#clusters").bounding_box(), page.locator("#duplicates").bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 100
    assert _thumbnails_loaded(page, "#clusters .examples img")
    group = [i["path"] for i in duplicates["groups"][0]["images"]]
    assert set(DUPLICATE) <= {p for g in duplicates["groups"] for p in (i["path"] for i in g["images"])}
    assert _card_values(page, "#duplicates .dup-group >> nth=0 >> .card", "path") == group
    assert _thumbnails_loaded(page, "#duplicates img")

    first = clusters["clusters"][0]
    row = page.locator(f"#clusters .cluster[data-label='{first['label']}']")
    if first["suggested_name"]:
        expect(row.locator(".suggested")).to_contain_text(first["suggested_name"])
    with page.expect_response(lambda r: httpx.URL(r.url).path == f"/clusters/{first['label']}"):
        row.locator(".cluster-open").click()
    members = api.get(f"/clusters/{first['label']}", params={"limit": 60}).json()
    expect(page.locator("#cluster-members .card")).to_have_count(len(members["images"]))
    assert _card_values(page, "#cluster-members .card", "id") == [i["id"] for i in members["images"]]
    # The members open in place of the list, on screen, with a way back.
    expect(page.locator("#clusters")).to_be_hidden()
    expect(page.locator("#cluster-members-view")).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / "cluster_members.png"))
    page.click("#clusters-back")
    expect(page.locator("#cluster-members-view")).to_be_hidden()
    expect(row).to_be_in_viewport()

    if not first["suggested_name"]:
        row.locator(".cluster-name").fill("web cluster")
    _sign_in(page, collection["key"])
    with page.expect_response(_is("POST", f"/clusters/{first['label']}/tag")) as accepted:
        row.locator(".accept-name").click()
    assert accepted.value.ok
    name = accepted.value.json()["tag"]
    assert name == (first["suggested_name"] or "web cluster")
    tagged = api.get("/gallery", params={"tag": name, "limit": 500}).json()
    assert {i["id"] for i in members["images"]} <= {i["id"] for i in tagged["images"]}
    expect(page.locator(f"#tag-filter option[value='{name}']")).to_have_text(
        f"{name} ({tagged['total']})")
    expect(page.locator("#status")).to_contain_text(f"Tagged cluster {first['label']}")
    # At once, without a reload: the cluster bears its new name, every count is of images (at
    # most the cluster's size), and its cards (here the examples' gallery cards) carry the tag.
    expect(row.locator(".suggested")).to_have_text(f"“{name}”")
    expect(row.locator(".candidates")).to_contain_text(f"{name} ({first['size']})")
    rows = page.eval_on_selector_all("#clusters .cluster", """rows => rows.map(r =>
        [Number(r.dataset.size), r.querySelector('.candidates')?.textContent || ''])""")
    for size, text in rows:
        assert all(int(n) <= size for n in re.findall(r"\((\d+)\)", text)), (size, text)
    row.locator(".cluster-open").click()
    expect(page.locator("#cluster-members .card .chip", has_text=name)).to_have_count(
        len(members["images"]))
    page.click("#clusters-back")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "web_page_curation.png"), full_page=True)


def test_keep_this_one_marks_the_rest_of_its_group(page, api, collection):
    expect = _expect()
    group = api.get("/duplicates", params={"limit": 1}).json()["groups"][0]
    assert group["kept_by"] == "rule" and group["keeper"] in {i["id"] for i in group["images"]}
    other = next(i for i in group["images"] if i["id"] != group["keeper"])
    page.click("#tab-curation")
    row = page.locator(f"#duplicates .dup-group[data-group='{group['group']}']")
    expect(row.locator(".card.keeper")).to_have_attribute("data-id", group["keeper"])
    expect(row.locator(".card.keeper [data-testid=keeper-label]")).to_have_text("keep · suggested")
    expect(row.locator("[data-testid=keep-button]")).to_have_count(group["size"] - 1)
    _sign_in(page, collection["key"])
    with page.expect_response(_is("POST", f"/duplicates/{group['group']}/keep")) as kept:
        row.locator(f".card[data-id='{other['id']}'] [data-testid=keep-button]").click()
    assert kept.value.ok and kept.value.json()["marked"] == group["size"] - 1
    expect(row.locator(".card.keeper")).to_have_attribute("data-id", other["id"])
    expect(row.locator(".card.keeper [data-testid=keeper-label]")).to_have_text("keep · your choice")
    marked = {i["id"] for i in api.get("/gallery", params={"tag": "duplicate", "limit": 500})
              .json()["images"]}
    assert marked == {i["id"] for i in group["images"]} - {other["id"]}
    expect(row.locator(".card.keeper .chip", has_text="duplicate")).to_have_count(0)
    after = api.get(f"/duplicates/{group['group']}").json()
    assert after["keeper"] == other["id"] and after["kept_by"] == "person"
    api.request("DELETE", "/tags", json={"ids": sorted(marked), "tag": "duplicate"},
                headers={"X-API-Key": collection["key"]}).raise_for_status()


def test_duplicates_across_two_parts_are_listed(page, api, collection):
    """A training split (tag `train`) and a test split (tag `test`): the resized copy in the test
    split is listed as a duplicate of its original in the training split; a part that names
    neither a tag nor a folder is refused with the reason."""
    expect = _expect()
    ids = {i["path"]: i["id"] for i in api.get("/gallery", params={"limit": 500}).json()["images"]}
    key = {"X-API-Key": collection["key"]}
    original, copy = ids[DUPLICATE[0]], ids[DUPLICATE[1]]
    others = sorted(i for p, i in ids.items() if p.startswith(CLASSES[0] + "/"))[:3]
    try:
        api.post("/tags", json={"ids": [original, *others], "tag": "train"}, headers=key).raise_for_status()
        api.post("/tags", json={"ids": [copy], "tag": "test"}, headers=key).raise_for_status()
        answer = api.get("/duplicates/between", params={"a": "train", "b": "test"}).json()
        assert [(f["path"], f["duplicates_path"], f["reason"]) for f in answer["files"]] == [
            (DUPLICATE[1], DUPLICATE[0], "a near-duplicate")]
        assert api.get("/duplicates/between", params={"a": "test", "b": "train"}).json()["total"] == 1
        unknown = api.get("/duplicates/between", params={"a": "train", "b": "no-such-part"})
        assert unknown.status_code == 422 and "neither a tag nor a folder" in unknown.text
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        page.click("#tab-curation")
        page.fill("#between-a", "train")
        page.fill("#between-b", "test")
        with page.expect_response(lambda r: "/duplicates/between" in r.url) as listed:
            page.click("#between-form button[type=submit]")
        assert listed.value.ok
        expect(page.locator("#between-list li")).to_have_count(1)
        expect(page.locator("#between-list li").first).to_have_attribute("data-path", DUPLICATE[1])
        expect(page.locator("#between-summary")).to_contain_text("duplicate an image of tag 'train'")
        page.fill("#between-b", "no-such-part")
        page.click("#between-form button[type=submit]")
        expect(page.locator("#error-text")).to_contain_text("neither a tag nor a folder")
        expect(page.locator("#between-list li")).to_have_count(0)
    finally:
        for tag, tagged in (("train", [original, *others]), ("test", [copy])):
            api.request("DELETE", "/tags", json={"ids": tagged, "tag": tag}, headers=key)


def test_api_errors_are_shown(page, collection):
    expect = _expect()
    with page.expect_response(_is("POST", "/search")) as answer:
        page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                    "buffer": b"this is not a picture"}])
    assert answer.value.status == 415  # the bytes decide, not the name or the declared type
    detail = answer.value.json()["detail"]
    assert "not a usable image" in detail
    status = page.locator("#status")
    expect(status).to_have_attribute("data-kind", "error")
    error = page.locator("#error-text")
    expect(error).to_have_text(f"Error 415: {detail}")
    expect(error).to_be_visible()
    # Nothing is previewed (no broken image); the page says the file is not an image.
    expect(page.locator("#preview-wrap")).to_be_hidden()
    expect(page.locator("#file-note")).to_have_text("notes.txt is not an image this browser can show.")
    page.click("#error-dismiss")
    expect(page.locator("#error-banner")).to_be_hidden()

    # A tag the service refuses: its reason is shown, not swallowed.
    _sign_in(page, collection["key"])
    page.locator("#gallery .card").first.locator(".select-box").check()
    page.fill("#tag-input", "x" * 120)
    with page.expect_response(_is("POST", "/tags")) as refused:
        page.click("#tag-selected-button")
    assert refused.value.status == 422
    expect(error).to_have_text("Error 422: tag: a tag is 1 to 100 printable characters, got "
                               f"'{'x' * 120}'")


def test_private_reads_ask_for_the_key_and_still_show_images(browser, collection):
    """With `public_reads: false` the page asks for the key at once, then shows the gallery with
    its thumbnails fetched with the key (an <img> cannot send one)."""
    expect = _expect()
    settings = collection["settings"]
    private = settings.model_copy(update={"serving": settings.serving.model_copy(
        update={"public_reads": False})})
    serving = _serve(collection["home"], private)
    base = next(serving)
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=base)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.goto(f"/?page_size={PAGE_SIZE}")
        expect(page.locator("#api-key-form")).to_be_visible()
        assert httpx.get(f"{base}/gallery").status_code == 401
        page.fill("#api-key-input", collection["key"])
        page.click("#api-key-submit")
        page.wait_for_selector("body[data-ready=true]")
        expect(page.locator("#gallery .card")).to_have_count(PAGE_SIZE)
        page.wait_for_function("""() => {
            const imgs = [...document.querySelectorAll('#gallery img')];
            return imgs.length > 0 && imgs.every(i => i.src.startsWith('blob:') && i.complete
                                                      && i.naturalWidth > 0);
        }""")
        context.close()
    finally:
        next(serving, None)


def test_a_card_says_when_its_original_is_gone(page, collection):
    """An original moved away after indexing: its gallery card says so instead of a broken
    thumbnail, and the page shows no error for it; back in place, the card is whole again."""
    expect = _expect()
    first = page.locator("#gallery .card").first
    moved = collection["images"] / first.get_attribute("data-path")
    aside = moved.with_name(f".{moved.name}.aside")  # hidden: not part of the source
    moved.rename(aside)
    try:
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        card = page.locator(f"#gallery .card[data-path='{first.get_attribute('data-path')}']")
        expect(card.get_by_test_id("original-gone")).to_have_text(
            "original moved or deleted since indexing")
        expect(page.locator("#gallery [data-testid=original-gone]")).to_have_count(1)
        assert page.locator("#status").get_attribute("data-kind") != "error"
        page.screenshot(path=str(ARTIFACTS / "original_gone.png"))
    finally:
        aside.rename(moved)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#gallery [data-testid=original-gone]")).to_have_count(0)


def test_a_selection_belongs_to_its_view_and_a_tag_covers_folded_duplicates(page, api, collection):
    """Tagging a folded card tags its whole group, says so, and shows the chips on every card of
    those images at once; a selection lives in its view, and the bar is idle without one."""
    expect = _expect()
    _sign_in(page, collection["key"])
    bar, count = page.locator("#selection-bar"), page.locator("#selection-count")
    expect(bar).to_have_attribute("data-state", "empty")
    for control in ("#tag-input", "#tag-selected-button", "#untag-selected-button"):
        expect(page.locator(control)).to_be_disabled()
    _search_and_wait(page, lambda: page.set_input_files(
        "#file-input", collection["images"] / DUPLICATE[0]), "POST", "/search")
    top = page.locator("#results .result-card").first
    expect(top).to_have_attribute("data-path", DUPLICATE[0])
    group = {top.get_attribute("data-id"), top.locator(".dup-item").get_attribute("data-id")}
    top.locator(".select-box").check()
    expect(count).to_have_text("1 selected in the results (+1 near-duplicate)")
    expect(bar).to_have_attribute("data-state", "active")
    page.fill("#tag-input", "web group")
    with page.expect_response(_is("POST", "/tags")) as tagged:
        page.click("#tag-selected-button")
    assert tagged.value.ok and set(tagged.value.request.post_data_json["ids"]) == group
    expect(page.locator("#status")).to_contain_text(
        "Tagged 2 images (1 card + 1 near-duplicate) “web group”")
    # In place, no reload: the result card, its folded near-duplicate and both gallery cards.
    expect(top.locator(":scope > .tags .chip", has_text="web group")).to_have_count(1)
    top.locator(".dup-badge").click()
    expect(top.locator(".dup-item .chip", has_text="web group")).to_have_count(1)
    expect(page.locator("#gallery .card .chip", has_text="web group")).to_have_count(2)
    tagged_ids = api.get("/gallery", params={"tag": "web group"}).json()["images"]
    assert {i["id"] for i in tagged_ids} == group
    page.screenshot(path=str(ARTIFACTS / "selection_tags.png"))

    # Removing takes the tag off the whole group too, and the chips go at once.
    with page.expect_response(_is("DELETE", "/tags")) as removed:
        page.click("#untag-selected-button")
    assert removed.value.ok and removed.value.json()["removed"] == 2
    expect(page.locator("#status")).to_contain_text(
        "Removed “web group” from 2 images (1 card + 1 near-duplicate)")
    expect(page.locator(".chip", has_text="web group")).to_have_count(0)

    # Selecting in the gallery starts a selection there: the results' one is no longer on.
    page.locator("#gallery .card").nth(2).locator(".select-box").check()
    expect(count).to_have_text("1 selected in the gallery")
    expect(page.locator("#results .select-box:checked")).to_have_count(0)
    # Another gallery page is another view: its selection goes with it.
    page.click("#gallery-next")
    expect(count).to_have_text("Nothing selected: tick cards to tag them")
    # A new search does not carry the results' selection over to cards nobody has seen.
    top.locator(".select-box").check()
    expect(count).to_contain_text("1 selected in the results")
    page.fill("#text-query", "pizza")
    _search_and_wait(page, lambda: page.click("#text-search-button"), "GET", "/search/text")
    expect(count).to_have_text("Nothing selected: tick cards to tag them")
    expect(page.locator(".select-box:checked")).to_have_count(0)
    expect(page.locator("#tag-selected-button")).to_be_disabled()
    expect(bar).to_have_attribute("data-state", "empty")


def test_the_query_panel_shows_what_the_results_answer(page, collection):
    """The upload, then a text, then an image of the collection: the page shows the query that
    the results on screen answer, and the sidebar keeps no stale upload or crop box."""
    expect = _expect()
    _search_and_wait(page, lambda: page.set_input_files(
        "#file-input", collection["images"] / LARGE[1]), "POST", "/search")
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#query-kind")).to_have_text("Your image")

    page.fill("#text-query", "pizza")
    _search_and_wait(page, lambda: page.click("#text-search-button"), "GET", "/search/text")
    expect(page.locator("#query-panel")).to_have_attribute("data-kind", "text")
    expect(page.locator("#query-kind")).to_have_text("Text")
    expect(page.locator("#results-title")).to_contain_text("“pizza”")
    expect(page.locator("#query-media")).to_be_hidden()
    expect(page.locator("#preview-wrap")).to_be_hidden()
    expect(page.locator("#file-name")).to_have_text("No image chosen")
    expect(page.locator("#search-button")).to_be_disabled()

    card = page.locator("#gallery .card").nth(4)
    image_id, path = card.get_attribute("data-id"), card.get_attribute("data-path")
    _search_and_wait(page, lambda: card.locator(".similar-button").click(),
                     "GET", f"/similar/{image_id}")
    expect(page.locator("#query-kind")).to_have_text("Images like")
    expect(page.locator("#results-title")).to_contain_text(path)
    query_image = page.locator("#query-media img")
    expect(query_image).to_be_visible()
    assert f"/images/{image_id}/thumbnail" in query_image.get_attribute("src")
    assert _thumbnails_loaded(page, "#query-media img")
    expect(page.locator("#text-query")).to_have_value("")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "query_similar.png"))


def _with_floor(page, matches: int) -> None:
    """Answer text searches as the service does, plus a match floor that `matches` results
    reach (the page must not depend on whether the service sends one yet)."""
    def handle(route):
        response = route.fetch()
        body = response.json()
        scores = [r["score"] for r in body["results"]]
        floor = scores[matches - 1] if matches else max(scores) + 0.01
        for n, result in enumerate(body["results"]):  # by position: scores may tie
            result["match"] = n < matches
        body["relevance"] = {"floor": floor, "matches": matches, "method": "test"}
        route.fulfill(response=response, json=body)
    page.unroute("**/search/text*")
    page.route("**/search/text*", handle)


def test_weaker_results_come_after_a_break_below_the_match_floor(page):
    expect = _expect()
    page.fill("#text-query", "sunflower")
    _with_floor(page, 3)
    answer = _search_and_wait(page, lambda: page.click("#text-search-button"), "GET", "/search/text")
    total = len(answer.json()["results"])
    brk = page.get_by_test_id("weak-break")
    floor = answer.json()["results"][2]["score"]
    expect(brk).to_contain_text(f"Weaker results — below this collection's match floor {floor:.2f}")
    expect(page.locator("#results > .result-card")).to_have_count(3)
    weak = page.locator("#results .weak-results .result-card")
    expect(weak).to_have_count(total - 3)
    expect(weak.first).to_be_visible()  # shown, dimmed, after the break; one click folds them
    page.get_by_test_id("weak-toggle").click()
    expect(page.get_by_test_id("weak-results")).to_be_hidden()
    expect(page.get_by_test_id("weak-toggle")).to_have_text(f"Show {total - 3} weaker results")
    page.get_by_test_id("weak-toggle").click()
    assert float(weak.first.evaluate("c => getComputedStyle(c).opacity")) < 1  # dimmed
    assert page.locator("#results").evaluate(  # the break sits between strong and weak
        "r => r.querySelector('.weak-break').previousElementSibling.dataset.rank") == "3"
    page.screenshot(path=str(ARTIFACTS / "weaker_results.png"), full_page=True)

    # Nothing reaches the floor: say so, and still show the closest images.
    _with_floor(page, 0)
    _search_and_wait(page, lambda: page.click("#text-search-button"), "GET", "/search/text")
    expect(page.get_by_test_id("nothing-matched")).to_contain_text("Nothing matched well")
    expect(page.locator("#results .weak-results .result-card").first).to_be_visible()
    expect(page.locator("#results .result-card")).to_have_count(total)

    # An answer without the fields (a service from before them): no break.
    def without(route):
        response = route.fetch()
        body = response.json()
        body.pop("relevance", None)
        for result in body["results"]:
            result.pop("match", None)
        route.fulfill(response=response, json=body)
    page.unroute("**/search/text*")
    page.route("**/search/text*", without)
    _search_and_wait(page, lambda: page.click("#text-search-button"), "GET", "/search/text")
    expect(brk).to_have_count(0)
    expect(page.locator("#results > .result-card")).to_have_count(total)
    page.unroute("**/search/text*")

    # End to end, the service's own floor: a query about nothing in the collection.
    page.fill("#text-query", "zebra crossing in the rain")
    real = _search_and_wait(page, lambda: page.click("#text-search-button"),
                            "GET", "/search/text").json()
    relevance = real["relevance"]
    assert relevance["floor"] is not None and relevance["matches"] == 0, relevance
    expect(page.locator("#results > .result-card")).to_have_count(0)
    expect(page.get_by_test_id("nothing-matched")).to_contain_text(
        f"match floor {relevance['floor']:.2f}")
    expect(page.locator("#results .weak-results .result-card")).to_have_count(
        len(real["results"]))
    expect(page.locator("#status")).to_contain_text("0 above the match floor")
    page.screenshot(path=str(ARTIFACTS / "nothing_matched.png"))


def test_a_phone_width_screen(browser, service):
    """390 px wide: no horizontal scroll, a compact header, errors in a dismissible banner under
    it (never covering it)."""
    expect = _expect()
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=service,
                                  is_mobile=True, has_touch=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"/?page_size={PAGE_SIZE}")
    page.wait_for_selector("body[data-ready=true]")
    no_sideways = "document.documentElement.scrollWidth <= window.innerWidth"
    page.fill("#text-query", "accordion")
    _search_and_wait(page, lambda: page.click("#text-search-button"), "GET", "/search/text")
    assert page.evaluate(no_sideways)
    with page.expect_response(_is("POST", "/search")):
        page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                    "buffer": b"this is not a picture"}])
    banner, header = page.locator("#error-banner"), page.locator(".topbar")
    expect(banner).to_be_visible()
    expect(page.locator("#error-text")).to_contain_text("not a usable image")
    top, under = header.bounding_box(), banner.bounding_box()
    assert top["height"] <= 56, top  # one compact line
    assert under["y"] >= top["y"] + top["height"] - 1, (top, under)
    assert page.evaluate(no_sideways)
    page.screenshot(path=str(ARTIFACTS / "phone_390x844.png"))
    page.click("#error-dismiss")
    expect(banner).to_be_hidden()
    page.click("#tab-curation")
    expect(page.locator("#clusters .cluster").first).to_be_visible()
    assert page.evaluate(no_sideways)
    context.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory: pytest.TempPathFactory):
    """The demo corpus through the pipeline with its default settings, served."""
    from vsearch_pipeline.core.demo import build_demo_corpus

    root = tmp_path_factory.mktemp("demo-web")
    images, _ = build_demo_corpus(root / "demo")
    (images / "odd").mkdir()  # an image like none of the photos: an outlier of the clusters
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / "odd" / "noise.png")
    home = root / "home"
    settings = load_settings(home, {"source": {"uri": str(images)}})
    assert run_pipeline(home, settings, say=print)["success"]
    yield from _serve(home, settings)


def test_the_demo_duplicates_tab_shows_one_group_per_photo(browser, demo_service):
    """17 photos, each with its eight edits (crops, a quarter, mirrors, turns, re-encodes): one
    group per photo, none mixing two photos (and the noise image in none)."""
    from vsearch_pipeline.core.demo import PHOTOS

    expect = _expect()
    with httpx.Client(base_url=demo_service, timeout=60) as client:
        answer = client.get("/duplicates", params={"limit": 50}).json()
    folders = [{i["path"].split("/")[0] for i in g["images"]} for g in answer["groups"]]
    assert answer["total"] == len(PHOTOS) == 17 and all(len(f) == 1 for f in folders)
    # one edit may stay out: the quarter of the text photo (README, Partial copies)
    assert sum(len(g["images"]) for g in answer["groups"]) >= 17 * 9 - 1
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=demo_service)
    page = context.new_page()
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    page.click("#tab-curation")
    expect(page.locator("#duplicates-summary")).to_have_text("17 groups")
    expect(page.locator("#duplicates .dup-group")).to_have_count(17)
    first = _card_values(page, "#duplicates .dup-group >> nth=0 >> .card", "path")
    assert len({p.split("/")[0] for p in first}) == 1 and len(first) == 9
    context.close()


def test_the_demo_outliers_are_their_own_short_list(browser, demo_service):
    """Clusters cover the demo; what stays out (the noise image, at least) is listed by "Show
    the outliers" in the page, the same images as `/clusters/-1`."""
    expect = _expect()
    with httpx.Client(base_url=demo_service, timeout=60) as client:
        summary = client.get("/clusters").json()
        outliers = client.get("/clusters/-1").json()
    assert 0 < summary["noise"] <= 0.1 * (summary["noise"] + sum(c["size"] for c in summary["clusters"]))
    assert outliers["size"] == summary["noise"] == len(outliers["images"])
    assert "odd/noise.png" in {i["path"] for i in outliers["images"]}
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=demo_service)
    page = context.new_page()
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    page.click("#tab-curation")
    button = page.locator("#outliers-open")
    noun = "outlier" if summary["noise"] == 1 else "outliers"
    expect(button).to_have_text(f"Show the {summary['noise']} {noun}")
    button.click()
    expect(page.locator("#cluster-members-title")).to_contain_text("Outliers, like no cluster's images")
    expect(page.locator("#cluster-members .card")).to_have_count(summary["noise"])
    assert _card_values(page, "#cluster-members .card", "id") == [i["id"] for i in outliers["images"]]
    context.close()

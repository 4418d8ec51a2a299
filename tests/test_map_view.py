"""The collection map (serving/web/map.js), driven in headless Chromium (software rendering) on a
static harness page: 100,000 generated points in 50 Gaussian blobs, 50 categories, thumbnails made
up on the fly by the test's own HTTP server. Frame times while panning and zooming, thumbnails once
zoomed in, box and lasso selection against the same sets computed here, the hover card, the legend,
and the canvas's size following its container and devicePixelRatio."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]
MAP_JS = REPO / "serving" / "web" / "map.js"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("VSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH, HEIGHT = 1200, 800  # the viewport, and the map's container, in CSS pixels
POINTS = 100_000
BLOBS = 50
NAMES = [f"class {k:02d}" for k in range(BLOBS)]
THUMB = re.compile(r"^/thumb/p(\d+)\.png$")
MAX_THUMBNAILS = 400  # map.js draws thumbnails only below this many points in view
HOVER_PX = 8
TIMEOUT_MS = 30_000

HARNESS = """<!doctype html>
<html><head><meta charset="utf-8"><title>map harness</title>
<style>html, body { margin: 0; height: 100%; }
#map { position: absolute; left: 0; top: 0; width: __W__px; height: __H__px; }</style>
</head><body><div id="map"></div>
<script src="/map.js"></script>
<script>
"use strict";
window.calls = { selected: [], opened: [], selectMs: [] };
// Captured before the map's own handler: how long a selection takes from the button's release.
window.addEventListener("pointerup", () => { window.releasedAt = performance.now(); }, true);
(async () => {
  const names = __NAMES__;
  const [xy, cat] = await Promise.all(["/points.f32", "/category.i32"].map(
    (url) => fetch(url).then((r) => r.arrayBuffer())));
  const n = xy.byteLength / 8;
  const x = new Float32Array(xy, 0, n);
  const y = new Float32Array(xy, 4 * n, n);
  const category = new Int32Array(cat);
  const ids = Array.from({ length: n }, (_, i) => `p${i}`);
  const started = performance.now();
  window.map = VsearchMap.mount(document.getElementById("map"), {
    thumbnailUrl: (id) => `/thumb/${id}.png`,
    caption: (id, i) => `${id} · ${names[category[i]] ?? "none"}`,
    onSelect: (chosen) => {
      calls.selectMs.push(performance.now() - window.releasedAt);
      calls.selected.push(chosen);
    },
    onOpen: (id) => calls.opened.push(id),
  });
  map.setPoints({ ids, x, y });
  map.setColours({ category, names });
  window.mountMs = performance.now() - started;
  document.body.dataset.ready = "true";
})().catch((error) => { document.body.dataset.ready = "error"; throw error; });
</script></body></html>
"""

# Frame timestamps from requestAnimationFrame, and the map's own render times, until stopped.
FRAME_PROBE = """() => {
  const probe = window.probe = { times: [], renders: [], running: true, seen: map.stats().frames };
  const tick = (t) => {
    probe.times.push(t);
    const stats = map.stats();
    if (stats.frames !== probe.seen) probe.renders.push(stats.lastFrameMs);
    probe.seen = stats.frames;
    if (probe.running) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


@pytest.fixture(scope="module")
def dataset() -> dict:
    """50 Gaussian blobs of unequal sizes in about [0, 100]^2, shuffled; the category is the blob,
    but for 3% of points that have none (-1)."""
    rng = np.random.default_rng(20240601)
    weights = rng.uniform(0.3, 1.7, BLOBS)
    sizes = rng.multinomial(POINTS, weights / weights.sum())
    centres = rng.uniform(0, 100, (BLOBS, 2))
    spread = rng.uniform(1.0, 3.5, BLOBS)
    labels = np.repeat(np.arange(BLOBS), sizes)
    xy = centres[labels] + rng.normal(size=(POINTS, 2)) * spread[labels, None]
    order = rng.permutation(POINTS)
    xy, labels = xy[order].astype(np.float32), labels[order].astype(np.int32)
    category = np.where(rng.random(POINTS) < 0.03, -1, labels).astype(np.int32)
    return {"x": xy[:, 0].copy(), "y": xy[:, 1].copy(), "category": category}


def thumb_colour(i: int) -> tuple[int, int, int]:
    return (i * 67) % 200 + 40, (i * 131) % 200 + 30, (i * 29) % 200 + 40


def thumbnail_png(i: int) -> bytes:
    """80x64 (not square: the map crops the middle), one colour, a dark band along the top."""
    image = Image.new("RGB", (80, 64), thumb_colour(i))
    image.paste((30, 30, 30), (0, 0, 80, 10))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class Site:
    """What the test server serves, and which thumbnails it was asked for."""

    def __init__(self, dataset: dict) -> None:
        html = HARNESS.replace("__W__", str(WIDTH)).replace("__H__", str(HEIGHT))
        self.files = {
            "/": ("text/html; charset=utf-8", html.replace("__NAMES__", json.dumps(NAMES)).encode()),
            "/points.f32": ("application/octet-stream",
                            dataset["x"].tobytes() + dataset["y"].tobytes()),
            "/category.i32": ("application/octet-stream", dataset["category"].tobytes()),
        }
        self.thumbnails: list[str] = []
        self.lock = threading.Lock()
        self.held: dict[int, threading.Event] = {}  # thumbnails answered only once set

    def answer(self, path: str) -> tuple[str, bytes] | None:
        if path == "/map.js":
            return "text/javascript; charset=utf-8", MAP_JS.read_bytes()
        match = THUMB.match(path)
        if match:
            i = int(match.group(1))
            with self.lock:
                self.thumbnails.append(path)
            if i in self.held:
                self.held[i].wait(TIMEOUT_MS / 1000)
            return ("image/png", thumbnail_png(i)) if i < POINTS else None
        return self.files.get(path)


@pytest.fixture(scope="module")
def site(dataset: dict):
    """The harness, the data, map.js and the thumbnails on 127.0.0.1 at a free port."""
    content = Site(dataset)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = content.answer(self.path.split("?")[0])
            if found is None:
                self.send_error(404)
                return
            kind, body = found
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="map-harness", daemon=True)
    thread.start()
    content.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield content
    for event in content.held.values():
        event.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


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


def open_map(browser, site: Site, scale: float = 1):
    """A fresh context showing the harness, ready; and the lists its errors and its requests
    outside the test server go to."""
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT},
                                  device_scale_factor=scale, base_url=site.base)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors, elsewhere = [], []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: None if request.url.startswith((site.base, "data:", "blob:"))
            else elsewhere.append(request.url))
    page.goto("/")
    page.wait_for_selector("body[data-ready]")
    assert page.get_attribute("body", "data-ready") == "true", errors
    with site.lock:
        site.thumbnails.clear()
    settle(page)
    return context, page, errors, elsewhere


@pytest.fixture
def page(browser, site: Site):
    context, page, errors, elsewhere = open_map(browser, site)
    yield page
    context.close()
    assert not errors, errors
    assert not elsewhere, f"the map asked for things outside the test server: {elsewhere}"


def settle(page) -> None:
    """Until two animation frames have passed: whatever was pending is drawn."""
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")


def view_of(page) -> dict:
    return page.evaluate("map.view()")


def to_layout(view: dict, sx, sy):
    """Screen (CSS px from the canvas's top-left corner) to layout, as map.js documents it."""
    sx, sy = np.asarray(sx, dtype=np.float64), np.asarray(sy, dtype=np.float64)
    return view["x"] + (sx - WIDTH / 2) / view["scale"], view["y"] - (sy - HEIGHT / 2) / view["scale"]


def to_screen(view: dict, x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return WIDTH / 2 + (x - view["x"]) * view["scale"], HEIGHT / 2 - (y - view["y"]) * view["scale"]


def in_polygon(x: np.ndarray, y: np.ndarray, polygon: list[tuple[float, float]]) -> np.ndarray:
    """The even-odd rule, edge by edge, the way map.js tests a point."""
    inside = np.zeros(len(x), dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for (xi, yi), (xj, yj) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
            straddles = (yi > y) != (yj > y)
            inside ^= straddles & (x < (xj - xi) * (y - yi) / (yj - yi) + xi)
    return inside


def inside_lasso(x: np.ndarray, y: np.ndarray, view: dict, corners: list[tuple[int, int]]) -> set[str]:
    """The ids of the points inside a lasso drawn through these screen corners."""
    lx, ly = to_layout(view, [c[0] for c in corners], [c[1] for c in corners])
    return ids_of(in_polygon(x, y, list(zip(lx, ly, strict=True))))


def ids_of(mask: np.ndarray) -> set[str]:
    return {f"p{i}" for i in np.flatnonzero(mask)}


def layout_xy(dataset: dict) -> tuple[np.ndarray, np.ndarray]:
    return dataset["x"].astype(np.float64), dataset["y"].astype(np.float64)


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def test_pan_and_zoom_stay_smooth_at_100k_points(page, dataset: dict) -> None:
    stats = page.evaluate("map.stats()")
    assert stats["points"] == POINTS
    assert stats["drawn"] == POINTS  # all of them in view, fitted
    fitted = view_of(page)
    mount_ms = page.evaluate("mountMs")

    page.mouse.move(600, 420)
    page.evaluate(FRAME_PROBE)
    for _ in range(15):
        page.mouse.wheel(0, -120)  # zoom in about the cursor
    page.mouse.down()
    page.mouse.move(900, 600, steps=25)  # pan
    page.mouse.up()
    for _ in range(10):
        page.mouse.wheel(0, 120)
    page.mouse.move(900, 650)
    page.mouse.down()
    page.mouse.move(350, 300, steps=25)
    page.mouse.up()
    for _ in range(10):
        page.mouse.wheel(0, -90)
    page.wait_for_timeout(200)
    probe = page.evaluate("probe.running = false, probe")
    moved = view_of(page)

    deltas = np.diff(probe["times"])
    renders = probe["renders"]
    figures = (f"map at {POINTS:,} points, {WIDTH}x{HEIGHT}, headless Chromium, software rendering: "
               f"{len(deltas)} frames, frame time median {np.median(deltas):.1f} ms, "
               f"p95 {percentile(deltas, 95):.1f} ms, max {deltas.max():.1f} ms; "
               f"{len(renders)} renders, render median {np.median(renders):.1f} ms, "
               f"p95 {percentile(renders, 95):.1f} ms, max {max(renders):.1f} ms; "
               f"mount (setPoints + setColours) {mount_ms:.0f} ms")
    print(figures)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "map_frame_times.txt").write_text(figures + "\n")
    assert moved["scale"] > fitted["scale"] * 3  # it zoomed in ...
    assert abs(moved["x"] - fitted["x"]) * moved["scale"] > 50  # ... and panned
    assert len(deltas) >= 50 and len(renders) >= 30  # and it drew all along
    assert percentile(deltas, 95) < 100, figures
    assert deltas.max() < 500, figures
    # The map's own work per frame: about 4 ms here; one arc() per point takes about 30.
    assert np.median(renders) < 20, figures

    page.get_by_test_id("map-reset").click()
    settle(page)
    assert view_of(page) == pytest.approx(fitted)
    legend = page.get_by_test_id("map-legend")
    assert legend.is_visible()
    assert legend.locator(".vmap-legend-row").count() == 12
    page.screenshot(path=str(ARTIFACTS / "map_overview.png"))


def test_zoomed_in_the_points_become_thumbnails(browser, site: Site, dataset: dict) -> None:
    x, y = layout_xy(dataset)
    nearest = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)[0][:, 1]
    target = int(np.argmax(nearest))  # the loneliest point: no other thumbnail over it
    site.held[target] = threading.Event()  # its thumbnail waits: its dot must stay meanwhile
    context, page, errors, elsewhere = open_map(browser, site)
    try:
        page.evaluate("([x, y]) => map.setView({x, y})", [float(x[target]), float(y[target])])
        page.locator("#map canvas").focus()
        for _ in range(80):  # "+" zooms about the middle, where the target is, exactly
            page.keyboard.press("+")
            settle(page)
            if site.thumbnails and nearest[target] * view_of(page)["scale"] > 120:
                break
        page.wait_for_function("map.stats().thumbnailsDrawn > 0")
        settle(page)
        stats = page.evaluate("map.stats()")
        assert 0 < stats["thumbnailsDrawn"] <= MAX_THUMBNAILS

        waiting = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        palette = page.evaluate("""(c) => {
            const swatch = [...document.querySelectorAll('.vmap-legend-row')]
              .find((row) => row.dataset.category === String(c));
            return swatch ? getComputedStyle(swatch.querySelector('.vmap-swatch')).backgroundColor : null;
        }""", int(dataset["category"][target]))
        dot = waiting.getpixel((WIDTH // 2, HEIGHT // 2))
        assert dot != thumb_colour(target)
        if palette:  # its category is in the legend: the dot is drawn in the swatch's colour
            assert f"rgb({dot[0]}, {dot[1]}, {dot[2]})" == palette

        site.held[target].set()
        page.wait_for_function(
            "([x, y, c]) => { const d = document.querySelector('#map canvas').getContext('2d')"
            ".getImageData(x, y, 1, 1).data; return Math.abs(d[0] - c[0]) + Math.abs(d[1] - c[1])"
            " + Math.abs(d[2] - c[2]) < 24; }",
            arg=[WIDTH // 2, HEIGHT // 2, list(thumb_colour(target))])
        shown = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        assert np.abs(np.subtract(shown.getpixel((WIDTH // 2, HEIGHT // 2)),
                                  thumb_colour(target))).sum() < 24
        with site.lock:
            asked = list(site.thumbnails)
        stats = page.evaluate("map.stats()")
        print(f"thumbnails: {stats['thumbnailsDrawn']} drawn, {len(asked)} requests "
              f"({len(set(asked))} distinct), view {view_of(page)}")
        assert f"/thumb/p{target}.png" in asked
        assert stats["thumbnailsDrawn"] > 0
        assert len(asked) <= MAX_THUMBNAILS + 2  # at most those in view (and the hover card's)
        assert len(set(asked)) >= stats["thumbnailsDrawn"]

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "map_thumbnails.png"))
    finally:
        site.held.pop(target).set()
        context.close()
    assert not errors, errors
    assert not elsewhere, elsewhere


def drag_polygon(page, polygon: list[tuple[int, int]]) -> None:
    """A lasso through these corners: one move to each, so its polygon is exactly them."""
    page.mouse.move(*polygon[0])
    page.mouse.down()
    for corner in polygon[1:]:
        page.mouse.move(*corner)
    page.mouse.up()


def test_box_and_lasso_select_exactly_the_points_inside(page, dataset: dict) -> None:
    x, y = layout_xy(dataset)
    view = view_of(page)

    page.get_by_test_id("map-mode-box").click()
    assert page.get_by_test_id("map-mode-box").get_attribute("aria-pressed") == "true"
    page.mouse.move(350, 300)
    page.mouse.down()
    page.mouse.move(650, 520, steps=8)
    page.mouse.up()
    (x0, x1), (y1, y0) = to_layout(view, [350, 650], [300, 520])
    boxed = ids_of((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))
    assert len(boxed) > 1000
    assert set(page.evaluate("map.selected()")) == boxed
    assert set(page.evaluate("calls.selected.at(-1)")) == boxed

    page.get_by_test_id("map-mode-lasso").click()
    first = [(700, 250), (950, 300), (1000, 560), (820, 650), (690, 480)]
    drag_polygon(page, first)
    lassoed = inside_lasso(x, y, view, first)
    assert len(lassoed) > 1000
    assert set(page.evaluate("map.selected()")) == lassoed  # without Shift: instead of the box
    assert set(page.evaluate("calls.selected.at(-1)")) == lassoed

    second = [(120, 600), (300, 420), (420, 700), (260, 640)]
    page.keyboard.down("Shift")
    drag_polygon(page, second)
    page.keyboard.up("Shift")
    added = inside_lasso(x, y, view, second)
    assert added - lassoed
    assert set(page.evaluate("map.selected()")) == lassoed | added
    assert set(page.evaluate("calls.selected.at(-1)")) == lassoed | added
    settle(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "map_selection.png"))

    # A lasso around nearly everything: 100,000 point-in-polygon tests, no stall.
    angles = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    circle = [(int(600 + 560 * np.cos(a)), int(400 + 380 * np.sin(a))) for a in angles]
    drag_polygon(page, circle)
    everything = inside_lasso(x, y, view, circle)
    assert len(everything) > 0.9 * POINTS
    assert set(page.evaluate("map.selected()")) == everything
    select_ms = page.evaluate("calls.selectMs")
    print(f"selection time after release (ms): {[round(t, 1) for t in select_ms]}")
    assert max(select_ms) < 100

    # A click on empty space clears the selection.
    sx, sy = to_screen(view, x, y)
    corner = (15, HEIGHT - 15)
    assert np.hypot(sx - corner[0], sy - corner[1]).min() > 2 * HOVER_PX
    page.mouse.click(*corner)
    assert page.evaluate("map.selected()") == []
    assert page.evaluate("calls.selected.at(-1)") == []
    assert page.evaluate("calls.selected.length") == 5


def test_hover_shows_the_nearest_point_and_a_click_opens_it(page, site: Site, dataset: dict) -> None:
    x, y = layout_xy(dataset)
    view = view_of(page)
    sx, sy = to_screen(view, x, y)
    on_canvas = (sx > 20) & (sx < WIDTH - 20) & (sy > 20) & (sy < HEIGHT - 20)
    for overlay in ("map-legend", "[role=toolbar]"):  # points under these cannot be hovered
        box = page.locator(f"[data-testid={overlay}]" if "[" not in overlay else overlay).bounding_box()
        on_canvas &= ~((sx > box["x"] - 200) & (sx < box["x"] + box["width"] + 200)
                       & (sy > box["y"] - 200) & (sy < box["y"] + box["height"] + 200))
    nearest = cKDTree(np.c_[sx, sy]).query(np.c_[sx, sy], k=2)[0][:, 1]
    lonely = int(np.argmax(np.where(on_canvas, nearest, 0)))
    mouse = (round(float(sx[lonely])), round(float(sy[lonely])))
    distance = np.hypot(sx - mouse[0], sy - mouse[1])
    expected = int(np.argmin(distance))
    assert distance[expected] <= HOVER_PX

    page.mouse.move(*mouse)
    card = page.get_by_test_id("map-hover")
    assert card.is_visible()
    name = NAMES[dataset["category"][expected]] if dataset["category"][expected] >= 0 else "none"
    assert card.inner_text().strip() == f"p{expected} · {name}"
    assert card.locator("img").get_attribute("src") == f"/thumb/p{expected}.png"
    page.wait_for_function("document.querySelector('[data-testid=map-hover] img').naturalWidth > 0")
    assert f"/thumb/p{expected}.png" in site.thumbnails
    assert_inside(card.bounding_box(), mouse)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "map_hover.png"))

    page.mouse.click(*mouse)
    assert page.evaluate("calls.opened") == [f"p{expected}"]

    # In the thick of the blobs: whichever point is nearest the cursor, as a full scan finds it.
    for i in np.random.default_rng(3).choice(np.flatnonzero(on_canvas), 5, replace=False):
        mouse = (round(float(sx[i])) + 2, round(float(sy[i])) - 1)
        nearest_now = int(np.argmin(np.hypot(sx - mouse[0], sy - mouse[1])))
        page.mouse.move(*mouse)
        assert card.inner_text().strip().split(" · ")[0] == f"p{nearest_now}"

    # The point furthest right and down: the card flips to stay inside the map.
    corner = int(np.argmax(np.where(on_canvas, sx + sy, -np.inf)))
    mouse = (round(float(sx[corner])), round(float(sy[corner])))
    page.mouse.move(*mouse)
    assert card.is_visible()
    assert_inside(card.bounding_box(), mouse)

    page.mouse.move(15, HEIGHT - 15)  # nothing there
    assert not card.is_visible()


def assert_inside(box: dict, mouse: tuple[int, int]) -> None:
    assert box["x"] >= 0 and box["y"] >= 0
    assert box["x"] + box["width"] <= WIDTH and box["y"] + box["height"] <= HEIGHT
    right, below = box["x"] > mouse[0], box["y"] > mouse[1]
    near_x = box["x"] - mouse[0] if right else mouse[0] - (box["x"] + box["width"])
    near_y = box["y"] - mouse[1] if below else mouse[1] - (box["y"] + box["height"])
    assert 0 <= near_x <= 40 and 0 <= near_y <= 40, (box, mouse)  # beside the cursor, not on it


def legend_rows(page) -> list[tuple[str, int]]:
    rows = page.get_by_test_id("map-legend").locator(".vmap-legend-row")
    return [(row.locator(".vmap-legend-name").inner_text(),
             int(row.locator(".vmap-legend-count").inner_text().replace(",", "")))
            for row in rows.all()]


def test_legend_shows_the_largest_categories_and_follows_set_colours(page, dataset: dict) -> None:
    category = dataset["category"]
    counts = np.bincount(category[category >= 0], minlength=BLOBS)
    largest = sorted(range(BLOBS), key=lambda c: (-counts[c], c))[:12]
    assert legend_rows(page) == [(NAMES[c], int(counts[c])) for c in largest]
    legend = page.get_by_test_id("map-legend")
    assert "+ 38 more categories" in legend.inner_text()

    side = np.where(dataset["x"] < 40, 0, 1).astype(np.int32)
    side[::10] = -1
    page.evaluate("c => map.setColours({category: c, names: ['west', 'east']})", side.tolist())
    west, east = int((side == 0).sum()), int((side == 1).sum())
    assert legend_rows(page) == sorted([("west", west), ("east", east)], key=lambda r: -r[1])
    assert "class" not in legend.inner_text() and "more" not in legend.inner_text()
    assert page.get_by_test_id("map-legend").locator(".vmap-swatch").count() == 2


def test_canvas_follows_its_container_and_the_pixel_ratio(browser, site: Site) -> None:
    context, page, errors, elsewhere = open_map(browser, site, scale=2)
    try:
        canvas = "document.querySelector('#map canvas')"
        assert page.evaluate(f"[{canvas}.width, {canvas}.height]") == [2 * WIDTH, 2 * HEIGHT]
        fitted = view_of(page)
        renders = []
        for step in range(10):  # a frame at 4 times the pixels
            page.evaluate("s => map.setView({x: map.view().x + s})", 0.5 if step % 2 else -0.5)
            settle(page)
            renders.append(page.evaluate("map.stats().lastFrameMs"))
        print(f"render at devicePixelRatio 2 ({2 * WIDTH}x{2 * HEIGHT}): median "
              f"{np.median(renders):.1f} ms, max {max(renders):.1f} ms")
        assert np.median(renders) < 100
        assert view_of(page) == pytest.approx(fitted)
        page.evaluate("document.getElementById('map').style.width = '600px'")
        page.wait_for_function(f"{canvas}.width === 1200")
        settle(page)
        assert page.evaluate(f"{canvas}.height") == 2 * HEIGHT
        assert view_of(page) == pytest.approx(fitted)  # the same place, the same zoom
        assert page.evaluate("map.stats().drawn") < POINTS  # half of the map is out of view now

        page.locator("#map canvas").focus()
        page.keyboard.press("+")
        assert view_of(page)["scale"] == pytest.approx(fitted["scale"] * 1.25)
        page.keyboard.press("-")
        page.keyboard.press("-")
        assert view_of(page)["scale"] == pytest.approx(fitted["scale"] / 1.25)
        page.keyboard.press("0")  # refits to the narrower map
        assert view_of(page)["scale"] < fitted["scale"]

        page.evaluate("map.destroy()")
        assert page.locator("#map *").count() == 0
    finally:
        context.close()
    assert not errors, errors
    assert not elsewhere, elsewhere


SMALL_MAP = """async () => {
  const box = document.createElement("div");
  box.id = "small";
  box.style = "position: absolute; left: 0; top: 0; width: 500px; height: 360px; z-index: 5";
  document.body.append(box);
  window.fetched = [];
  window.small = VsearchMap.mount(box, {
    thumbnailUrl: (id) => `/thumb/${id}.png?size=64`,
    fetchImage: async (url) => {
      fetched.push(url);
      const answer = await fetch(url, { headers: { "X-API-Key": "not-checked-here" } });
      return answer.blob();
    },
  });
  small.setPoints({ ids: ["p1", "p2", "p3", "p4", "p5"], x: [0, 1, 2, 3, 4], y: [0, 1, 0, 1, 0] });
}"""


def test_thumbnails_can_come_through_fetch_image(page, site: Site) -> None:
    """Where images need an API key, fetchImage brings them: the canvas and the hover card both."""
    page.evaluate(SMALL_MAP)
    page.wait_for_function("small.stats().thumbnailsDrawn === 5")
    fetched = page.evaluate("fetched")
    assert sorted(fetched) == [f"/thumb/p{i}.png?size=64" for i in range(1, 6)]
    assert sorted(site.thumbnails) == [f"/thumb/p{i}.png" for i in range(1, 6)]

    view = page.evaluate("small.view()")
    sx = 250 + (4 - view["x"]) * view["scale"]  # p5 at (4, 0), in the 500x360 map
    sy = 180 - (0 - view["y"]) * view["scale"]
    page.mouse.move(round(sx), round(sy))
    card = page.locator("#small [data-testid=map-hover]")
    assert card.is_visible()
    assert card.inner_text().strip() == "p5"  # no caption option: the id
    image = card.locator("img")
    assert image.get_attribute("data-url") == "/thumb/p5.png?size=64"
    page.wait_for_function("document.querySelector('#small [data-testid=map-hover] img').naturalWidth > 0")
    assert image.get_attribute("src").startswith("blob:")
    assert len(page.evaluate("fetched")) == 5  # the card took the blob the map already had
    page.evaluate("small.destroy()")
    assert page.locator("#small *").count() == 0

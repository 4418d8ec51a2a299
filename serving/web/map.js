// map.js: a zoomable, pannable 2-D map of an image collection, drawn on one <canvas>.
//
// window.VsearchMap.mount(container, options) shows each image as a point at its layout position
// (x, y; y grows upward), coloured by category, with a legend, box and lasso selection, a hover
// card, and thumbnails in place of the dots once few enough points are in view.
//
// Why it draws the way it does: the map has to stay smooth at 100,000 points in Chromium with
// software rendering, where one arc() and fill() per point costs around 100 ms a frame. So the
// dots are written straight into a Uint32Array over an ImageData (a few pixels each) and put on
// the canvas in one call; only the thumbnails (a few hundred at most, by construction), the
// selection outline and the hover ring go through the 2-D context. Hover, box and lasso look
// points up in a uniform grid over the layout, so that none of them scans every point on each
// move. A frame is drawn only in requestAnimationFrame, at most one per frame, when something
// changed.
//
// The view: `scale` CSS pixels per layout unit, and (x, y) the layout point at the canvas centre:
//   screenX = width / 2 + (pointX - x) * scale,   screenY = height / 2 - (pointY - y) * scale
// (width and height: the canvas's size in CSS pixels, screen positions from its top-left corner).
"use strict";

(() => {
  const BACKGROUND = "#f8f9fb";
  const NO_CATEGORY = "#b4b8bf";
  const OUTLINE = "#111827";
  const ACCENT = "#2458d3";
  // A fixed qualitative palette: ten strong colours, then ten more; cycled past twenty.
  const PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#393b79", "#ad494a", "#637939", "#e7ba52", "#7b4173", "#3182bd", "#31a354",
    "#fd8d3c", "#843c39", "#de9ed7", "#6baed6",
  ];
  const LEGEND_ROWS = 12;
  const HOVER_RADIUS_PX = 8;
  const CLICK_SLOP_PX = 4;
  const MAX_THUMBNAILS = 400;       // thumbnails are drawn only when fewer points are in view
  const THUMB_MAX_PX = 96;
  const THUMB_SIZES = [96, 80, 64, 48];  // CSS px: the largest at which they spread out is used
  const THUMB_SPREAD = 0.7;         // spread out: this share of them at least has a cell to itself
  const MAX_BACKING_PIXELS = 8e6;   // about 4K: past it the canvas is upscaled, not drawn finer
  const CACHE_IMAGES = 512;         // decoded thumbnails kept (least recently drawn go first)
  const CONCURRENT_LOADS = 6;
  const WHEEL_ZOOM = 0.002;         // zoom factor per wheel pixel: exp(-deltaY * WHEEL_ZOOM)
  const KEY_ZOOM = 1.25;
  const ZOOM_OUT_LIMIT = 0.25;      // relative to the scale that fits all points
  const ZOOM_IN_LIMIT = 20000;

  const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  const NUMBER = new Intl.NumberFormat("en-US");

  // ---- colours -----------------------------------------------------------------------------

  function parseHex(hex) {
    const v = Number.parseInt(hex.slice(1), 16);
    return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
  }

  /** An opaque colour as one pixel of a Uint32Array over ImageData bytes (RGBA in memory). */
  function packRgb([r, g, b]) {
    return LITTLE_ENDIAN ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0
      : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
  }

  function blend(rgb, towards, amount) {
    return rgb.map((c, k) => Math.round(c + (towards[k] - c) * amount));
  }

  function categoryColour(category) {
    return category < 0 ? NO_CATEGORY : PALETTE[category % PALETTE.length];
  }

  // The same as pixels: NO_CATEGORY first, then the palette; and faded (for unselected points
  // while there is a selection).
  const BACKGROUND_RGB = parseHex(BACKGROUND);
  const SHADES = [NO_CATEGORY, ...PALETTE].map(parseHex);
  const PIXELS = Uint32Array.from(SHADES, packRgb);
  const FADED_PIXELS = Uint32Array.from(SHADES, (rgb) => packRgb(blend(rgb, BACKGROUND_RGB, 0.72)));

  function shadeIndex(category) {
    return category < 0 ? 0 : 1 + (category % PALETTE.length);
  }

  function clamp(value, lo, hi) {
    return Math.min(hi, Math.max(lo, value));
  }

  // ---- the spatial grid --------------------------------------------------------------------

  /** A uniform grid over the points' bounds, about 8 points a cell on average, built once per
   *  setPoints by a counting sort: cell c holds items[start[c] .. start[c + 1]). */
  class SpatialGrid {
    constructor(xs, ys, bounds) {
      this.xs = xs;
      this.ys = ys;
      this.minX = bounds.minX;
      this.minY = bounds.minY;
      const n = xs.length;
      const w = bounds.maxX - bounds.minX || bounds.maxY - bounds.minY || 1;
      const h = bounds.maxY - bounds.minY || w;
      const side = Math.sqrt((w * h) / Math.max(1, n / 8));
      this.cols = clamp(Math.ceil(w / side), 1, 2048);
      this.rows = clamp(Math.ceil(h / side), 1, 2048);
      this.cellW = w / this.cols;
      this.cellH = h / this.rows;
      this.fill(n);
    }

    fill(n) {
      const cells = this.cols * this.rows;
      const cellOf = new Int32Array(n);
      const start = new Int32Array(cells + 1);
      for (let i = 0; i < n; i++) {
        cellOf[i] = this.row(this.ys[i]) * this.cols + this.col(this.xs[i]);
        start[cellOf[i] + 1]++;
      }
      for (let c = 0; c < cells; c++) start[c + 1] += start[c];
      const next = start.slice(0, cells);
      const items = new Int32Array(n);
      for (let i = 0; i < n; i++) items[next[cellOf[i]]++] = i;
      this.start = start;
      this.items = items;
    }

    col(x) {
      return clamp(Math.floor((x - this.minX) / this.cellW), 0, this.cols - 1);
    }

    row(y) {
      return clamp(Math.floor((y - this.minY) / this.cellH), 0, this.rows - 1);
    }

    /** Calls visit(i) for each point in the rectangle (edges included) until it returns true. */
    inRect(x0, y0, x1, y1, visit) {
      const { xs, ys, items, start } = this;
      for (let r = this.row(y0), r1 = this.row(y1); r <= r1; r++) {
        for (let c = this.col(x0), c1 = this.col(x1); c <= c1; c++) {
          const cell = r * this.cols + c;
          for (let k = start[cell]; k < start[cell + 1]; k++) {
            const i = items[k];
            const x = xs[i];
            const y = ys[i];
            if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && visit(i)) return;
          }
        }
      }
    }

    /** The point nearest (x, y) within `radius`, or -1. */
    nearest(x, y, radius) {
      let best = -1;
      let bestD2 = radius * radius;
      this.inRect(x - radius, y - radius, x + radius, y + radius, (i) => {
        const d2 = (this.xs[i] - x) ** 2 + (this.ys[i] - y) ** 2;
        if (d2 <= bestD2) {
          best = i;
          bestD2 = d2;
        }
        return false;
      });
      return best;
    }

    /** The points inside a polygon ([x0, y0, x1, y1, ...], even-odd rule). Each grid row is
     *  tested only against the edges that reach into it, so a long lasso stays cheap. */
    inPolygon(poly) {
      const m = poly.length / 2;
      if (m < 3) return [];
      const [x0, y0, x1, y1] = polygonBounds(poly);
      const r0 = this.row(y0);
      const bands = this.edgesByRow(poly, r0, this.row(y1));
      const inside = [];
      bands.forEach((edges, k) => {
        if (edges.length) this.testRow(r0 + k, this.col(x0), this.col(x1), edges, poly, inside);
      });
      return inside;
    }

    edgesByRow(poly, r0, r1) {
      const bands = Array.from({ length: r1 - r0 + 1 }, () => []);
      const m = poly.length / 2;
      for (let e = 0; e < m; e++) {
        const ya = poly[2 * e + 1];
        const yb = poly[2 * ((e + 1) % m) + 1];
        const lo = Math.max(r0, this.row(Math.min(ya, yb)));
        const hi = Math.min(r1, this.row(Math.max(ya, yb)));
        for (let r = lo; r <= hi; r++) bands[r - r0].push(e);
      }
      return bands;
    }

    testRow(r, c0, c1, edges, poly, inside) {
      const { xs, ys, items, start } = this;
      const m = poly.length / 2;
      for (let c = c0; c <= c1; c++) {
        const cell = r * this.cols + c;
        for (let k = start[cell]; k < start[cell + 1]; k++) {
          const i = items[k];
          if (crossings(xs[i], ys[i], edges, poly, m) & 1) inside.push(i);
        }
      }
    }
  }

  /** How many of the given polygon edges a ray from (x, y) towards +x crosses. */
  function crossings(x, y, edges, poly, m) {
    let count = 0;
    for (const e of edges) {
      const xi = poly[2 * e];
      const yi = poly[2 * e + 1];
      const j = (e + 1) % m;
      const xj = poly[2 * j];
      const yj = poly[2 * j + 1];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) count++;
    }
    return count;
  }

  function polygonBounds(poly) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let k = 0; k < poly.length; k += 2) {
      x0 = Math.min(x0, poly[k]);
      x1 = Math.max(x1, poly[k]);
      y0 = Math.min(y0, poly[k + 1]);
      y1 = Math.max(y1, poly[k + 1]);
    }
    return [x0, y0, x1, y1];
  }

  function boundsOf(xs, ys) {
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    for (let i = 0; i < xs.length; i++) {
      minX = Math.min(minX, xs[i]);
      maxX = Math.max(maxX, xs[i]);
      minY = Math.min(minY, ys[i]);
      maxY = Math.max(maxY, ys[i]);
    }
    return xs.length ? { minX, minY, maxX, maxY } : { minX: 0, minY: 0, maxX: 1, maxY: 1 };
  }

  // ---- the thumbnail cache -----------------------------------------------------------------

  /** Decoded thumbnails by URL: a bounded LRU (a Map in recency order), loaded lazily, at most
   *  CONCURRENT_LOADS at a time, newest wishes first. Each is cropped to a square and scaled to
   *  the largest size it is drawn at, once, so that drawing it is a plain blit. */
  class ThumbnailCache {
    constructor({ fetchImage, pixels, onReady }) {
      this.fetchImage = fetchImage;
      this.pixels = pixels;
      this.onReady = onReady;
      this.entries = new Map();
      this.queue = [];
      this.loading = 0;
      this.frame = 0;
      this.closed = false;
    }

    /** The entry for `url` (touched: most recently used), or undefined. */
    get(url) {
      const entry = this.entries.get(url);
      if (!entry) return undefined;
      this.entries.delete(url);
      this.entries.set(url, entry);
      entry.frame = this.frame;
      return entry;
    }

    /** The URLs wanted now and not yet cached; replaces the wishes of earlier frames. */
    want(urls) {
      this.queue = urls;
      this.pump();
    }

    pump() {
      while (this.loading < CONCURRENT_LOADS && this.queue.length) {
        const url = this.queue.shift();
        if (!this.entries.has(url)) this.load(url);
      }
    }

    load(url) {
      const entry = { state: "loading", frame: this.frame, source: null, size: 0, blob: null };
      this.entries.set(url, entry);
      this.evict();
      this.loading++;
      this.decode(url, entry)
        .then((source) => this.settle(entry, source))
        .catch(() => { entry.state = "failed"; })
        .finally(() => {
          this.loading--;
          if (this.closed) return;
          this.onReady();
          this.pump();
        });
    }

    async decode(url, entry) {
      let image;
      if (this.fetchImage) {
        entry.blob = await this.fetchImage(url);
        image = await createImageBitmap(entry.blob);
      } else {
        image = new Image();
        image.decoding = "async";
        image.src = url;
        await image.decode();
      }
      return squareBitmap(image, this.pixels);
    }

    settle(entry, source) {
      if (this.closed) {
        closeSource(source);
        return;
      }
      entry.source = source;
      entry.size = source.width;
      entry.state = "ready";
    }

    /** Drops the least recently used entries past the capacity, sparing those drawn this frame
     *  and those still loading. */
    evict() {
      for (const [url, entry] of this.entries) {
        if (this.entries.size <= CACHE_IMAGES) return;
        if (entry.state === "loading" || entry.frame === this.frame) continue;
        closeSource(entry.source);
        this.entries.delete(url);
      }
    }

    clear() {
      this.closed = true;
      for (const entry of this.entries.values()) closeSource(entry.source);
      this.entries.clear();
      this.queue = [];
    }
  }

  /** The centre square of an image, scaled to `pixels` a side (or the image itself, uncropped,
   *  where createImageBitmap cannot crop: the caller then crops at draw time). */
  async function squareBitmap(image, pixels) {
    const w = image.naturalWidth || image.width;
    const h = image.naturalHeight || image.height;
    const side = Math.min(w, h);
    if (!side) throw new Error("empty image");
    const square = await createImageBitmap(image, (w - side) / 2, (h - side) / 2, side, side,
      { resizeWidth: pixels, resizeHeight: pixels, resizeQuality: "medium" });
    if (image instanceof ImageBitmap) image.close();
    return square;
  }

  function closeSource(source) {
    if (source && typeof source.close === "function") source.close();
  }

  // ---- styles and DOM ----------------------------------------------------------------------

  const STYLE = `
.vmap-root { position: relative; width: 100%; height: 100%; overflow: hidden;
  background: ${BACKGROUND}; font: 12px/1.35 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: #1d2330; user-select: none; }
.vmap-canvas { position: absolute; inset: 0; width: 100%; height: 100%; display: block;
  touch-action: none; outline: none; }
.vmap-canvas:focus-visible { box-shadow: inset 0 0 0 2px ${ACCENT}; }
.vmap-toolbar { position: absolute; top: 8px; left: 8px; display: flex; gap: 4px;
  align-items: center; padding: 4px; background: rgba(255,255,255,.92);
  border: 1px solid #d9dce1; border-radius: 6px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.vmap-toolbar button { font: inherit; padding: 3px 8px; border: 1px solid #d9dce1;
  border-radius: 4px; background: #fff; color: inherit; cursor: pointer; }
.vmap-toolbar button[aria-pressed=true] { background: #e8eefc; border-color: ${ACCENT};
  color: ${ACCENT}; }
.vmap-info { padding: 0 6px; color: #667085; white-space: nowrap; }
.vmap-legend { position: absolute; top: 8px; right: 8px; max-height: calc(100% - 16px);
  overflow: auto; padding: 6px 8px; background: rgba(255,255,255,.92);
  border: 1px solid #d9dce1; border-radius: 6px; min-width: 120px; max-width: 240px; }
.vmap-legend-row { display: flex; align-items: center; gap: 6px; white-space: nowrap; }
.vmap-swatch { width: 10px; height: 10px; border-radius: 2px; flex: none; }
.vmap-legend-name { overflow: hidden; text-overflow: ellipsis; flex: 1; }
.vmap-legend-count, .vmap-legend-more { color: #667085; }
.vmap-hover { position: absolute; left: 0; top: 0; width: 148px; padding: 6px;
  background: #fff; border: 1px solid #d9dce1; border-radius: 6px; pointer-events: none;
  box-shadow: 0 4px 12px rgba(0,0,0,.15); z-index: 2; }
.vmap-hover img { display: block; width: 136px; height: 136px; object-fit: cover;
  background: #eef0f3; border-radius: 4px; }
.vmap-hover-caption { margin-top: 4px; overflow-wrap: anywhere; }
`;

  function injectStyle() {
    if (document.getElementById("vmap-style")) return;
    const style = document.createElement("style");
    style.id = "vmap-style";
    style.textContent = STYLE;
    document.head.append(style);
  }

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  const MODES = [["pan", "Pan"], ["box", "Box select"], ["lasso", "Lasso select"]];

  function buildDom(container) {
    injectStyle();
    const canvas = el("canvas", { class: "vmap-canvas", tabindex: "0", "aria-label": "Image map" });
    const modes = MODES.map(([mode, label]) => el("button", {
      type: "button", "data-testid": `map-mode-${mode}`, "data-mode": mode,
      "aria-pressed": String(mode === "pan"), text: label }));
    const reset = el("button", { type: "button", "data-testid": "map-reset", text: "Reset view" });
    const info = el("span", { class: "vmap-info", "data-testid": "map-info" });
    const toolbar = el("div", { class: "vmap-toolbar", role: "toolbar", "aria-label": "Map tools" },
      ...modes, reset, info);
    const legend = el("div", { class: "vmap-legend", "data-testid": "map-legend", hidden: "" });
    const hoverImage = el("img", { alt: "" });
    const caption = el("div", { class: "vmap-hover-caption" });
    const hover = el("div", { class: "vmap-hover", "data-testid": "map-hover", hidden: "" },
      hoverImage, caption);
    const root = el("div", { class: "vmap-root" }, canvas, toolbar, legend, hover);
    container.append(root);
    return { root, canvas, modes, reset, info, legend, hover, hoverImage, caption };
  }

  /** The pixels of one disc `size` pixels across, as [dx, dy] pairs from its top-left corner. */
  function disc(size) {
    const offsets = [];
    const r = size / 2;
    for (let dy = 0; dy < size; dy++) {
      for (let dx = 0; dx < size; dx++) {
        const d2 = (dx + 0.5 - r) ** 2 + (dy + 0.5 - r) ** 2;
        if (size <= 2 || d2 <= r * r + 0.25) offsets.push(dx, dy);
      }
    }
    return { size, offsets };
  }

  // ---- the map -----------------------------------------------------------------------------

  function mount(container, options = {}) {
    const opts = { caption: (id) => id, ...options };
    const dom = buildDom(container);
    const ctx = dom.canvas.getContext("2d", { alpha: false });
    const points = { n: 0, ids: [], xs: new Float64Array(0), ys: new Float64Array(0),
      byId: new Map(), grid: null, bounds: boundsOf([], []) };
    const colours = { category: new Int32Array(0), names: [], pixel: new Uint32Array(0),
      dim: new Uint32Array(0), order: new Int32Array(0) };
    const selection = { flags: new Uint8Array(0), list: [] };
    const view = { scale: 1, x: 0, y: 0 };
    const screen = { width: 0, height: 0, dpr: 1, image: null, pixels: null };
    const stats = { points: 0, drawn: 0, thumbnailsDrawn: 0, lastFrameMs: 0, frames: 0 };
    const ui = { mode: "pan", drag: null, hover: -1, pointer: null, hoverUrl: null,
      hoverSize: { w: 0, h: 0 }, fitted: false, frameRequested: 0, destroyed: false, thumbs: null };
    const cache = new ThumbnailCache({ fetchImage: opts.fetchImage, onReady: invalidate,
      pixels: Math.round(THUMB_MAX_PX * Math.max(1, window.devicePixelRatio || 1)) });
    const bgPixel = packRgb(BACKGROUND_RGB);
    const outlinePixel = packRgb(parseHex(OUTLINE));

    // ---- transforms ----

    function toLayout(sx, sy) {
      return { x: view.x + (sx - screen.width / 2) / view.scale,
        y: view.y - (sy - screen.height / 2) / view.scale };
    }

    function toScreen(i) {
      return { x: screen.width / 2 + (points.xs[i] - view.x) * view.scale,
        y: screen.height / 2 - (points.ys[i] - view.y) * view.scale };
    }

    function fitScale() {
      const { minX, minY, maxX, maxY } = points.bounds;
      const margin = Math.max(24, 0.05 * Math.min(screen.width, screen.height));
      const w = Math.max(1, screen.width - 2 * margin);
      const h = Math.max(1, screen.height - 2 * margin);
      const spanX = maxX - minX;
      const spanY = maxY - minY;
      if (!spanX && !spanY) return 1;
      return Math.min(spanX ? w / spanX : Infinity, spanY ? h / spanY : Infinity);
    }

    function clampScale(scale) {
      const fit = fitScale();
      return clamp(scale, fit * ZOOM_OUT_LIMIT, fit * ZOOM_IN_LIMIT);
    }

    function fitView() {
      const { minX, minY, maxX, maxY } = points.bounds;
      Object.assign(view, { scale: fitScale(), x: (minX + maxX) / 2, y: (minY + maxY) / 2 });
      ui.fitted = screen.width > 0 && screen.height > 0;
      viewChanged();
    }

    function zoomAbout(sx, sy, factor) {
      const anchor = toLayout(sx, sy);
      view.scale = clampScale(view.scale * factor);
      view.x = anchor.x - (sx - screen.width / 2) / view.scale;
      view.y = anchor.y + (sy - screen.height / 2) / view.scale;
      viewChanged();
    }

    function panBy(dx, dy) {
      view.x -= dx / view.scale;
      view.y += dy / view.scale;
      viewChanged();
    }

    function viewChanged() {
      if (ui.pointer && !ui.drag) updateHover(ui.pointer.x, ui.pointer.y);
      invalidate();
    }

    // ---- data ----

    function setPoints({ ids, x, y }) {
      const n = ids.length;
      if (x.length !== n || y.length !== n) throw new Error("setPoints: ids, x and y differ in length");
      const xs = Float64Array.from(x);
      const ys = Float64Array.from(y);
      const bounds = boundsOf(xs, ys);
      Object.assign(points, { n, ids: Array.from(ids, String), xs, ys, bounds,
        byId: new Map(Array.from(ids, (id, i) => [String(id), i])),
        grid: new SpatialGrid(xs, ys, bounds) });
      stats.points = n;
      selection.flags = new Uint8Array(n);
      selection.list = [];
      updateInfo();
      setColours({ category: new Int32Array(n).fill(-1), names: [] });
      hideHover();
      fitView();
    }

    function setColours({ category, names = [] }) {
      const n = points.n;
      if (category.length !== n) throw new Error("setColours: expected one category per point");
      const cat = Int32Array.from(category);
      const pixel = new Uint32Array(n);
      const dim = new Uint32Array(n);
      for (let i = 0; i < n; i++) {
        pixel[i] = PIXELS[shadeIndex(cat[i])];
        dim[i] = FADED_PIXELS[shadeIndex(cat[i])];
      }
      Object.assign(colours, { category: cat, names: Array.from(names, String), pixel, dim,
        order: greyFirst(cat) });
      renderLegend();
      invalidate();
    }

    /** The drawing order: points without a category first, so that none hides a coloured one. */
    function greyFirst(cat) {
      const order = new Int32Array(cat.length);
      let k = 0;
      for (let i = 0; i < cat.length; i++) if (cat[i] < 0) order[k++] = i;
      for (let i = 0; i < cat.length; i++) if (cat[i] >= 0) order[k++] = i;
      return order;
    }

    function categoryName(c) {
      return colours.names[c] ?? `category ${c}`;
    }

    function renderLegend() {
      const counts = new Map();
      for (const c of colours.category) if (c >= 0) counts.set(c, (counts.get(c) || 0) + 1);
      const ranked = [...counts].sort((a, b) => b[1] - a[1] || a[0] - b[0]);
      const rows = ranked.slice(0, LEGEND_ROWS).map(([c, count]) => legendRow(c, count));
      if (ranked.length > LEGEND_ROWS) {
        rows.push(el("div", { class: "vmap-legend-more",
          text: `+ ${ranked.length - LEGEND_ROWS} more categories` }));
      }
      dom.legend.replaceChildren(...rows);
      dom.legend.hidden = !rows.length;
    }

    function legendRow(c, count) {
      return el("div", { class: "vmap-legend-row", "data-category": String(c) },
        el("span", { class: "vmap-swatch", style: `background:${categoryColour(c)}` }),
        el("span", { class: "vmap-legend-name", text: categoryName(c) }),
        el("span", { class: "vmap-legend-count", text: NUMBER.format(count) }));
    }

    // ---- selection ----

    function setSelection(indices, additive) {
      if (!additive) selection.flags.fill(0);
      for (const i of indices) selection.flags[i] = 1;
      selection.list = [];
      selection.flags.forEach((on, i) => { if (on) selection.list.push(i); });
      updateInfo();
      invalidate();
    }

    function selectedIds() {
      return selection.list.map((i) => points.ids[i]);
    }

    function selectBox(drag) {
      const a = toLayout(drag.x0, drag.y0);
      const b = toLayout(drag.x, drag.y);
      const inside = [];
      points.grid.inRect(Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x),
        Math.max(a.y, b.y), (i) => { inside.push(i); return false; });
      finishSelection(inside, drag.additive);
    }

    function selectLasso(drag) {
      const poly = new Float64Array(drag.path.length);
      for (let k = 0; k < drag.path.length; k += 2) {
        const p = toLayout(drag.path[k], drag.path[k + 1]);
        poly[k] = p.x;
        poly[k + 1] = p.y;
      }
      finishSelection(points.grid.inPolygon(poly), drag.additive);
    }

    function finishSelection(indices, additive) {
      setSelection(indices, additive);
      if (opts.onSelect) opts.onSelect(selectedIds());
    }

    function updateInfo() {
      const chosen = selection.list.length;
      dom.info.textContent = `${NUMBER.format(points.n)} images`
        + (chosen ? ` · ${NUMBER.format(chosen)} selected` : "");
    }

    // ---- hover ----

    function hitTest(sx, sy) {
      if (!points.grid) return -1;
      const radius = ui.thumbs ? ui.thumbs.size / 2 : HOVER_RADIUS_PX;
      const p = toLayout(sx, sy);
      return points.grid.nearest(p.x, p.y, radius / view.scale);
    }

    function updateHover(sx, sy) {
      const i = hitTest(sx, sy);
      if (i !== ui.hover) {
        ui.hover = i;
        invalidate();
        if (i < 0) hideHover();
        else showHover(i);
      }
      if (i >= 0) placeHover(sx, sy);
      dom.canvas.style.cursor = i >= 0 ? "pointer" : modeCursor();
    }

    function showHover(i) {
      const id = points.ids[i];
      dom.caption.textContent = opts.caption(id, i);
      dom.hover.hidden = false;
      setHoverImage(opts.thumbnailUrl ? opts.thumbnailUrl(id, i) : null);
      ui.hoverSize = { w: dom.hover.offsetWidth, h: dom.hover.offsetHeight };
    }

    function setHoverImage(url) {
      const img = dom.hoverImage;
      revokeHoverUrl();
      img.dataset.url = url || "";
      if (!url) {
        img.removeAttribute("src");
      } else if (!opts.fetchImage) {
        img.src = url;
      } else {
        img.removeAttribute("src");
        const cached = cache.entries.get(url);
        Promise.resolve(cached && cached.blob ? cached.blob : opts.fetchImage(url)).then((blob) => {
          if (ui.destroyed || img.dataset.url !== url) return;
          ui.hoverUrl = URL.createObjectURL(blob);
          img.src = ui.hoverUrl;
        }).catch(() => {});
      }
    }

    function revokeHoverUrl() {
      if (ui.hoverUrl) URL.revokeObjectURL(ui.hoverUrl);
      ui.hoverUrl = null;
    }

    /** Beside the cursor (below right, or flipped where it would not fit), inside the map. */
    function placeHover(sx, sy) {
      const { w, h } = ui.hoverSize;
      const gap = 14;
      let left = sx + gap + w <= screen.width ? sx + gap : sx - gap - w;
      let top = sy + gap + h <= screen.height ? sy + gap : sy - gap - h;
      left = clamp(left, 4, Math.max(4, screen.width - w - 4));
      top = clamp(top, 4, Math.max(4, screen.height - h - 4));
      dom.hover.style.transform = `translate(${Math.round(left)}px, ${Math.round(top)}px)`;
    }

    function hideHover() {
      if (ui.hover >= 0) invalidate();
      ui.hover = -1;
      dom.hover.hidden = true;
      dom.hoverImage.removeAttribute("src");
      dom.hoverImage.dataset.url = "";
      revokeHoverUrl();
    }

    // ---- pointer, wheel and keys ----

    function localPoint(event) {
      const rect = dom.canvas.getBoundingClientRect();
      return { x: event.clientX - rect.left, y: event.clientY - rect.top };
    }

    function modeCursor() {
      if (ui.drag && ui.drag.kind === "pan") return "grabbing";
      return ui.mode === "pan" ? "grab" : "crosshair";
    }

    function onPointerDown(event) {
      if (event.button !== 0 && event.button !== 1) return;
      event.preventDefault();
      dom.canvas.focus({ preventScroll: true });
      try { dom.canvas.setPointerCapture(event.pointerId); } catch { /* a synthetic pointer */ }
      const p = localPoint(event);
      const kind = event.button === 1 ? "pan" : ui.mode;
      ui.drag = { kind, button: event.button, x0: p.x, y0: p.y, x: p.x, y: p.y, moved: false,
        additive: event.shiftKey, path: [p.x, p.y] };
      hideHover();
      dom.canvas.style.cursor = modeCursor();
    }

    function onPointerMove(event) {
      const p = localPoint(event);
      ui.pointer = p;
      const drag = ui.drag;
      if (!drag) {
        updateHover(p.x, p.y);
        return;
      }
      drag.moved = drag.moved || Math.hypot(p.x - drag.x0, p.y - drag.y0) > CLICK_SLOP_PX;
      if (drag.kind === "pan") panBy(p.x - drag.x, p.y - drag.y);
      drag.x = p.x;
      drag.y = p.y;
      if (drag.kind === "lasso") extendLasso(drag, event);
      invalidate();
    }

    /** Every position the pointer passed, coalesced ones included, 1.5 px apart at least. */
    function extendLasso(drag, event) {
      const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
      for (const e of events.length ? events : [event]) {
        const p = localPoint(e);
        const path = drag.path;
        const last = path.length - 2;
        if (Math.hypot(p.x - path[last], p.y - path[last + 1]) >= 1.5) path.push(p.x, p.y);
      }
    }

    function onPointerUp(event) {
      const drag = ui.drag;
      if (!drag) return;
      onPointerMove(event);
      ui.drag = null;
      try { dom.canvas.releasePointerCapture(event.pointerId); } catch { /* already released */ }
      if (!drag.moved && drag.button === 0) click(drag.x0, drag.y0);
      else if (drag.kind === "box") selectBox(drag);
      else if (drag.kind === "lasso") selectLasso(drag);
      dom.canvas.style.cursor = modeCursor();
      invalidate();
    }

    function onPointerCancel() {
      ui.drag = null;
      invalidate();
    }

    function click(sx, sy) {
      const i = hitTest(sx, sy);
      if (i >= 0) {
        if (opts.onOpen) opts.onOpen(points.ids[i]);
        return;
      }
      if (!selection.list.length) return;
      setSelection([], false);
      if (opts.onSelect) opts.onSelect([]);
    }

    function onPointerLeave() {
      ui.pointer = null;
      if (!ui.drag) hideHover();
    }

    function onWheel(event) {
      event.preventDefault();
      const unit = event.deltaMode === 1 ? 16 : event.deltaMode === 2 ? screen.height : 1;
      const p = localPoint(event);
      zoomAbout(p.x, p.y, Math.exp(-event.deltaY * unit * WHEEL_ZOOM));
    }

    function onKeyDown(event) {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      const cx = screen.width / 2;
      const cy = screen.height / 2;
      const step = Math.min(screen.width, screen.height) / 8;
      const actions = {
        "+": () => zoomAbout(cx, cy, KEY_ZOOM), "=": () => zoomAbout(cx, cy, KEY_ZOOM),
        "-": () => zoomAbout(cx, cy, 1 / KEY_ZOOM), "_": () => zoomAbout(cx, cy, 1 / KEY_ZOOM),
        "0": fitView,
        ArrowLeft: () => panBy(step, 0), ArrowRight: () => panBy(-step, 0),
        ArrowUp: () => panBy(0, step), ArrowDown: () => panBy(0, -step),
      };
      const action = actions[event.key];
      if (!action) return;
      event.preventDefault();
      action();
    }

    function setMode(mode) {
      ui.mode = mode;
      for (const button of dom.modes) button.setAttribute("aria-pressed", String(button.dataset.mode === mode));
      dom.canvas.style.cursor = modeCursor();
    }

    // ---- size ----

    function onResize(entries) {
      const box = entries[entries.length - 1].contentRect;
      screen.width = box.width;
      screen.height = box.height;
      if (!ui.fitted && points.n) fitView();
      invalidate();
    }

    /** The canvas's backing store: its CSS size times devicePixelRatio (less where that would pass
     *  MAX_BACKING_PIXELS: each frame fills and uploads all of them), with a matching ImageData. */
    function ensureBacking() {
      const area = Math.max(1, screen.width * screen.height);
      const dpr = Math.min(window.devicePixelRatio || 1, Math.sqrt(MAX_BACKING_PIXELS / area));
      const w = Math.max(1, Math.round(screen.width * dpr));
      const h = Math.max(1, Math.round(screen.height * dpr));
      if (screen.image && screen.image.width === w && screen.image.height === h) return;
      dom.canvas.width = w;
      dom.canvas.height = h;
      screen.dpr = dpr;
      screen.image = ctx.createImageData(w, h);
      screen.pixels = new Uint32Array(screen.image.data.buffer);
    }

    // ---- drawing ----

    function invalidate() {
      if (ui.frameRequested || ui.destroyed) return;
      ui.frameRequested = requestAnimationFrame(frame);
    }

    function frame() {
      ui.frameRequested = 0;
      if (ui.destroyed || screen.width < 1 || screen.height < 1) return;
      const started = performance.now();
      ensureBacking();
      cache.frame++;
      ui.thumbs = planThumbnails();
      stats.drawn = rasteriseDots();
      ctx.putImageData(screen.image, 0, 0);
      ctx.setTransform(screen.dpr, 0, 0, screen.dpr, 0, 0);
      stats.thumbnailsDrawn = ui.thumbs ? drawThumbnails(ui.thumbs) : 0;
      if (!ui.thumbs) cache.want([]);
      drawHoverRing();
      drawDragOverlay();
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      stats.frames++;
      stats.lastFrameMs = performance.now() - started;
    }

    function dotDiameter() {
      const zoom = view.scale / fitScale();
      // a few hundred points get larger dots than 100,000: nothing to crowd
      const base = clamp(6 - Math.log10(Math.max(points.n, 1)), 2, 4);
      const css = clamp(base + 0.5 * Math.log2(zoom), 1, 6);
      return Math.max(1, Math.round(css * screen.dpr));
    }

    /** Every point in view as a small disc, straight into the pixel buffer; selected points last,
     *  outlined, the others faded while there is a selection. Returns how many were in view. */
    function rasteriseDots() {
      const { pixels, dpr } = screen;
      const w = screen.image.width;
      const h = screen.image.height;
      pixels.fill(bgPixel);
      const k = view.scale * dpr;
      const ox = w / 2 - view.x * k;
      const oy = h / 2 + view.y * k;
      const d = dotDiameter();
      const dot = disc(d);
      const shade = selection.list.length ? colours.dim : colours.pixel;
      const { xs, ys } = points;
      const order = colours.order;
      let drawn = 0;
      for (let n = 0; n < order.length; n++) {
        const i = order[n];
        drawn += stamp(pixels, w, h, ox + xs[i] * k - d / 2, oy - ys[i] * k - d / 2, dot, shade[i]);
      }
      const grow = Math.max(1, Math.round(dpr));
      const ring = disc(d + 2 * grow);
      const selected = selection.list;
      for (const i of selected) {  // all the outlines first: a dense selection stays in colour
        stamp(pixels, w, h, ox + xs[i] * k - d / 2 - grow, oy - ys[i] * k - d / 2 - grow, ring,
          outlinePixel);
      }
      for (const i of selected) {
        stamp(pixels, w, h, ox + xs[i] * k - d / 2, oy - ys[i] * k - d / 2, dot, colours.pixel[i]);
      }
      return drawn;
    }

    /** One disc with its top-left corner at (left, top); 1 if any of it is on the canvas. */
    function stamp(pixels, w, h, left, top, { size, offsets }, colour) {
      const x = Math.floor(left);
      const y = Math.floor(top);
      if (x >= 0 && y >= 0 && x + size <= w && y + size <= h) {
        const base = y * w + x;
        for (let k = 0; k < offsets.length; k += 2) pixels[base + offsets[k + 1] * w + offsets[k]] = colour;
        return 1;
      }
      if (x >= w || y >= h || x + size <= 0 || y + size <= 0) return 0;
      for (let k = 0; k < offsets.length; k += 2) {
        const px = x + offsets[k];
        const py = y + offsets[k + 1];
        if (px >= 0 && py >= 0 && px < w && py < h) pixels[py * w + px] = colour;
      }
      return 1;
    }

    /** Thumbnails instead of dots when fewer than MAX_THUMBNAILS points are in view and, at one
     *  of THUMB_SIZES at least, they would not overlap much; null otherwise. */
    function planThumbnails() {
      if (!opts.thumbnailUrl || !points.n) return null;
      const pad = THUMB_MAX_PX / 2 / view.scale;
      const a = toLayout(0, screen.height);
      const b = toLayout(screen.width, 0);
      const list = [];
      points.grid.inRect(a.x - pad, a.y - pad, b.x + pad, b.y + pad,
        (i) => list.push(i) > MAX_THUMBNAILS);
      if (!list.length || list.length > MAX_THUMBNAILS) return null;
      const size = THUMB_SIZES.find((side) => spreadOut(list, side));
      return size ? { list, size } : null;
    }

    function spreadOut(list, size) {
      const cells = new Set();
      for (const i of list) {
        const p = toScreen(i);
        cells.add(Math.floor(p.x / size) * 65536 + Math.floor(p.y / size));
      }
      return cells.size >= THUMB_SPREAD * list.length;
    }

    /** The loaded thumbnails of the points in view (selected and hovered ones on top); asks the
     *  cache for the missing ones. Returns how many were drawn. */
    function drawThumbnails({ list, size }) {
      const missing = [];
      const later = [];
      let drawn = 0;
      for (const i of list) {
        if (selection.flags[i] || i === ui.hover) later.push(i);
        else drawn += drawThumbnail(i, size, missing);
      }
      for (const i of later) drawn += drawThumbnail(i, size, missing);
      cache.want(missing);
      return drawn;
    }

    function drawThumbnail(i, size, missing) {
      const url = opts.thumbnailUrl(points.ids[i], i);
      const entry = cache.get(url);
      if (!entry) missing.push(url);
      if (!entry || entry.state !== "ready") return 0;
      const p = toScreen(i);
      const left = Math.round(p.x - size / 2);
      const top = Math.round(p.y - size / 2);
      const frameWidth = selection.flags[i] ? 4 : 2;
      ctx.fillStyle = selection.flags[i] ? OUTLINE : categoryColour(colours.category[i]);
      ctx.fillRect(left - frameWidth, top - frameWidth, size + 2 * frameWidth, size + 2 * frameWidth);
      ctx.drawImage(entry.source, 0, 0, entry.size, entry.size, left, top, size, size);
      return 1;
    }

    function drawHoverRing() {
      if (ui.hover < 0 || ui.drag) return;
      const p = toScreen(ui.hover);
      ctx.strokeStyle = ACCENT;
      ctx.lineWidth = 2;
      ctx.beginPath();
      if (ui.thumbs) {
        const half = ui.thumbs.size / 2 + 4;
        ctx.rect(Math.round(p.x - half), Math.round(p.y - half), 2 * half, 2 * half);
      } else {
        ctx.arc(p.x, p.y, dotDiameter() / screen.dpr / 2 + 4, 0, 2 * Math.PI);
      }
      ctx.stroke();
    }

    function drawDragOverlay() {
      const drag = ui.drag;
      if (!drag || !drag.moved || drag.kind === "pan") return;
      ctx.beginPath();
      if (drag.kind === "box") {
        ctx.rect(drag.x0, drag.y0, drag.x - drag.x0, drag.y - drag.y0);
      } else {
        ctx.moveTo(drag.path[0], drag.path[1]);
        for (let k = 2; k < drag.path.length; k += 2) ctx.lineTo(drag.path[k], drag.path[k + 1]);
        ctx.closePath();
      }
      ctx.fillStyle = "rgba(36, 88, 211, 0.10)";
      ctx.fill();
      ctx.strokeStyle = ACCENT;
      ctx.lineWidth = 1.5;
      ctx.setLineDash([5, 4]);
      ctx.stroke();
      ctx.setLineDash([]);
    }

    // ---- wiring ----

    const listeners = [
      [dom.canvas, "pointerdown", onPointerDown], [dom.canvas, "pointermove", onPointerMove],
      [dom.canvas, "pointerup", onPointerUp], [dom.canvas, "pointercancel", onPointerCancel],
      [dom.canvas, "pointerleave", onPointerLeave], [dom.root, "keydown", onKeyDown],
      [dom.canvas, "wheel", onWheel, { passive: false }],
      [dom.canvas, "contextmenu", (event) => event.preventDefault()],
      [dom.reset, "click", fitView],
    ];
    for (const button of dom.modes) listeners.push([button, "click", () => setMode(button.dataset.mode)]);
    for (const [target, type, handler, how] of listeners) target.addEventListener(type, handler, how);
    const resizeObserver = new ResizeObserver(onResize);
    resizeObserver.observe(dom.root);
    setMode("pan");
    updateInfo();

    function destroy() {
      ui.destroyed = true;
      if (ui.frameRequested) cancelAnimationFrame(ui.frameRequested);
      resizeObserver.disconnect();
      for (const [target, type, handler, how] of listeners) target.removeEventListener(type, handler, how);
      cache.clear();
      revokeHoverUrl();
      dom.root.remove();
    }

    return {
      setPoints,
      setColours,
      select(ids) {
        setSelection(Array.from(ids, (id) => points.byId.get(String(id))).filter((i) => i !== undefined),
          false);
      },
      selected: selectedIds,
      view: () => ({ ...view }),
      setView(v) {
        for (const key of ["scale", "x", "y"]) if (Number.isFinite(v[key])) view[key] = v[key];
        view.scale = clampScale(view.scale);
        ui.fitted = true;
        viewChanged();
      },
      stats: () => ({ ...stats }),
      destroy,
    };
  }

  window.VsearchMap = { mount };
})();

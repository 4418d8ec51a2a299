// The vsearch web page: gallery, search by image (with a crop box), by text and by example,
// tagging, feedback, clusters and duplicates. Plain JavaScript, no build step, no dependencies.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  const params = new URLSearchParams(location.search);
  const pageSize = clampInt(params.get("page_size"), 1, 500, 48);
  const CLUSTER_MEMBERS = 60;
  const DUPLICATE_GROUPS = 20;

  const state = {
    galleryOffset: 0,
    galleryTotal: 0,
    duplicatesOffset: 0,
    duplicatesTotal: 0,
    file: null,            // the uploaded query image
    box: null,             // crop box in pixels of the original image: [x1, y1, x2, y2]
    lastSearch: null,      // a function that runs the last search again (filters changed)
    searchSeq: 0,          // drops answers of searches overtaken by a newer one
    // A selection belongs to the view it was made in: "results", "gallery", "cluster" or
    // "duplicates". Selecting in another view starts a new one; a view that changes drops its own.
    selection: { scope: null, ids: new Set() },
    folded: new Map(),     // result id -> ids of the near-duplicates folded under it
    tags: new Map(),       // image id -> its tags, as last heard from the service
    query: null,           // what the results on screen answer (see showQuery)
    curationLoaded: false,
    insightLoaded: false,
    map: null,             // the map's handle (serving/web/map.js) once the Map tab was opened
    mapData: null,         // what /map answered: ids, x, y, and the colouring
    publicReads: true,     // false: images too are fetched with the API key (see setImage)
  };

  function clampInt(text, lo, hi, fallback) {
    const value = Number.parseInt(text ?? "", 10);
    return Number.isFinite(value) ? Math.min(hi, Math.max(lo, value)) : fallback;
  }

  // ---- status line -------------------------------------------------------------------------

  // Progress and outcomes go to the one-line status in the header; an error goes to a banner
  // under it (whole, however long), until dismissed or until the next thing succeeds.
  function setStatus(message, kind = "info") {
    const status = $("#status");
    if (kind === "error") {
      $("#error-text").textContent = message;
      $("#error-banner").hidden = false;
      message = "Error: see below";
    } else if (kind === "ok") {
      dismissError();
    }
    status.textContent = message;
    status.title = message;
    status.className = `status ${kind}`;
    status.dataset.kind = kind;
  }

  function dismissError() {
    $("#error-banner").hidden = true;
    $("#error-text").textContent = "";
  }

  function showError(err) {
    setStatus(err instanceof Error ? err.message : String(err), "error");
  }

  $("#error-dismiss").addEventListener("click", dismissError);

  window.addEventListener("error", (event) => showError(event.message));
  window.addEventListener("unhandledrejection", (event) => showError(event.reason));

  // ---- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) {
      super(`Error ${status}: ${detail}`);
      this.status = status;
      this.detail = detail;
    }
  }

  function describeDetail(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {  // FastAPI validation errors
      // pydantic prefixes a validator's own message with "Value error, ": the message is enough
      return detail.map((d) => `${(d.loc || []).slice(1).join(".") || "request"}: `
        + String(d.msg).replace(/^Value error, /, "")).join("; ");
    }
    return JSON.stringify(detail);
  }

  // Writes need an API key (reads and clicks too where the service keeps them private). The page
  // asks for one when the service answers 401, keeps it for this tab only (sessionStorage) and
  // sends it as X-API-Key.
  const KEY_STORAGE = "vsearch.apiKey";
  let keyRequest = null;  // the prompt on screen, shared by every request waiting for a key

  function withKey(options) {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { ...options, headers: { ...(options.headers || {}), "X-API-Key": key } } : options;
  }

  function askForKey(reason) {
    if (keyRequest) return keyRequest;
    const form = $("#api-key-form");
    const input = $("#api-key-input");
    const cancelButton = $("#api-key-cancel");
    $("#api-key-reason").textContent = reason;
    input.value = "";
    form.hidden = false;
    input.focus();
    keyRequest = new Promise((resolve) => {
      const finish = (key) => {
        form.hidden = true;
        form.removeEventListener("submit", submit);
        cancelButton.removeEventListener("click", cancel);
        keyRequest = null;
        resolve(key);
      };
      const submit = (event) => {
        event.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        sessionStorage.setItem(KEY_STORAGE, key);
        finish(key);
      };
      const cancel = () => finish(null);
      form.addEventListener("submit", submit);
      cancelButton.addEventListener("click", cancel);
    });
    return keyRequest;
  }

  async function send(path, options) {
    try {
      return await fetch(path, withKey(options));
    } catch (err) {
      throw new Error(`The service did not answer ${path}: ${err.message}`);
    }
  }

  /** fetch with the stored key; on 401, ask for a key and try once more with it. */
  async function fetchWithKey(path, options = {}) {
    const response = await send(path, options);
    if (response.status !== 401) return response;
    const hadKey = Boolean(sessionStorage.getItem(KEY_STORAGE));
    sessionStorage.removeItem(KEY_STORAGE);
    const key = await askForKey(hadKey ? "That API key was refused: enter a valid one."
      : "This needs an API key.");
    return key ? send(path, options) : response;
  }

  async function api(path, options = {}) {
    const response = await fetchWithKey(path, options);
    const type = response.headers.get("content-type") || "";
    const body = type.includes("application/json") ? await response.json().catch(() => null)
      : await response.text();
    if (!response.ok) {
      const detail = body && typeof body === "object" && "detail" in body ? describeDetail(body.detail)
        : (typeof body === "string" && body.trim()) || response.statusText;
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  const postJson = (path, payload, extra = {}) => api(path, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload), ...extra,
  });

  function query(values) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(values)) {
      if (value !== null && value !== undefined && value !== "") search.set(key, String(value));
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  const currentTag = () => $("#tag-filter").value || null;
  const currentFold = () => ($("#fold").checked ? "true" : "false");
  const currentK = () => clampInt($("#k").value, 1, 1000, 50);

  // ---- cards -------------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    return add(node, ...children);
  }

  /** Append the children that are there (null and undefined are skipped). */
  function add(node, ...children) {
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  const SVG = "http://www.w3.org/2000/svg";
  const THUMB_PATH = "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06"
    + "L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.8-1.22l3.02-7.05"
    + "c.09-.23.14-.47.14-.73v-2z";

  function thumbIcon(up) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("class", up ? "icon" : "icon down");
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", THUMB_PATH);
    svg.append(path);
    return svg;
  }

  // What the service says of an original that is no longer in the source as it was indexed
  const GONE_ORIGINALS = {
    missing: "original moved or deleted since indexing",
    changed: "original changed since indexing",
  };

  function thumbnail(image, size = "") {
    const img = el("img", {
      alt: image.path || image.id, loading: "lazy", decoding: "async", class: `thumb-img ${size}`,
      draggable: "false",
    });
    if (GONE_ORIGINALS[image.original]) {
      img.alt = "";  // no thumbnail to fetch: the card says why instead (originalNote)
      return img;
    }
    setImage(img, image.thumbnail_url || `${image.image_url}/thumbnail`);
    return img;
  }

  function originalNote(image) {
    const gone = GONE_ORIGINALS[image.original];
    return gone ? el("div", { class: "original-gone small", "data-testid": "original-gone", text: gone })
      : null;
  }

  /** An <img> cannot send a key: where reads are private, the image comes through fetch. */
  function setImage(img, url) {
    if (state.publicReads) {
      img.src = url;
      return;
    }
    fetchWithKey(url).then(async (response) => {
      if (!response.ok) throw new ApiError(response.status, `${url}: ${response.statusText}`);
      img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
      img.src = URL.createObjectURL(await response.blob());
    }).catch(showError);
  }

  /** Remember an image's tags when an answer carries them (search answers may not). */
  function noteTags(image) {
    if (Array.isArray(image.tags)) state.tags.set(image.id, image.tags);
  }

  /** The tag chips of one image; every card keeps one, so tags can change in place. */
  function tagChips(image) {
    noteTags(image);
    return paintChips(el("div", { class: "tags", "data-testid": "tags", dataset: { id: image.id } }));
  }

  function paintChips(holder) {
    const tags = state.tags.get(holder.dataset.id) || [];
    holder.replaceChildren(...tags.map((t) => el("span", { class: "chip", text: t })));
    return holder;
  }

  /** Show what is known of every image's tags on every card on the page. */
  function paintAllChips() {
    for (const holder of $$(".tags[data-id]")) paintChips(holder);
  }

  function selectBox(image) {
    const box = el("input", {
      type: "checkbox", class: "select-box", "aria-label": `Select ${image.path}`,
      "data-testid": "select-box",
    });
    box.addEventListener("change", () => select(scopeOf(box), [image.id], box.checked));
    return box;
  }

  function similarButton(image) {
    return el("button", {
      type: "button", class: "similar-button", "data-testid": "similar-button", text: "Find similar",
      title: "Images like this one", onclick: () => searchSimilar(image),
    });
  }

  /** A card of the gallery, a cluster or a duplicate group. */
  function imageCard(image, extraClass = "") {
    const card = el("article", {
      class: `card ${extraClass}`, dataset: { id: image.id, path: image.path || "" },
    });
    const open = el("button", {
      type: "button", class: "thumb", title: image.path, onclick: () => openLightbox(image),
    }, thumbnail(image));
    add(card,
      el("div", { class: "card-top" }, selectBox(image)),
      open,
      el("div", { class: "path", title: image.path, text: image.path }),
      originalNote(image),
      tagChips(image),
      el("div", { class: "actions" }, similarButton(image)),
    );
    return card;
  }

  /** A result card: rank, score, feedback, folded near-duplicates, click logging. */
  function resultCard(result, queryId) {
    const card = el("article", {
      class: "card result-card", "data-testid": "result-card",
      dataset: { id: result.id, path: result.path || "", rank: result.rank, queryId: queryId || "" },
    });
    const clicked = () => logClick(queryId, result.id);
    const open = el("button", {
      type: "button", class: "thumb", title: result.path,
      onclick: () => { clicked(); openLightbox(result); },
    }, thumbnail(result));
    const score = typeof result.score === "number" ? result.score.toFixed(3) : String(result.score);
    const meta = el("div", { class: "meta" },
      el("span", { class: "rank", text: `#${result.rank}` }),
      el("span", { class: "score", title: "similarity score", text: score }));
    const path = el("a", {
      class: "path", href: result.image_url, target: "_blank", rel: "noopener", title: result.path,
      text: result.path, onclick: clicked,
    });
    const matched = result.matched
      ? el("div", { class: "matched small", text: `matched “${result.matched}”` }) : null;
    const feedback = el("span", { class: "feedback" },
      feedbackButton(queryId, result.id, true), feedbackButton(queryId, result.id, false));
    add(card,
      el("div", { class: "card-top" }, selectBox(result), meta),
      open, path, originalNote(result), matched, tagChips(result),
      el("div", { class: "actions" }, similarButton(result), feedback),
    );
    const duplicates = result.duplicates || [];
    if (duplicates.length) {
      const list = el("div", { class: "dup-list", "data-testid": "dup-list", hidden: true },
        ...duplicates.map((d) => el("div", { class: "dup-item", dataset: { id: d.id, path: d.path } },
          el("button", {
            type: "button", class: "thumb", title: d.path,
            onclick: () => { logClick(queryId, d.id); openLightbox(d); },
          }, thumbnail(d, "mini")),
          el("div", { class: "path small", title: d.path, text: d.path }),
          tagChips(d),
          el("div", {
            class: "muted small",
            text: [typeof d.score === "number" ? `score ${d.score.toFixed(3)}` : null,
              d.distance !== undefined && d.distance !== null ? `distance ${d.distance}` : null]
              .filter(Boolean).join(" · "),
          }))));
      const badge = el("button", {
        type: "button", class: "dup-badge", "data-testid": "dup-badge", "aria-expanded": "false",
        text: `+${duplicates.length} near-duplicate${duplicates.length === 1 ? "" : "s"}`,
      });
      badge.addEventListener("click", () => {
        list.hidden = !list.hidden;
        badge.setAttribute("aria-expanded", String(!list.hidden));
      });
      card.append(badge, list);
    }
    return card;
  }

  function feedbackButton(queryId, id, relevant) {
    const button = el("button", {
      type: "button", class: relevant ? "feedback-up" : "feedback-down",
      "data-testid": relevant ? "feedback-up" : "feedback-down", "aria-pressed": "false",
      title: relevant ? "Relevant" : "Not relevant", "aria-label": relevant ? "Relevant" : "Not relevant",
    }, thumbIcon(relevant));
    button.addEventListener("click", async () => {
      try {
        await postJson("/feedback", { query_id: queryId, id, relevant });
        for (const other of $$(".feedback button", button.parentElement)) {
          other.setAttribute("aria-pressed", String(other === button));
        }
        setStatus(`Feedback recorded: ${relevant ? "relevant" : "not relevant"}.`, "ok");
      } catch (err) {
        showError(err);
      }
    });
    return button;
  }

  function logClick(queryId, id) {
    if (!queryId) return;
    // keepalive lets the request finish even when the click navigates away.
    postJson("/click", { query_id: queryId, id }, { keepalive: true }).catch(showError);
  }

  // ---- lightbox ----------------------------------------------------------------------------

  function openLightbox(image) {
    setImage($("#lightbox-image"), image.image_url);
    $("#lightbox-image").alt = image.path || image.id;
    $("#lightbox-caption").textContent = image.path || image.id;
    $("#lightbox-open").href = image.image_url;
    $("#lightbox").hidden = false;
  }

  function closeLightbox() {
    $("#lightbox").hidden = true;
    $("#lightbox-image").removeAttribute("src");
  }

  $("#lightbox-close").addEventListener("click", closeLightbox);
  $("#lightbox").addEventListener("click", (event) => {
    if (event.target === event.currentTarget) closeLightbox();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("#lightbox").hidden) closeLightbox();
  });

  // ---- selection and tags ------------------------------------------------------------------

  const SCOPE_NAMES = { results: "the results", gallery: "the gallery", duplicates: "duplicates",
    map: "the map" };

  const scopeOf = (node) => node.closest("[data-scope]")?.dataset.scope || null;

  function scopeName(scope) {
    if (scope === "cluster") return `cluster ${$("#cluster-members").dataset.label ?? ""}`.trim();
    return SCOPE_NAMES[scope] || scope;
  }

  /** Select (or unselect) ids in a view; selecting in another view starts a new selection. */
  function select(scope, ids, on) {
    if (on && state.selection.scope !== scope) state.selection = { scope, ids: new Set() };
    if (state.selection.scope === scope) {
      for (const id of ids) {
        if (on) state.selection.ids.add(id); else state.selection.ids.delete(id);
      }
    }
    syncSelection();
  }

  /** A view whose contents change (or that is hidden) drops its selection. */
  function dropSelection(scope) {
    if (scope === undefined || state.selection.scope === scope) {
      state.selection = { scope: null, ids: new Set() };
    }
    syncSelection();
  }

  /** The cards a view shows (not those folded away behind "show weaker results"). */
  function shownCards(scope) {
    return $$(`[data-scope="${scope}"] .card`).filter((card) => !card.closest("[hidden]"));
  }

  function syncSelection() {
    const { scope, ids } = state.selection;
    for (const box of $$(".card .select-box")) {
      box.checked = scopeOf(box) === scope && ids.has(box.closest(".card").dataset.id);
    }
    for (const all of $$("[data-scope-all]")) {
      const boxes = shownCards(all.dataset.scopeAll).map((card) => $(".select-box", card));
      all.checked = boxes.length > 0 && boxes.every((b) => b.checked);
      all.indeterminate = !all.checked && boxes.some((b) => b.checked);
      all.disabled = !boxes.length;
    }
    const count = ids.size;
    const folded = scope === "results" ? foldedUnder(ids).length : 0;
    $("#selection-count").textContent = count
      ? `${count} selected in ${scopeName(scope)}`
        + (folded ? ` (+${folded} near-duplicate${folded === 1 ? "" : "s"})` : "")
      : "Nothing selected: tick cards to tag them";
    const bar = $("#selection-bar");
    bar.dataset.state = count ? "active" : "empty";
    bar.dataset.scope = scope || "";
    for (const control of $$("input, button", bar)) control.disabled = !count;
  }

  for (const all of $$("[data-scope-all]")) {
    all.addEventListener("change", () => select(all.dataset.scopeAll,
      shownCards(all.dataset.scopeAll).map((card) => card.dataset.id), all.checked));
  }
  $("#clear-selection").addEventListener("click", () => dropSelection());

  /** The near-duplicates folded under these result cards: a tag goes to the whole group. */
  function foldedUnder(ids) {
    return Array.from(ids).flatMap((id) => state.folded.get(id) || []);
  }

  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

  async function changeTag(method) {
    const tag = $("#tag-input").value.trim();
    const { scope, ids: chosen } = state.selection;
    if (!chosen.size) return setStatus("Select some images first.", "error");
    if (!tag) return setStatus("Type a tag name first.", "error");
    const cards = Array.from(chosen);
    const folded = scope === "results" ? foldedUnder(chosen) : [];
    const ids = Array.from(new Set([...cards, ...folded]));
    try {
      const answer = await api("/tags", {
        method, headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ids, tag }),
      });
      const group = folded.length
        ? ` (${plural(cards.length, "card")} + ${plural(folded.length, "near-duplicate")})` : "";
      setStatus(method === "POST"
        ? `Tagged ${plural(ids.length, "image")}${group} “${answer.tag}” · ${answer.added} newly.`
        : `Removed “${answer.tag}” from ${plural(answer.removed, "image")}${group}.`, "ok");
      await afterTagsChanged();
    } catch (err) {
      showError(err);
    }
  }

  /** After tags change: the filter's choices, and the chips on every card on screen. A view
   * filtered by a tag may have lost or gained images: it is shown again. */
  async function afterTagsChanged() {
    const filter = currentTag();
    await loadTags();
    await refreshTags();
    if (filter) {
      state.galleryOffset = currentTag() === filter ? state.galleryOffset : 0;
      if (state.lastSearch) state.lastSearch();
      await loadGallery();
    }
  }

  /** Ask the service for the tags of these images (by default, every image on screen). */
  async function refreshTags(ids = $$(".tags[data-id]").map((holder) => holder.dataset.id)) {
    const unique = Array.from(new Set(ids));
    if (!unique.length) return;
    const answer = await postJson("/tags/of", { ids: unique });
    for (const [id, tags] of Object.entries(answer.tags)) state.tags.set(id, tags);
    paintAllChips();
  }

  $("#tag-selected-button").addEventListener("click", () => changeTag("POST"));
  $("#untag-selected-button").addEventListener("click", () => changeTag("DELETE"));
  $("#tag-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") changeTag("POST");
  });

  async function loadTags() {
    const select = $("#tag-filter");
    const chosen = select.value;
    const answer = await api("/tags");
    const options = [el("option", { value: "", text: "All images" })];
    for (const { tag, count } of answer.tags) {
      options.push(el("option", { value: tag, text: `${tag} (${count})` }));
    }
    select.replaceChildren(...options);
    select.value = answer.tags.some((t) => t.tag === chosen) ? chosen : "";
  }

  $("#tag-filter").addEventListener("change", () => {
    state.galleryOffset = 0;
    loadGallery();
    if (state.lastSearch) state.lastSearch();
  });
  $("#fold").addEventListener("change", () => { if (state.lastSearch) state.lastSearch(); });

  // ---- gallery -----------------------------------------------------------------------------

  async function loadGallery() {
    const gallery = $("#gallery");
    gallery.setAttribute("aria-busy", "true");
    try {
      const answer = await api(`/gallery${query({
        offset: state.galleryOffset, limit: pageSize, tag: currentTag(),
      })}`);
      state.galleryTotal = answer.total;
      const pages = Math.max(1, Math.ceil(answer.total / pageSize));
      if (!answer.images.length && state.galleryOffset > 0) {  // the collection shrank: last page
        state.galleryOffset = (pages - 1) * pageSize;
        return loadGallery();
      }
      const page = Math.floor(answer.offset / pageSize) + 1;
      $("#gallery-page").textContent = `page ${page} of ${pages}`;
      $("#gallery-total").textContent = `${answer.total} image${answer.total === 1 ? "" : "s"}`
        + (currentTag() ? ` tagged “${currentTag()}”` : "");
      $("#gallery-prev").disabled = answer.offset <= 0;
      $("#gallery-next").disabled = answer.offset + pageSize >= answer.total;
      dropSelection("gallery");
      gallery.replaceChildren(...answer.images.map((image) => imageCard(image, "gallery-card")));
      gallery.dataset.page = String(page);
      syncSelection();
    } catch (err) {
      showError(err);
    } finally {
      gallery.removeAttribute("aria-busy");
    }
  }

  $("#gallery-prev").addEventListener("click", () => {
    state.galleryOffset = Math.max(0, state.galleryOffset - pageSize);
    loadGallery();
  });
  $("#gallery-next").addEventListener("click", () => {
    if (state.galleryOffset + pageSize < state.galleryTotal) state.galleryOffset += pageSize;
    loadGallery();
  });

  // ---- searches ----------------------------------------------------------------------------

  /**
   * Run a search and show its answer. `current` is the query it answers: {kind: "upload", file,
   * url, box, size}, {kind: "text", text} or {kind: "similar", image}; once its answer is on screen
   * it is the query the page shows (showQuery).
   */
  async function runSearch(describe, request, rerun, current) {
    const seq = ++state.searchSeq;
    state.lastSearch = rerun;
    const results = $("#results");
    results.setAttribute("aria-busy", "true");
    setStatus(`Searching ${describe}…`, "busy");
    try {
      const answer = await request();
      if (seq !== state.searchSeq) return;  // a newer search is under way
      showQuery(current, describe, answer);
      renderResults(answer);
      setStatus(searchSummary(answer, describe), "ok");
      if (!answer.results.every((r) => Array.isArray(r.tags))) await refreshTags(resultIds(answer));
    } catch (err) {
      if (seq === state.searchSeq) showError(err);
    } finally {
      if (seq === state.searchSeq) results.removeAttribute("aria-busy");
    }
  }

  const resultIds = (answer) => answer.results.flatMap(
    (r) => [r.id, ...(r.duplicates || []).map((d) => d.id)]);

  function searchSummary(answer, describe) {
    const parts = [`${answer.results.length} results for ${describe}`,
      `${Number(answer.latency_ms).toFixed(1)} ms`];
    const relevance = relevanceOf(answer);
    if (relevance) parts.push(`${relevance.matches} above the match floor`);
    if (answer.mode) parts.push(`mode ${answer.mode}`);
    if (answer.folded) parts.push(`${plural(answer.folded, "near-duplicate")} folded`);
    if (currentTag()) parts.push(`tag “${currentTag()}”`);
    return parts.join(" · ");
  }

  /** The answer's match floor, when the service sends one (older answers have none). */
  function relevanceOf(answer) {
    const relevance = answer.relevance;
    if (!relevance || typeof relevance.floor !== "number") return null;
    const matches = answer.results.filter((r) => r.match !== false).length;
    return { floor: relevance.floor, method: relevance.method || "", matches };
  }

  function renderResults(answer) {
    const results = $("#results");
    results.dataset.queryId = answer.query_id || "";
    results.dataset.indexVersion = answer.index_version || "";
    state.folded = new Map(answer.results.map((r) => [r.id, (r.duplicates || []).map((d) => d.id)]));
    dropSelection("results");
    const card = (r) => resultCard(r, answer.query_id);
    const relevance = relevanceOf(answer);
    const strong = relevance ? answer.results.filter((r) => r.match !== false) : answer.results;
    const weak = relevance ? answer.results.filter((r) => r.match === false) : [];
    results.dataset.matches = String(strong.length);
    results.replaceChildren(...strong.map(card));
    if (!answer.results.length) {
      results.append(el("p", { class: "muted empty", text: "No results." }));
    } else if (weak.length) {
      results.append(...weakResults(weak.map(card), relevance, !strong.length));
    }
    syncSelection();
  }

  /** Results below the collection's match floor: after a break, dimmed, shown (the floor is
   * a guide, and the closest images may still be what the person wants); a button folds them. */
  function weakResults(cards, relevance, nothingMatched) {
    const floor = relevance.floor.toFixed(2);
    const group = el("div", { class: "weak-results", "data-testid": "weak-results" }, ...cards);
    const toggle = el("button", {
      type: "button", class: "weak-toggle", "data-testid": "weak-toggle",
      "aria-expanded": "true", text: "Hide them",
    });
    toggle.addEventListener("click", () => {
      group.hidden = !group.hidden;
      toggle.setAttribute("aria-expanded", String(!group.hidden));
      toggle.textContent = group.hidden ? `Show ${plural(cards.length, "weaker result")}` : "Hide them";
      syncSelection();
    });
    const title = relevance.method ? `Match floor from ${relevance.method}` : null;
    const heading = nothingMatched
      ? el("div", { class: "nothing-matched", "data-testid": "nothing-matched" },
        el("strong", { text: "Nothing matched well." }),
        el("span", { class: "muted", title, text: ` No result reaches this collection's match floor ${
          floor}; the closest ${plural(cards.length, "image")} are below, dimmed.` }))
      : el("div", { class: "weak-break-text", title,
        text: `Weaker results — below this collection's match floor ${floor}` });
    return [el("div", { class: "weak-break", "data-testid": "weak-break" }, heading, toggle), group];
  }

  // ---- the query on screen -----------------------------------------------------------------

  const QUERY_KINDS = { upload: "Your image", text: "Text", similar: "Images like" };

  /** Show what the results on screen answer; the sidebar keeps only the query in use. */
  function showQuery(current, describe, answer) {
    if (state.query?.url && state.query.url !== current.url) URL.revokeObjectURL(state.query.url);
    state.query = current;
    const panel = $("#query-panel");
    panel.dataset.kind = current.kind;
    $("#query-kind").textContent = QUERY_KINDS[current.kind];
    $("#results-title").textContent = `${describe} · ${plural(answer.results.length, "result")}`;
    const media = $("#query-media");
    media.replaceChildren(...queryMedia(current));
    media.hidden = !media.childElementCount;
    if (current.kind !== "upload") forgetUpload();
    if (current.kind !== "text") $("#text-query").value = "";
  }

  function queryMedia(current) {
    if (current.kind === "upload") {
      const img = el("img", { src: current.url, alt: `Query: ${current.file.name || "your upload"}`,
        "data-testid": "query-image" });
      return [el("div", { class: "query-image-wrap" }, img, cropOverlay(current.box, current.size))];
    }
    if (current.kind === "similar") {
      const image = current.image;
      return [el("button", { type: "button", class: "thumb query-thumb", title: image.path,
        "data-testid": "query-image", onclick: () => openLightbox(image) }, thumbnail(image))];
    }
    return [];
  }

  /** The crop box over the query image, in shares of the image, so it fits any size. */
  function cropOverlay(box, size) {
    if (!box || !size) return null;
    const [x1, y1, x2, y2] = box;
    const share = (v, of) => `${(100 * v / of).toFixed(2)}%`;
    const overlay = el("div", { class: "crop-box", "data-testid": "query-crop-box" });
    Object.assign(overlay.style, { left: share(x1, size[0]), top: share(y1, size[1]),
      width: share(x2 - x1, size[0]), height: share(y2 - y1, size[1]) });
    return overlay;
  }

  function searchUpload() {
    const file = state.file;
    if (!file) return setStatus("Choose an image first.", "error");
    const box = state.box;
    const size = preview.naturalWidth ? [preview.naturalWidth, preview.naturalHeight] : null;
    const current = { kind: "upload", file, box, size, url: URL.createObjectURL(file) };
    const describe = box ? `a crop of ${file.name || "the upload"}` : (file.name || "the upload");
    runSearch(describe, () => {
      const form = new FormData();
      form.append("file", file, file.name || "query");
      if (box) form.append("bbox", box.join(","));
      form.append("k", String(currentK()));
      if (currentTag()) form.append("tag", currentTag());
      form.append("fold", currentFold());
      return api("/search", { method: "POST", body: form });
    }, searchUpload, current).finally(() => {
      if (state.query !== current) URL.revokeObjectURL(current.url);
    });
  }

  function searchText() {
    const text = $("#text-query").value.trim();
    if (!text) return setStatus("Type something to search for.", "error");
    runSearch(`“${text}”`, async () => {
      const answer = await api(`/search/text${query({
        q: text, k: currentK(), tag: currentTag(), fold: currentFold(),
      })}`);
      $("#text-mode").textContent = answer.mode || "?";
      return answer;
    }, searchText, { kind: "text", text });
  }

  function searchSimilar(image) {
    const again = () => searchSimilar(image);
    runSearch(`images like ${image.path || image.id}`, () => api(
      `/similar/${encodeURIComponent(image.id)}${query({
        k: currentK(), tag: currentTag(), fold: currentFold(),
      })}`), again, { kind: "similar", image });
  }

  $("#search-button").addEventListener("click", searchUpload);
  $("#text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchText();
  });

  // ---- upload, preview and crop box --------------------------------------------------------

  let previewUrl = null;

  /** A chosen file: shown once the browser can draw it (never as a broken image), and searched
   * (the service decides whether its bytes are an image). */
  function useFile(file) {
    if (!file) return;
    state.file = file;
    clearBox();
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    $("#preview-wrap").hidden = true;
    $("#preview-hint").hidden = true;
    setFileNote("");
    $("#file-name").textContent = `${file.name || "pasted image"} · ${formatBytes(file.size)}`;
    $("#drop-zone").classList.add("chosen");
    preview.src = previewUrl;
    $("#search-button").disabled = false;
    searchUpload();
  }

  /** Back to no upload: the sidebar shows only the query in use. */
  function forgetUpload() {
    state.file = null;
    clearBox();
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    preview.removeAttribute("src");
    $("#preview-wrap").hidden = true;
    $("#preview-hint").hidden = true;
    setFileNote("");
    $("#file-name").textContent = "No image chosen";
    $("#drop-zone").classList.remove("chosen");
    $("#search-button").disabled = true;
  }

  function setFileNote(text) {
    $("#file-note").textContent = text;
    $("#file-note").hidden = !text;
  }

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    return n < 1024 * 1024 ? `${(n / 1024).toFixed(0)} KB` : `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  $("#preview").addEventListener("error", () => {
    if (!state.file || !$("#preview").getAttribute("src")) return;
    setFileNote(`${state.file.name || "This file"} is not an image this browser can show.`);
  });
  $("#preview").addEventListener("load", () => {
    $("#preview-wrap").hidden = false;
    $("#preview-hint").hidden = false;
  });

  $("#file-input").addEventListener("change", (event) => {
    useFile(event.target.files[0]);
    event.target.value = "";  // choosing the same file again searches again (#file-name says which)
  });

  const dropZone = $("#drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    dropZone.addEventListener(name, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropZone.addEventListener(name, () => dropZone.classList.remove("dragging"));
  }
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = Array.from(event.dataTransfer?.files || []).find(Boolean);
    if (file) useFile(file); else setStatus("Drop an image file.", "error");
  });
  // A file dropped anywhere else must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  const preview = $("#preview");
  const cropBox = $("#crop-box");
  let drag = null;

  function pointInPreview(event) {
    const rect = preview.getBoundingClientRect();
    return {
      x: Math.min(Math.max(event.clientX - rect.left, 0), rect.width),
      y: Math.min(Math.max(event.clientY - rect.top, 0), rect.height),
    };
  }

  function drawBox(a, b) {
    cropBox.style.left = `${preview.offsetLeft + Math.min(a.x, b.x)}px`;
    cropBox.style.top = `${preview.offsetTop + Math.min(a.y, b.y)}px`;
    cropBox.style.width = `${Math.abs(a.x - b.x)}px`;
    cropBox.style.height = `${Math.abs(a.y - b.y)}px`;
    cropBox.hidden = false;
  }

  preview.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || !preview.naturalWidth) return;
    event.preventDefault();
    preview.setPointerCapture(event.pointerId);
    drag = { start: pointInPreview(event) };
    drawBox(drag.start, drag.start);
  });
  preview.addEventListener("pointermove", (event) => {
    if (drag) drawBox(drag.start, pointInPreview(event));
  });
  preview.addEventListener("pointerup", (event) => {
    if (!drag) return;
    const start = drag.start;
    const end = pointInPreview(event);
    drag = null;
    if (Math.abs(end.x - start.x) < 4 || Math.abs(end.y - start.y) < 4) return clearBox();
    // The preview is scaled: box coordinates are pixels of the original image.
    const sx = preview.naturalWidth / preview.clientWidth;
    const sy = preview.naturalHeight / preview.clientHeight;
    const x1 = Math.max(0, Math.round(Math.min(start.x, end.x) * sx));
    const y1 = Math.max(0, Math.round(Math.min(start.y, end.y) * sy));
    const x2 = Math.min(preview.naturalWidth, Math.round(Math.max(start.x, end.x) * sx));
    const y2 = Math.min(preview.naturalHeight, Math.round(Math.max(start.y, end.y) * sy));
    state.box = [x1, y1, x2, y2];
    drawBox(start, end);
    $("#bbox-label").textContent = `Box: ${state.box.join(", ")} of ${preview.naturalWidth}×${preview.naturalHeight} px`;
    $("#clear-box").disabled = false;
  });
  preview.addEventListener("pointercancel", () => { drag = null; clearBox(); });

  function clearBox() {
    state.box = null;
    cropBox.hidden = true;
    $("#bbox-label").textContent = "";
    $("#clear-box").disabled = true;
  }

  $("#clear-box").addEventListener("click", clearBox);

  // ---- views: gallery, clusters and duplicates ---------------------------------------------

  const VIEWS = ["gallery", "curation", "map", "insight"];
  const SCOPES = { gallery: ["gallery"], curation: ["cluster", "duplicates"], map: ["map"],
    insight: ["insight"] };

  function showView(name) {
    for (const view of VIEWS) {
      $(`#${view}-view`).hidden = view !== name;
      $(`#tab-${view}`).setAttribute("aria-selected", String(view === name));
      if (view !== name) for (const scope of SCOPES[view]) dropSelection(scope);
    }
    if (name === "curation" && !state.curationLoaded) {
      state.curationLoaded = true;
      loadClusters();
      loadDuplicates();
    }
    if (name === "map" && !state.map) loadMap();
    if (name === "insight" && !state.insightLoaded) {
      state.insightLoaded = true;
      loadInsight();
    }
  }

  for (const view of VIEWS) $(`#tab-${view}`).addEventListener("click", () => showView(view));

  // ---- the map -------------------------------------------------------------------------------

  // A selection on the map is a selection like any other (scope "map"): the selection bar tags
  // it, and "Find similar" searches from its first image.
  async function loadMap() {
    const holder = $("#map");
    state.map = window.VsearchMap.mount(holder, {
      thumbnailUrl: (id) => `/images/${encodeURIComponent(id)}/thumbnail?size=96`,
      caption: (id) => state.mapPaths?.get(id) || id,
      fetchImage: state.publicReads ? undefined : async (url) => {
        const response = await fetchWithKey(url);
        if (!response.ok) throw new ApiError(response.status, response.statusText);
        return response.blob();
      },
      onSelect: (ids) => {
        dropSelection("map");
        if (ids.length) select("map", ids, true);
        $("#map-similar").disabled = !ids.length;
      },
      onOpen: (id) => openLightbox({ id, path: state.mapPaths?.get(id) || id,
        image_url: `/images/${encodeURIComponent(id)}` }),
    });
    await colourMap(true);
  }

  async function colourMap(first = false) {
    const colour = $("#map-colour").value;
    try {
      const answer = await api(`/map${query({ colour })}`);
      if (first) {
        state.map.setPoints({ ids: answer.ids, x: answer.x, y: answer.y });
        state.mapPaths = new Map(answer.ids.map((id, i) => [id, answer.paths[i]]));
      }
      state.map.setColours({ category: answer.category, names: answer.names });
      $("#map-summary").textContent = `${plural(answer.count, "image")} · `
        + `${plural(answer.names.length, colour === "cluster" ? "cluster" : "colour")}`;
    } catch (err) {
      showError(err);
    }
  }

  $("#map-colour").addEventListener("change", () => colourMap());
  $("#map-similar").addEventListener("click", () => {
    const [first] = state.selection.scope === "map" ? state.selection.ids : [];
    if (first) searchSimilar({ id: first, path: state.mapPaths?.get(first) || first });
  });

  // ---- insight: odd ones, label mistakes, poor files ----------------------------------------

  async function loadInsight() {
    try {
      const [odd, mistakes] = await Promise.all([api("/odd?limit=24"), api("/label-mistakes")]);
      $("#odd-ones").replaceChildren(...odd.images.map(oddCard));
      $("#mistakes-summary").textContent = mistakes.total
        ? `${plural(mistakes.total, "image")} whose nearest images carry another label`
        : "No image's neighbours disagree with its label.";
      $("#label-mistakes").replaceChildren(...mistakes.images.map(mistakeCard));
      await loadQuality();
    } catch (err) {
      showError(err);
    }
  }

  function oddCard(image) {
    const card = imageCard(image, "odd");
    card.querySelector(".path").after(el("div", {
      class: "muted small", "data-testid": "outlier",
      text: `farther out than ${(100 * image.outlier).toFixed(1)}%`
        + (image.cluster_outlier ? " · in no cluster" : ""),
    }));
    return card;
  }

  function mistakeCard(image) {
    const card = imageCard(image, "mistake");
    const accept = el("button", {
      type: "button", class: "accept-label", "data-testid": "accept-label",
      text: `Accept “${image.suggested}”`,
      title: `Tag it ${image.accept_tag}: the label the next run reads`,
      onclick: () => acceptLabel(image, card),
    });
    card.querySelector(".path").after(el("div", {
      class: "small", "data-testid": "mistake-labels",
      text: `labelled ${image.label} · neighbours say ${image.suggested} `
        + `(${Math.round(100 * image.confidence)}%)`,
    }));
    card.querySelector(".actions").prepend(accept);
    return card;
  }

  async function acceptLabel(image, card) {
    try {
      await postJson("/tags", { ids: [image.id], tag: image.accept_tag });
      card.dataset.accepted = "true";
      card.querySelector(".accept-label").disabled = true;
      setStatus(`Tagged ${image.path} “${image.accept_tag}”: the next insight run reads it `
        + "as its label.", "ok");
      await afterTagsChanged();
    } catch (err) {
      showError(err);
    }
  }

  async function loadQuality() {
    const flag = $("#quality-flag").value;
    try {
      const answer = await api(`/quality${query({ flag, limit: 48 })}`);
      const counts = Object.entries(answer.counts).map(([f, n]) => `${f} ${n}`).join(" · ");
      $("#quality-summary").textContent = `${plural(answer.total, "file")} ${flag} (${counts})`;
      $("#quality-files").replaceChildren(...answer.images.map((image) => imageCard(image)));
    } catch (err) {
      showError(err);
    }
  }

  $("#quality-flag").addEventListener("change", loadQuality);

  // The report is fetched like any read (with the key where reads need one) and opened as a
  // page of its own: it holds its pictures inline, so it reads the same once saved.
  async function openReport() {
    setStatus("Making the collection report…");
    try {
      const response = await fetchWithKey("/report");
      if (!response.ok) throw new ApiError(response.status, await response.text());
      const url = URL.createObjectURL(await response.blob());
      window.open(url, "_blank", "noopener");
      setStatus("The report opened in a new tab.", "ok");
    } catch (err) {
      showError(err);
    }
  }

  $("#report-open").addEventListener("click", openReport);

  async function loadClusters() {
    const list = $("#clusters");
    list.setAttribute("aria-busy", "true");
    try {
      const answer = await api("/clusters");
      $("#clusters-summary").textContent = clustersSummary(answer);
      const outliers = $("#outliers-open");
      outliers.hidden = !answer.noise;
      outliers.textContent = `Show the ${plural(answer.noise, "outlier")}`;
      list.replaceChildren(...answer.clusters.map(clusterRow));
      markOpenCluster();
      if (!answer.clusters.length) {
        list.append(el("p", { class: "muted", text: "No clusters: no group of images is alike "
          + "enough to form one yet." }));
      }
    } catch (err) {
      showError(err);
    } finally {
      list.removeAttribute("aria-busy");
    }
  }

  /** "3 clusters of 21 images · 5 images in no cluster", true in every state. */
  function clustersSummary(answer) {
    const grouped = answer.clusters.reduce((sum, c) => sum + c.size, 0);
    const parts = [answer.clusters.length
      ? `${plural(answer.clusters.length, "cluster")} of ${plural(grouped, "image")}`
      : "No clusters yet"];
    if (answer.noise) parts.push(`${plural(answer.noise, "image")} in no cluster`);
    else if (grouped) parts.push("every image is in one");
    return parts.join(" · ");
  }

  function clusterRow(cluster) {
    const name = cluster.suggested_name || "";
    const nameInput = el("input", {
      type: "text", class: "cluster-name", value: name, placeholder: "name this cluster",
      "aria-label": `Name of cluster ${cluster.label}`,
    });
    const candidates = (cluster.candidates || []).map((c) => `${c.name} (${c.count})`).join(", ");
    const row = el("div", {
      class: "cluster", "data-testid": "cluster",
      dataset: { label: cluster.label, size: cluster.size, name },
    },
    el("div", { class: "cluster-head" },
      el("button", {
        type: "button", class: "cluster-open", "data-testid": "cluster-open",
        text: `Cluster ${cluster.label} · ${cluster.size} images`,
        onclick: () => loadClusterMembers(cluster),
      }),
      el("span", { class: "suggested", text: name ? `“${name}”` : "no suggested name" })),
    candidates ? el("div", { class: "muted small candidates", "data-testid": "candidates",
      text: `Candidates: ${candidates}` }) : null,
    el("div", { class: "examples" }, ...(cluster.examples || []).map((image) => el("button", {
      type: "button", class: "thumb", title: image.path, onclick: () => loadClusterMembers(cluster),
    }, thumbnail(image, "mini")))),
    el("div", { class: "row" }, nameInput, el("button", {
      type: "button", class: "accept-name", "data-testid": "accept-name", text: "Accept name as tag",
      onclick: () => acceptClusterName(cluster, nameInput.value.trim()),
    })));
    return row;
  }

  async function loadClusterMembers(cluster) {
    const members = $("#cluster-members");
    members.setAttribute("aria-busy", "true");
    try {
      const answer = await api(`/clusters/${encodeURIComponent(cluster.label)}${query({
        offset: 0, limit: CLUSTER_MEMBERS,
      })}`);
      dropSelection("cluster");
      $("#cluster-members-title").textContent = (answer.outliers
        ? "Outliers, like no cluster's images" : `Cluster ${answer.label}`)
        + (answer.suggested_name ? ` “${answer.suggested_name}”` : "")
        + ` · ${plural(answer.size, "image")}` + (answer.size > answer.images.length
        ? ` (first ${answer.images.length})` : "");
      members.dataset.label = String(answer.label);
      members.replaceChildren(...answer.images.map((image) => imageCard(image, "member-card")));
      markOpenCluster();
      showClusterMembers(true);
      syncSelection();
    } catch (err) {
      showError(err);
    } finally {
      members.removeAttribute("aria-busy");
    }
  }

  function markOpenCluster() {
    const open = $("#cluster-members").dataset.label;
    for (const row of $$("#clusters .cluster")) row.classList.toggle("active", row.dataset.label === open);
  }

  /** The members take the place of the list (where the user is looking); back returns to it. */
  function showClusterMembers(open) {
    $("#clusters").hidden = open;
    $("#cluster-members-view").hidden = !open;
    if (open) {
      $("#cluster-members-view").scrollIntoView({ block: "start" });
      return;
    }
    dropSelection("cluster");
    const active = $("#clusters .cluster.active");
    if (active) active.scrollIntoView({ block: "nearest" });
  }

  $("#clusters-back").addEventListener("click", () => showClusterMembers(false));
  $("#outliers-open").addEventListener("click", () => loadClusterMembers({ label: -1 }));

  async function acceptClusterName(cluster, name) {
    // null accepts the suggested name as it is.
    const tag = name && name !== cluster.suggested_name ? name : null;
    if (tag === null && !cluster.suggested_name) {
      return setStatus(`Cluster ${cluster.label} has no suggested name: type one.`, "error");
    }
    try {
      const answer = await postJson(`/clusters/${encodeURIComponent(cluster.label)}/tag`, { tag });
      setStatus(`Tagged cluster ${cluster.label} “${answer.tag}”: ${plural(answer.size, "image")}`
        + ` · ${answer.added} newly.`, "ok");
      await Promise.all([loadClusters(), afterTagsChanged()]);
    } catch (err) {
      showError(err);
    }
  }

  async function loadDuplicates() {
    const list = $("#duplicates");
    list.setAttribute("aria-busy", "true");
    try {
      const answer = await api(`/duplicates${query({
        offset: state.duplicatesOffset, limit: DUPLICATE_GROUPS,
      })}`);
      state.duplicatesTotal = answer.total;
      const pages = Math.max(1, Math.ceil(answer.total / DUPLICATE_GROUPS));
      const page = Math.floor(state.duplicatesOffset / DUPLICATE_GROUPS) + 1;
      $("#duplicates-page").textContent = `page ${page} of ${pages}`;
      $("#duplicates-prev").disabled = state.duplicatesOffset <= 0;
      $("#duplicates-next").disabled = state.duplicatesOffset + DUPLICATE_GROUPS >= answer.total;
      $("#duplicates-summary").textContent = `${answer.total} group${answer.total === 1 ? "" : "s"}`;
      dropSelection("duplicates");
      list.replaceChildren(...answer.groups.map(duplicateGroup));
      if (!answer.groups.length) list.append(el("p", { class: "muted", text: "No near-duplicates." }));
      syncSelection();
    } catch (err) {
      showError(err);
    } finally {
      list.removeAttribute("aria-busy");
    }
  }

  /** A group of the duplicates tab: its keeper marked (a person's choice, else the rule's),
   * and on every other card "Keep this one", which marks the rest of the group `duplicate`. */
  function duplicateGroup(group) {
    const keptBy = group.kept_by === "person" ? "your choice" : "suggested";
    const cards = group.images.map((image) => {
      const card = imageCard(image, "dup-card");
      if (image.id === group.keeper) {
        card.classList.add("keeper");
        card.dataset.keeper = group.kept_by;
        $(".actions", card).prepend(el("span", {
          class: "keeper-label", "data-testid": "keeper-label", text: `keep · ${keptBy}`,
        }));
      } else {
        $(".actions", card).prepend(el("button", {
          type: "button", class: "keep-button", "data-testid": "keep-button", text: "Keep this one",
          title: "Keep this image and tag the rest of its group “duplicate”",
          onclick: () => keepDuplicate(group, image),
        }));
      }
      return card;
    });
    return el("div", { class: "dup-group", "data-testid": "dup-group", dataset: { group: group.group } },
      el("div", { class: "muted small", text: `Group ${group.group} · ${group.size} images` }),
      el("div", { class: "dup-row" }, ...cards));
  }

  async function keepDuplicate(group, image) {
    try {
      const answer = await postJson(`/duplicates/${encodeURIComponent(group.group)}/keep`,
        { id: image.id });
      setStatus(`Keeping ${image.path || image.id}; ${plural(answer.marked, "other image")} of `
        + `group ${group.group} tagged “${answer.tag}”.`, "ok");
      await Promise.all([loadDuplicates(), afterTagsChanged()]);
    } catch (err) {
      showError(err);
    }
  }

  /** The files of one part that duplicate an image of another (`/duplicates/between`). */
  $("#between-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const list = $("#between-list");
    list.setAttribute("aria-busy", "true");
    try {
      const answer = await api(`/duplicates/between${query({
        a: $("#between-a").value.trim(), b: $("#between-b").value.trim(),
      })}`);
      $("#between-summary").textContent = answer.summary;
      list.replaceChildren(...answer.files.map((f) => el("li", {
        class: "between-item", dataset: { id: f.id, path: f.path },
      }, el("span", { class: "path", text: f.path }),
      el("span", { class: "muted", text: ` ${f.reason} of ${f.duplicates_path}` }))));
    } catch (err) {
      $("#between-summary").textContent = "";
      list.replaceChildren();
      showError(err);
    } finally {
      list.removeAttribute("aria-busy");
    }
  });

  $("#duplicates-prev").addEventListener("click", () => {
    state.duplicatesOffset = Math.max(0, state.duplicatesOffset - DUPLICATE_GROUPS);
    loadDuplicates();
  });
  $("#duplicates-next").addEventListener("click", () => {
    if (state.duplicatesOffset + DUPLICATE_GROUPS < state.duplicatesTotal) {
      state.duplicatesOffset += DUPLICATE_GROUPS;
    }
    loadDuplicates();
  });

  // ---- start -------------------------------------------------------------------------------

  async function start() {
    try {
      const health = await api("/health");
      state.publicReads = health.public_reads !== false;
      $("#index-version").textContent = health.index_version
        ? `index ${health.index_version}` : "no index loaded";
      setStatus(health.status === "ok" ? "Ready." : `The service has no index: ${
        health.last_error || health.status}`, health.status === "ok" ? "ok" : "error");
    } catch (err) {
      showError(err);
    }
    await Promise.all([loadTags().catch(showError), loadGallery()]);
    document.body.dataset.ready = "true";
  }

  start();
})();

"""The map: a 2-D layout of the collection that stays where it was when images are added.

`layout_collection` fits UMAP (cosine, on the clustering's reduced vectors) on the collection,
or on a seeded sample of `FIT_SAMPLE` images of a larger one, and places every other image at
the weighted mean of its nearest placed images (`place_points`). Below `UMAP_MIN_IMAGES` it is
PCA: UMAP's compilation alone (about 25 s a process) costs more than a small collection's
whole run, and two axes of PCA show a few hundred images as well.

Stable placement: when an earlier layout holds most of the images (at least
`KEEP_SHARE`), every image it holds keeps its place and only the new ones are placed among
them, so a person's mental map of the collection survives each ingest. A collection that grew
past that gets a new layout, turned, mirrored and scaled onto the old one (Procrustes over the
images both hold) so that it reads the same way round.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

FIT_SAMPLE = 20_000  # images UMAP is fitted on; the rest are placed among them
UMAP_MIN_IMAGES = 1_000  # fewer: PCA
KEEP_SHARE = 0.5  # an earlier layout that holds at least this share of the images is kept
PLACE_NEIGHBOURS = 10
MAP_METHODS = ("umap", "pca")


@dataclass(frozen=True)
class Layout:
    xy: np.ndarray  # (n, 2) float32, in [0, 1] on the longer axis of the first fit
    method: str  # "umap", "pca", or "kept" (earlier layout, new images placed)
    placed: int  # images placed among others rather than laid out by the fit
    kept: int  # images that kept their earlier place


def layout_collection(reduced: np.ndarray, method: str, seed: int,
                      previous: dict[str, tuple[float, float]] | None = None,
                      ids: list[str] | None = None) -> Layout:
    """A place for each row of `reduced` (unit rows); `previous` maps ids to earlier places."""
    n = len(reduced)
    known = np.array([previous is not None and i in previous for i in (ids or [])], bool)
    if previous and n and known.mean() >= KEEP_SHARE:
        xy = np.zeros((n, 2), np.float32)
        xy[known] = [previous[i] for i, k in zip(ids, known, strict=True) if k]
        rest = np.flatnonzero(~known)
        if len(rest):
            xy[rest] = place_points(reduced[known], xy[known], reduced[rest])
        return Layout(xy, "kept", len(rest), int(known.sum()))
    xy, used, placed = _fit(reduced, method, seed)
    if previous and known.sum() >= 3:
        old = np.array([previous[i] for i, k in zip(ids, known, strict=True) if k], np.float32)
        xy = procrustes_onto(xy, xy[known], old)
    else:
        xy = _unit_box(xy)
    return Layout(xy.astype(np.float32), used, placed, 0)


def _fit(reduced: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str, int]:
    n = len(reduced)
    if n < 3:
        return np.zeros((n, 2), np.float32), "pca", 0
    if method == "pca" or n < UMAP_MIN_IMAGES:
        return _pca2(reduced), "pca", 0
    fit_rows = np.arange(n)
    if n > FIT_SAMPLE:
        fit_rows = np.sort(np.random.default_rng(seed).choice(n, FIT_SAMPLE, replace=False))
    import warnings

    import umap

    with warnings.catch_warnings():  # a seed makes UMAP single-threaded, and it says so each time
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        fitted = umap.UMAP(n_components=2, metric="cosine", random_state=seed,
                           n_neighbors=15).fit_transform(reduced[fit_rows]).astype(np.float32)
    if len(fit_rows) == n:
        return fitted, "umap", 0
    xy = np.zeros((n, 2), np.float32)
    xy[fit_rows] = fitted
    rest = np.setdiff1d(np.arange(n), fit_rows)
    xy[rest] = place_points(reduced[fit_rows], fitted, reduced[rest])
    return xy, "umap", len(rest)


def _pca2(reduced: np.ndarray) -> np.ndarray:
    centred = reduced - reduced.mean(axis=0)
    _, _, axes = np.linalg.svd(centred[:: max(1, len(centred) // 50_000)], full_matrices=False)
    xy = centred @ axes[:2].T
    # a fixed orientation: each axis points towards its larger spread (SVD signs are arbitrary)
    signs = np.where(np.abs(xy.max(axis=0)) >= np.abs(xy.min(axis=0)), 1.0, -1.0)
    return (xy * signs).astype(np.float32)


def place_points(anchors: np.ndarray, anchor_xy: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Each point at the mean place of its `PLACE_NEIGHBOURS` nearest anchors (by cosine),
    weighted by cosine ** 3: an image lands among the images it looks like."""
    import faiss

    k = min(PLACE_NEIGHBOURS, len(anchors))
    index = faiss.IndexFlatIP(anchors.shape[1])
    index.add(np.ascontiguousarray(anchors, dtype=np.float32))
    placed = np.zeros((len(points), 2), np.float32)
    for start in range(0, len(points), 65_536):
        chunk = np.ascontiguousarray(points[start:start + 65_536], dtype=np.float32)
        cosine, rows = index.search(chunk, k)
        weight = np.maximum(cosine, 1e-3) ** 3
        placed[start:start + len(chunk)] = (
            (anchor_xy[rows] * weight[..., None]).sum(axis=1) / weight.sum(axis=1, keepdims=True))
    return placed


def procrustes_onto(xy: np.ndarray, mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """`xy` turned, mirrored if that fits better, scaled and moved so that `mine` (its rows of
    the shared images) lies as close as it can to `theirs` (their earlier places)."""
    mu_a, mu_b = mine.mean(axis=0), theirs.mean(axis=0)
    a, b = mine - mu_a, theirs - mu_b
    u, s, vt = np.linalg.svd(a.T @ b)
    rotation = u @ vt
    scale = s.sum() / max(float((a ** 2).sum()), 1e-12)
    return ((xy - mu_a) @ rotation * scale + mu_b).astype(np.float32)


def _unit_box(xy: np.ndarray) -> np.ndarray:
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = max(float((high - low).max()), 1e-9)
    return ((xy - low) / span).astype(np.float32)


def map_png(xy: np.ndarray, labels: np.ndarray, size: int = 900) -> bytes:
    """The map as a PNG: a dot per image coloured by cluster, outliers (-1) grey."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (size, size), (255, 255, 255))
    if len(xy):
        draw = ImageDraw.Draw(picture)
        box = _unit_box(xy) * (size - 20) + 10
        radius = 2 if len(xy) < 20_000 else 1
        for (x, y), label in zip(box, labels, strict=True):
            colour = PALETTE[label % len(PALETTE)] if label >= 0 else (190, 190, 190)
            y = size - y
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    out = io.BytesIO()
    picture.save(out, "PNG", optimize=True)
    return out.getvalue()


# qualitative colours, cycled (Tableau 20 and more)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
           (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
           (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229), (57, 59, 121),
           (99, 121, 57), (140, 109, 49), (132, 60, 57), (123, 65, 115)]

"""The map: laid out once, kept as the collection grows, new images placed among their likes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vsearch_pipeline.core.map_layout import (
    UMAP_MIN_IMAGES,
    layout_collection,
    map_png,
    place_points,
    procrustes_onto,
)


def blobs(n_per: int, centres: int, dims: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dims)) * 3
    labels = np.repeat(np.arange(centres), n_per)
    points = means[labels] + rng.normal(size=(len(labels), dims)) * 0.3
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32), labels


def test_small_collections_get_a_pca_map_in_the_unit_box() -> None:
    points, labels = blobs(20, 5)
    layout = layout_collection(points, "umap", seed=0)
    assert layout.method == "pca" and len(points) < UMAP_MIN_IMAGES
    assert layout.xy.shape == (100, 2)
    assert layout.xy.min() >= -1e-6 and layout.xy.max() <= 1 + 1e-6
    again = layout_collection(points, "umap", seed=0)
    assert np.array_equal(layout.xy, again.xy)  # the same collection, the same map
    # each blob is tighter than the map: the layout keeps neighbourhoods
    spread = np.mean([layout.xy[labels == c].std(axis=0).mean() for c in range(5)])
    assert spread < 0.5 * layout.xy.std(axis=0).mean()


def test_umap_map_separates_the_blobs() -> None:
    points, labels = blobs(220, 5, seed=1)
    layout = layout_collection(points, "umap", seed=0)
    assert layout.method == "umap" and layout.placed == 0
    centres = np.array([layout.xy[labels == c].mean(axis=0) for c in range(5)])
    nearest = np.argmin(((layout.xy[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.95


def test_images_keep_their_places_and_new_ones_land_among_their_likes() -> None:
    points, labels = blobs(30, 6, seed=2)
    order = np.random.default_rng(2).permutation(len(points))  # the new 30 come from every blob
    points, labels = points[order], labels[order]
    ids = [f"i{k}" for k in range(len(points))]
    first = layout_collection(points[:150], "pca", 0, None, ids[:150])
    previous = {i: tuple(xy) for i, xy in zip(ids[:150], first.xy.tolist(), strict=True)}
    grown = layout_collection(points, "pca", 0, previous, ids)
    assert grown.method == "kept" and grown.kept == 150 and grown.placed == 30
    assert np.allclose(grown.xy[:150], first.xy)  # nobody moved
    centres = np.array([first.xy[labels[:150] == c].mean(axis=0) for c in range(6)])
    new = grown.xy[150:]
    nearest = np.argmin(((new[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels[150:]).mean() >= 0.9


def test_a_collection_that_outgrew_its_map_is_laid_out_again_the_same_way_round() -> None:
    points, _ = blobs(40, 5, seed=3)
    ids = [f"i{k}" for k in range(len(points))]
    first = layout_collection(points[:60], "pca", 0, None, ids[:60])
    previous = {i: tuple(xy) for i, xy in zip(ids[:60], first.xy.tolist(), strict=True)}
    again = layout_collection(points, "pca", 0, previous, ids)
    assert again.method == "pca" and again.kept == 0
    moved = np.linalg.norm(again.xy[:60] - first.xy, axis=1).mean()
    assert moved < 0.15  # aligned onto the old map, not turned or mirrored


def test_procrustes_undoes_a_turn_a_mirror_and_a_scale() -> None:
    rng = np.random.default_rng(4)
    xy = rng.normal(size=(50, 2)).astype(np.float32)
    turn = np.array([[0.0, -1.0], [1.0, 0.0]]) @ np.array([[-1.0, 0.0], [0.0, 1.0]])
    theirs = (xy @ turn.T) * 3 + 5
    assert np.allclose(procrustes_onto(xy, xy, theirs), theirs, atol=1e-4)


def test_place_points_weighs_the_nearest() -> None:
    anchors = np.eye(3, dtype=np.float32)
    anchor_xy = np.array([[0, 0], [1, 0], [0, 1]], np.float32)
    placed = place_points(anchors, anchor_xy, anchors[:1])
    assert placed[0, 0] < 0.05 and placed[0, 1] < 0.05


def test_map_picture_is_a_png_with_a_dot_per_cluster_colour() -> None:
    points, labels = blobs(20, 3, seed=5)
    layout = layout_collection(points, "pca", 0)
    labels[0] = -1
    picture = Image.open(io.BytesIO(map_png(layout.xy, labels, size=300)))
    assert picture.format == "PNG" and picture.size == (300, 300)
    colours = {c for _, c in picture.getcolors(10_000)}
    assert (190, 190, 190) in colours and len(colours) >= 4  # white, grey and the 3 clusters

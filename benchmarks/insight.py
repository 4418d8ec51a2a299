"""Odd ones and label mistakes on a materialized Caltech-101 home, with planted cases.

    python -m benchmarks.insight --home H [--coil DIR]

Reads the home's vectors (no re-embedding of the collection) and embeds only what it plants:
1% foreign images, once scattered (one view of each COIL-20 object and generated textures) and
once grouped (COIL-20 views drawn at random, many of one object), reporting how many of them
the top 1% of uniqueness holds; then 2% of the photos moved into wrong folders, the label
review's precision and recall at the default confidence and the confidence with the best F1
chosen on one half and checked on the other. Times each step beside the plain way: the mean
distance to the nearest neighbours by brute force over the whole matrix.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from vsearch_pipeline.core.artifacts import image_locations, load_embeddings, load_manifests
from vsearch_pipeline.core.label_review import (
    LABEL_NEIGHBOURS,
    flag_scores,
    folder_label,
    review_labels,
)
from vsearch_pipeline.core.near_duplicates import nearest_neighbours
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.uniqueness import outlier_distances, uniqueness_scores
from vsearch_pipeline.settings import load_settings

SEED = 0


def textures(count: int, seed: int):
    """Noise, gratings and checkerboards with their own colours and scales (tests/test_insight)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:224, 0:224] / 224.0
    found = []
    for i in range(count):
        colour = rng.uniform(0, 255, (2, 3))
        if i % 3 == 0:
            mix = rng.random((224, 224))
        elif i % 3 == 1:
            angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 30)
            mix = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
        else:
            cells = int(rng.integers(3, 16))
            mix = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(float)
        found.append(Image.fromarray((colour[0] * mix[..., None]
                                      + colour[1] * (1 - mix[..., None])).astype(np.uint8)))
    return found


def planted_found(base: np.ndarray, planted: np.ndarray) -> tuple[int, int, int, float]:
    """How many planted images the top 1% holds by the outlier score and by uniqueness."""
    vectors = np.concatenate([base, planted])
    truth = np.r_[np.zeros(len(base), bool), np.ones(len(planted), bool)]
    start = time.perf_counter()
    cosine, _ = nearest_neighbours(vectors, 10)
    scores = uniqueness_scores(cosine, outlier_distances(vectors))
    seconds = time.perf_counter() - start
    top = round(0.01 * len(vectors))
    found = [int(truth[np.argsort(-s, kind="stable")[:top]].sum())
             for s in (scores.outlier, scores.uniqueness)]
    return found[0], found[1], len(planted), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--coil", type=Path, default=Path("../shared/data/coil20"))
    args = parser.parse_args()
    settings = load_settings(args.home)
    store = ArtifactStore(settings.artifacts_root(args.home))
    ids, vectors, _ = load_embeddings(store, settings.model.spec.key)
    where = image_locations(load_manifests(store))
    paths = [where[i][1] for i in ids]
    print(f"collection: {len(ids)} images, {vectors.shape[1]} dimensions")

    from vsearch_pipeline.core.decode import decode_rgb
    from vsearch_pipeline.core.models import load_model

    model = load_model(settings.model.spec)
    coil = sorted(args.coil.rglob("*.png"))
    rng = np.random.default_rng(SEED)
    n_plant = round(0.01 * len(ids) / 0.99)
    one_each = {}
    for path in coil:
        one_each.setdefault(path.name.split("__")[0], path)

    def embed(pictures: list) -> np.ndarray:
        return model.embed_images(pictures)

    coil_one = embed([decode_rgb(p.read_bytes(), min_size=model.decode_size)
                      for p in one_each.values()])
    scattered = np.concatenate([coil_one, embed(textures(n_plant - len(coil_one), SEED))])
    grouped = embed([decode_rgb(coil[i].read_bytes(), min_size=model.decode_size)
                     for i in rng.choice(len(coil), n_plant, replace=False)])
    print("\nplanted 1% foreign images: how many the top 1% holds (by outlier score, by uniqueness)")
    alone = np.concatenate([coil_one[:5], scattered[len(coil_one):len(coil_one) + 5]])
    for name, planted in (("textures (three kinds)", scattered[len(coil_one):]),
                          ("20 COIL-20 objects, one view each, and textures", scattered),
                          ("COIL-20 views at random", grouped),
                          ("10 alone: 5 COIL-20 objects and 5 textures", alone)):
        by_outlier, by_uniqueness, total, seconds = planted_found(vectors, planted)
        print(f"  {name}: {by_outlier} of {total} by outlier, {by_uniqueness} by uniqueness; "
              f"{seconds:.1f} s")
    start = time.perf_counter()
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    np.partition(-sims, 10, axis=1)
    del sims
    print(f"  plain way (the whole cosine matrix, partitioned): {time.perf_counter() - start:.1f} s")

    print("\n2% of the photos moved into wrong folders")
    true = [folder_label(p) for p in paths]
    names = sorted({t for t in true if t})
    moved = rng.choice(len(ids), round(0.02 * len(ids)), replace=False)
    given = list(true)
    for i in moved:
        given[i] = str(rng.choice([c for c in names if c != true[i]]))
    wrong = np.array([a != b for a, b in zip(given, true, strict=True)])
    start = time.perf_counter()
    cosine, rows = nearest_neighbours(vectors, LABEL_NEIGHBOURS)
    review = review_labels(given, cosine, rows, 0.5)
    seconds = time.perf_counter() - start
    half = rng.random(len(ids)) < 0.5
    for part, mask in (("all", np.ones(len(ids), bool)), ("first half", half),
                       ("second half", ~half)):
        s = flag_scores(review.flagged & mask, wrong & mask)
        print(f"  default 0.5, {part}: {s['flagged']} flagged, {s['wrong']} wrong, "
              f"precision {s['precision']:.3f}, recall {s['recall']:.3f}")

    def f1(threshold: float) -> float:
        s = flag_scores(review_labels(given, cosine, rows, threshold).flagged & half, wrong & half)
        return 2 * s["precision"] * s["recall"] / max(s["precision"] + s["recall"], 1e-9)

    best = max((0.3, 0.4, 0.5, 0.6, 0.7, 0.8), key=f1)
    s = flag_scores(review_labels(given, cosine, rows, best).flagged & ~half, wrong & ~half)
    print(f"  best F1 on the first half at {best}; on the second: precision {s['precision']:.3f},"
          f" recall {s['recall']:.3f}")
    right = np.mean([review.suggested[i] == true[i] for i in np.flatnonzero(review.flagged & wrong)])
    print(f"  suggested label is the folder it came from: {right:.1%}; {seconds:.1f} s")


if __name__ == "__main__":
    main()

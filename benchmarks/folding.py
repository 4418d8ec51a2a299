"""Search quality through the search service, with near-duplicates folded (the default) and not.

Folding puts an image's near-duplicates under one result card. When `k` counted folded images,
a collection of many views of one object came back with short lists: mAP@10 by class fell from
0.998 to 0.647 on COIL-20 and from 0.863 to 0.616 on the Caltech-101 faces. Now `k` counts
cards and the service asks the index for more until it has them, so folding must cost nothing.

Two collections go through the pipeline with its default settings: COIL-20 (1,440 views of 20
objects, class: the object) and Caltech-101's Faces with Faces_easy (870 photos, class: the
folder; each Faces_easy photo is a crop of the Faces photo of the same name, and the groups now
join them, so folding puts one under the other). Then, through the real service
(`/similar/{id}?k=10`, in process), each sampled image is a query: mAP@10 by class (a card is
relevant when its image has the query's class; the query itself is left out), with folding
on and off, and how many cards came back. `--quick` takes a third of COIL-20, 150 face pairs
and 100 queries of each.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.pipeline import DATA_ENV, caltech_photos
from vsearch_pipeline.runner import run_pipeline
from vsearch_pipeline.settings import load_settings

K = 10


def coil_photos() -> list[Path]:
    root = caltech_photos(quick=False)[0].parents[2] / "coil20"
    if not root.is_dir():
        raise SystemExit(f"COIL-20 not found at {root} (set {DATA_ENV})")
    return sorted(root.glob("*.png"))


def collections(quick: bool) -> dict[str, list[tuple[Path, str, str]]]:
    """Each collection: (photo, path in the source, class); with `quick`, every third COIL-20
    view and the first 150 face pairs."""
    faces = [(p, f"{p.parent.name}/{p.name}", p.parent.name) for p in caltech_photos(quick=False)
             if p.parent.name in ("Faces", "Faces_easy")
             and (not quick or int(p.stem.split("_")[1]) <= 150)]
    coil = [(p, f"{p.name.split('__')[0]}/{p.name}", p.name.split("__")[0]) for p in coil_photos()
            if not quick or int(p.stem.split("__")[1]) % 3 == 0]
    return {"COIL-20": coil, "Caltech-101 Faces + Faces_easy": faces}


def average_precision(relevant: list[bool], total_relevant: int) -> float:
    hits, score = 0, 0.0
    for rank, is_relevant in enumerate(relevant, start=1):
        if is_relevant:
            hits += 1
            score += hits / rank
    return score / min(total_relevant, K) if total_relevant else float("nan")


def measure(home: Path, settings, classes: dict[str, str], queries: int) -> dict[str, float]:
    from fastapi.testclient import TestClient

    from serving.app import app_for_home

    figures: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for label in classes.values():
        sizes[label] = sizes.get(label, 0) + 1
    with TestClient(app_for_home(home, settings)) as client:
        ids: dict[str, str] = {}
        while len(ids) < len(classes):
            page = client.get("/gallery", params={"offset": len(ids), "limit": 500}).json()
            ids |= {i["path"]: i["id"] for i in page["images"]}
            if not page["images"]:
                break
        sample = np.random.default_rng(0).permutation(sorted(ids))[:queries]
        for fold in (True, False):
            precisions, lengths = [], []
            start = time.perf_counter()
            for path in sample:
                answer = client.get(f"/similar/{ids[path]}", params={"k": K, "fold": fold})
                cards = answer.raise_for_status().json()["results"]
                label = classes[path]
                relevant = [classes.get(c["path"]) == label for c in cards]
                precisions.append(average_precision(relevant, sizes[label] - 1))
                lengths.append(len(cards))
            name = "folded" if fold else "unfolded"
            figures[f"map@{K} {name}"] = round(float(np.nanmean(precisions)), 4)
            figures[f"cards {name}"] = round(float(np.mean(lengths)), 2)
            figures[f"ms per query {name}"] = round(1000 * (time.perf_counter() - start) / len(sample), 2)
    return figures


def run(quick: bool = False) -> dict:
    queries = 100 if quick else 500
    measured = {}
    for name, photos in collections(quick).items():
        work = Path(tempfile.mkdtemp(prefix="vsearch-folding-"))
        try:
            source, home = work / "photos", work / "home"
            for photo, path, _ in photos:
                (source / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(photo, source / path)
            settings = load_settings(home, {"source": {"uri": str(source)},
                                            "serving": {"rate_limit_per_s": 0}})
            start = time.perf_counter()
            assert run_pipeline(home, settings, say=lambda _: None)["success"]
            print(f"{name}: {len(photos)} photos through the pipeline in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            figures = measure(home, settings, {path: label for _, path, label in photos}, queries)
            print(f"{name}: {figures}", flush=True)
            measured[name] = figures
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return measured

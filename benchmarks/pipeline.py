"""The whole pipeline on Caltech-101, from an empty home to a searchable index, and what adding
1% new images costs against it.

99% of the photos (every 100th file held out) go into a fresh source folder and a fresh home;
`vsearch materialize`'s own runner builds everything, and each asset's wall time comes from
the Dagster instance. Then the held-out 1% land in the source and take the path the Dagster
daemon gives them: one tick of the source sensor, the `process_batch` run it requests, and the
`update_index` run that follows (the new vectors added to the index, the new pHashes checked
against the old). For comparison, the same index is then rebuilt in full, in the same run.
`--quick` does the same on 300 photos.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from dagster import build_sensor_context

from vsearch_pipeline.automation import FULL_REBUILD, source_sensor_name
from vsearch_pipeline.core.artifacts import latest_index_build
from vsearch_pipeline.core.layout import HomeLayout
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.definitions import make_definitions
from vsearch_pipeline.runner import open_instance, run_pipeline, step_seconds
from vsearch_pipeline.settings import load_settings

DATA_ENV = "VSEARCH_TEST_DATA"
HOLD_OUT_EVERY = 100


def caltech_photos(quick: bool) -> list[Path]:
    root = Path(os.environ.get(DATA_ENV, Path(__file__).resolve().parents[1] / ".." / "shared"
                               / "data")).resolve() / "caltech101"
    if not root.is_dir():
        raise SystemExit(f"Caltech-101 not found at {root} (set {DATA_ENV})")
    photos = sorted(root.rglob("*.jpg"))
    return photos[::30] if quick else photos


def split(photos: list[Path]) -> tuple[list[Path], list[Path]]:
    held = photos[HOLD_OUT_EVERY - 1::HOLD_OUT_EVERY]
    return [p for p in photos if p not in set(held)], held


def place(photos: list[Path], folder: Path) -> None:
    for photo in photos:
        target = folder / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, target)  # a fresh modification time: a file that just arrived


def timed(figures: dict, name: str, fn):
    start = time.perf_counter()
    result = fn()
    figures[name] = round(time.perf_counter() - start, 2)
    print(f"{name:<34} {figures[name]:>9.2f} s", flush=True)
    return result


def full_build(work: Path, photos: list[Path], figures: dict) -> tuple[Path, object]:
    source, home = work / "source", work / "home"
    place(photos, source)
    settings = load_settings(home, {"source": {"uri": str(source)}})
    summary = timed(figures, "full build (empty home)",
                    lambda: run_pipeline(home, settings, say=lambda _: None))
    for step in summary["timings"]:
        figures[f"full:{step['asset']}"] = step["seconds"]
        print(f"  {step['asset']:<32} {step['seconds']:>9.2f} s")
    return home, settings


def add_through_sensor(home: Path, settings, held: list[Path], figures: dict) -> None:
    defs = make_definitions(home, settings)
    instance = open_instance(home)
    sensor = defs.resolve_sensor_def(source_sensor_name(settings.source.uri))

    def tick(cursor: str | None):
        with build_sensor_context(instance_ref=instance.get_ref(), cursor=cursor,
                                  sensor_name=sensor.name, definitions=defs,
                                  resources=defs.resources) as context:
            result = sensor.evaluate_tick(context)
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    cursor = tick(None).cursor  # the daemon's cursor after the first build
    place(held, Path(settings.source.uri))
    keys = [r.partition_key for r in timed(figures, "sensor tick", lambda: tick(cursor)).run_requests]

    def run(job: str, prefix: str, partition: str | None = None, run_config=None):
        outcome = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=partition, run_config=run_config)
        for step in step_seconds(instance, outcome.run_id, partition):
            figures[f"{prefix}:{step['asset']}"] = step["seconds"]

    for key in keys:
        timed(figures, "process_batch (new 1%)", lambda key=key: run("process_batch", "add", key))
    timed(figures, "update_index (incremental)", lambda: run("update_index", "add"))
    store = ArtifactStore(str(HomeLayout(home).artifacts))
    build = latest_index_build(store, settings.model.spec.key)
    figures.update(index_mode=build["mode"], indexed_vectors=build["count"], added_images=len(held))
    figures["add_total"] = round(figures["sensor tick"] + figures["process_batch (new 1%)"]
                                 + figures["update_index (incremental)"], 2)
    timed(figures, "update_index (full rebuild)",
          lambda: run("update_index", "rebuild", run_config=FULL_REBUILD))


def run(quick: bool) -> dict:
    photos = caltech_photos(quick)
    kept, held = split(photos)
    figures: dict = {"images": len(photos), "full_build_images": len(kept)}
    print(f"{len(kept)} images, then {len(held)} more ({len(held) / len(photos):.1%})")
    with tempfile.TemporaryDirectory(prefix="vsearch-bench-") as work:
        home, settings = full_build(Path(work), kept, figures)
        add_through_sensor(home, settings, held, figures)
    figures["add_share_of_full"] = round(figures["add_total"] / figures["full build (empty home)"], 4)
    figures["full_images_per_second"] = round(len(kept) / figures["full build (empty home)"], 2)
    print(f"adding {len(held)} images: {figures['add_total']:.2f} s = "
          f"{figures['add_share_of_full']:.1%} of the full build (target < 5%); index "
          f"{figures['index_mode']}, {figures['indexed_vectors']} vectors")
    return figures

"""Small collections: from an empty home to a searchable index, as a person runs it, and where
each second goes.

400 and 1,360 Caltech-101 photos (spread evenly over the classes) each go into a fresh source
folder, and `vsearch materialize --source DIR --home NEW` runs as a new process, timed from the
spawn to its exit; then `vsearch search` by an image answers from that home (the index is
searchable). Where the seconds go comes from the Dagster instance's step records (each asset's
wall time) and from what the rest is: the process start and imports before the first run, and
the Dagster run starts between the steps. Each case runs twice: with the model's graph cache
empty (`VSEARCH_CACHE` a new folder: the first run on a new machine pays the ONNX export and
the int8 quantization once) and with it filled (every later run). For comparison, in the same
run, the plain way a user would script the same result: seed 004's loop (one image at a time in
fp32 eager PyTorch, centre crop) and a flat FAISS index over its vectors. `--quick` runs the
400-photo case alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.embed import DATA_ENV, plain_loop

REPO = Path(__file__).resolve().parents[1]
RUN_CLI = "import sys; from vsearch_pipeline.cli import main; sys.argv[0] = 'vsearch'; main()"
CASES = (400, 1360)


def caltech_photos(count: int) -> list[Path]:
    """`count` photos spread evenly over Caltech-101's classes (background left out)."""
    default = REPO / ".." / "shared" / "data"
    root = Path(os.environ.get(DATA_ENV, default)).resolve() / "caltech101"
    photos = sorted(p for p in root.glob("*/*.jpg") if p.parent.name != "BACKGROUND_Google")
    return [photos[i] for i in np.linspace(0, len(photos) - 1, count).round().astype(int)]


def imports_floor(env: dict) -> dict[str, float]:
    """What a new process pays before any work: Python itself, and importing the pipeline's
    definitions (Dagster and the assets), best of three."""
    def best(code: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True)
            times.append(time.perf_counter() - start)
        return round(min(times), 2)

    return {"python_s": best("pass"), "import_definitions_s": best("import vsearch_pipeline.definitions")}


def vsearch(args: list[str], env: dict) -> float:
    """Seconds from spawning `vsearch ARGS` to its exit (which must be 0)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN_CLI, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"vsearch {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def place(photos: list[Path], folder: Path) -> None:
    for photo in photos:
        target = folder / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, target)


def step_times(home: Path) -> dict[str, float]:
    """Each asset's wall time over the home's runs (summed over partitions), from the instance."""
    from vsearch_pipeline.runner import open_instance

    instance = open_instance(home)
    totals: dict[str, float] = {}
    for record in instance.get_run_records():
        for step in instance.get_run_step_stats(record.dagster_run.run_id):
            if step.start_time:
                seconds = (step.end_time or step.start_time) - step.start_time
                totals[step.step_key] = totals.get(step.step_key, 0.0) + seconds
    return totals


def one_case(photos: list[Path], work: Path, cache: Path, label: str, figures: dict) -> None:
    source, home = work / "source", work / f"home-{label}"
    if not source.exists():
        place(photos, source)
    env = {**os.environ, "VSEARCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    wall = vsearch(["materialize", "--source", str(source), "--home", str(home)], env)
    steps = step_times(home)
    search = vsearch(["search", "--home", str(home), str(photos[0])], env)
    key = f"{len(photos)}_{label}"
    figures[f"{key}_wall_s"] = round(wall, 2)
    figures[f"{key}_search_s"] = round(search, 2)
    figures[f"{key}_steps_s"] = round(sum(steps.values()), 2)
    figures[f"{key}_outside_steps_s"] = round(wall - sum(steps.values()), 2)
    print(f"  {label}: materialize {wall:6.2f} s (steps {sum(steps.values()):.2f} s, outside the "
          f"steps {wall - sum(steps.values()):.2f} s: process start, imports, run starts); then "
          f"a search by image {search:.2f} s", flush=True)
    for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        figures[f"{key}_step:{step}"] = round(seconds, 2)
        print(f"    {step:<28} {seconds:7.2f} s")


def plain_way(photos: list[Path], figures: dict) -> None:
    """Seed 004's loop and a flat index over its vectors, in this process (torch warm)."""
    import faiss

    start = time.perf_counter()
    vectors, _, _, _ = plain_loop(photos)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors.astype(np.float32))
    seconds = time.perf_counter() - start
    figures[f"{len(photos)}_plain_s"] = round(seconds, 2)
    print(f"  plain loop + flat index: {seconds:6.2f} s (embedding only, no hashes, groups, "
          f"clusters or evaluation; torch already imported)", flush=True)


def run(quick: bool) -> dict:
    figures: dict = {"target_400_s": 30, "target_1360_s": 75}
    floor = imports_floor({**os.environ, "HF_HUB_OFFLINE": "1"})
    figures.update(floor)
    print(f"# a new process: python {floor['python_s']} s, importing the pipeline's definitions "
          f"{floor['import_definitions_s']} s", flush=True)
    for count in CASES[:1] if quick else CASES:
        photos = caltech_photos(count)
        print(f"# {len(photos)} Caltech-101 photos, empty home", flush=True)
        with tempfile.TemporaryDirectory(prefix="vsearch-small-") as folder:
            work = Path(folder)
            one_case(photos, work, work / "empty-cache", "new_machine", figures)
            one_case(photos, work, work / "empty-cache", "cached_graph", figures)
        plain_way(photos, figures)
        ratio = figures[f"{len(photos)}_plain_s"] / figures[f"{len(photos)}_cached_graph_wall_s"]
        figures[f"{len(photos)}_plain_over_vsearch"] = round(ratio, 2)
        print(f"  vsearch (everything, from a new process) vs the plain loop (embedding only): "
              f"{ratio:.2f}x", flush=True)
    return figures

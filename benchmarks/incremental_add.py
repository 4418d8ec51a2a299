"""What adding a few new images costs, against building everything: the sensor path.

    python -m benchmarks.incremental_add --home HOME --new FOLDER [--json FILE]

HOME must already hold a materialized collection whose source is a local folder (for example
`vsearch materialize --home HOME --source SRC` over 99% of Caltech-101, timed with
/usr/bin/time). The files under FOLDER are copied into the source (keeping their relative
paths), then, as the Dagster daemon would: one tick of the source sensor, the `process_batch`
run it requests, and the `update_index` run that follows. For comparison, the same index is
then rebuilt in full (`update_index` with `full_rebuild`), in the same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from dagster import build_sensor_context

from vsearch_pipeline.automation import FULL_REBUILD, source_sensor_name
from vsearch_pipeline.core.layout import latest_index_build
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.definitions import make_definitions
from vsearch_pipeline.runner import open_instance, step_seconds
from vsearch_pipeline.settings import home_dir, load_settings


def _timed(what: str, figures: dict, fn):
    start = time.perf_counter()
    result = fn()
    figures[what] = round(time.perf_counter() - start, 2)
    print(f"{what:<28} {figures[what]:>8.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--new", required=True, type=Path, help="folder of images to add")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    home = home_dir(args.home)
    settings = load_settings(home)
    defs = make_definitions(home, settings)
    instance = open_instance(home)
    sensor = defs.resolve_sensor_def(source_sensor_name(settings.source.uri))
    figures: dict[str, float] = {}

    def tick(cursor: str | None):
        with build_sensor_context(instance_ref=instance.get_ref(), cursor=cursor,
                                  sensor_name=sensor.name, definitions=defs,
                                  resources=defs.resources) as context:
            result = sensor.evaluate_tick(context)
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result

    cursor = _timed("first tick (sets cursor)", figures, lambda: tick(None)).cursor
    source = Path(settings.source.uri)
    added = [p for p in sorted(args.new.rglob("*")) if p.is_file()]
    for path in added:
        target = source / path.relative_to(args.new)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        target.touch()
    result = _timed("sensor tick", figures, lambda: tick(cursor))
    keys = [r.partition_key for r in result.run_requests]
    print(f"new batches {keys} with {len(added)} files")

    def run(job: str, partition: str | None = None, run_config=None):
        outcome = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=partition, run_config=run_config)
        for step in step_seconds(instance, outcome.run_id, partition):
            figures[f"{job}:{step['asset']}"] = step["seconds"]
        return outcome

    for key in keys:
        _timed("process_batch", figures, lambda key=key: run("process_batch", key))
    _timed("update_index (incremental)", figures, lambda: run("update_index"))
    store = ArtifactStore(settings.storage.root or str(home / "artifacts"))
    build = latest_index_build(store, "efficientnet-lite0")
    figures["index_mode"] = build["mode"]
    figures["vectors"] = build["count"]
    figures["added_total_s"] = round(figures["sensor tick"] + figures["process_batch"]
                                     + figures["update_index (incremental)"], 2)
    print(f"{'adding in total':<28} {figures['added_total_s']:>8.2f} s "
          f"({len(added)} images, index {build['mode']}, {build['count']} vectors)")
    _timed("update_index (full rebuild)", figures,
           lambda: run("update_index", run_config=FULL_REBUILD))
    for name, value in figures.items():
        if ":" in name:
            print(f"  {name:<40} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""Running the graph from the command line: the Dagster instance of a home, new ingest batches,
and the two jobs (per batch, then the collection) executed in process."""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from dagster import DagsterInstance, Definitions, JobDefinition

from vsearch_pipeline.assets.common import ingest_batches
from vsearch_pipeline.core.artifacts import load_manifests
from vsearch_pipeline.core.batches import batch_key, record_batch, stored_batches, unbatched
from vsearch_pipeline.core.layout import HomeLayout, embeddings_dir, manifest_path
from vsearch_pipeline.core.sources import SourceObject
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.definitions import make_definitions
from vsearch_pipeline.interrupts import STOP_HOOKS, raise_if_stop_requested
from vsearch_pipeline.preflight import check_before_work
from vsearch_pipeline.run_log import LOGGER_KEY, RUN_CONFIG, Progress, log_file_handler, run_logger
from vsearch_pipeline.settings import Settings

REPO_INSTANCE_CONFIG = Path(__file__).resolve().parents[1] / "dagster.yaml"


def dagster_home(home: Path) -> Path:
    return HomeLayout(home).dagster


def instance_folder(home: Path) -> Path:
    """The home's DAGSTER_HOME, made and given dagster.yaml the first time."""
    folder = dagster_home(home)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "dagster.yaml"
    if REPO_INSTANCE_CONFIG.exists() and not config.exists():
        shutil.copyfile(REPO_INSTANCE_CONFIG, config)
    return folder


def open_instance(home: Path) -> DagsterInstance:
    """The home's Dagster instance (SQLite storage inside it), set up from dagster.yaml."""
    folder = instance_folder(home)
    os.environ["DAGSTER_HOME"] = str(folder)
    return DagsterInstance.from_config(str(folder))


def register_new_batch(instance: DagsterInstance, store: ArtifactStore,
                       objects: list[SourceObject], source_uri: str) -> str | None:
    """Record the objects not seen in any earlier batch as a new batch; return its key.

    An object is new when its URI or its version (ETag, or size and mtime) is new.
    """
    batches = stored_batches(store)
    new = unbatched(objects, batches)
    sync_partitions(instance, batches)
    if not new:
        return None
    key = record_batch(store, batch_key(len(batches) + 1), new, source_uri, "command line")
    instance.add_dynamic_partitions(ingest_batches.name, [key])
    return key


def sync_partitions(instance: DagsterInstance, batches: dict[str, dict]) -> None:
    """Every stored batch is a partition (repairs a run cut off between the two writes)."""
    existing = set(instance.get_dynamic_partitions(ingest_batches.name))
    missing = sorted(set(batches) - existing)
    if missing:
        instance.add_dynamic_partitions(ingest_batches.name, missing)


def run_pipeline(home: Path, settings: Settings, say: Callable[[str], None] = print,
                 objects: list[SourceObject] | None = None, bars: bool | None = None) -> dict:
    """Register new files as a batch, process every batch, then refresh the collection assets.

    `objects` is the source's listing when check_before_work already made it. Dagster's event
    log goes to the instance and to the home's log file (logs/dagster.log); the terminal gets
    `say` lines (each run's when it has started) and one progress bar per long step (`bars`;
    default: when stderr is a terminal, else a `say` line when the step is under way and one
    when it is done)."""
    if objects is None:
        objects = check_before_work(home, settings)
    instance = open_instance(home)
    log_file = log_file_handler(home)
    progress = Progress(say, sys.stderr.isatty() if bars is None else bars,
                        HomeLayout(home).dagster_log)
    try:
        return _run_jobs(home, settings, say, objects, instance, [log_file, progress], progress)
    finally:
        progress.close()
        log_file.close()


def _run_jobs(home: Path, settings: Settings, say: Callable[[str], None],
              objects: list[SourceObject], instance: DagsterInstance, handlers: list,
              progress: Progress) -> dict:
    defs = make_definitions(home, settings)
    store = defs.resources["storage"].store
    say(f"source {settings.source.uri}: {len(objects)} files")
    new_key = register_new_batch(instance, store, objects, settings.source.uri)
    say(f"new ingest batch {new_key}" if new_key else "no new files since the last batch")
    keys = sorted(instance.get_dynamic_partitions(ingest_batches.name))
    if not keys:
        raise ValueError(f"the source {settings.source.uri} holds no files yet")
    results, timings = {}, []
    for key in keys:
        fresh = not store.exists(manifest_path(key))
        progress.partition = key
        progress.announce = f"batch {key}: {'manifest, ' if fresh else ''}subset, embeddings, hashes"
        raise_if_stop_requested()
        result = logged_job(defs, "process_batch", handlers).execute_in_process(
            partition_key=key, instance=instance, run_config=RUN_CONFIG, raise_on_error=True)
        results[key] = result.success
        timings += step_seconds(instance, result.run_id, key)
    check_something_to_index(store, defs.resources["model"].spec.key)
    progress.partition = ""
    progress.announce = "collection: near-duplicate groups, FAISS index, clusters, evaluation"
    raise_if_stop_requested()
    result = logged_job(defs, "refresh_collection", handlers).execute_in_process(
        instance=instance, run_config=RUN_CONFIG, raise_on_error=True)
    results["collection"] = result.success
    timings += step_seconds(instance, result.run_id, None)
    return {"batches": keys, "new_batch": new_key, "success": all(results.values()),
            "run_id": result.run_id, "timings": timings}


def logged_job(defs: Definitions, name: str, handlers: list) -> JobDefinition:
    """The stoppable job, logging to `handlers` instead of Dagster's console logger."""
    return stoppable_job(defs, name).with_logger_defs({LOGGER_KEY: run_logger(handlers)})


def stoppable_job(defs: Definitions, name: str) -> JobDefinition:
    """The job, with a check for a stop request (Ctrl-C) after each step: see interrupts.py."""
    return defs.resolve_job_def(name).with_hooks(STOP_HOOKS)


def check_something_to_index(store: ArtifactStore, model_key: str) -> None:
    """Before the collection job: a source without one embedded image gets one line saying why,
    rather than the same error from every collection step (retried, with its traceback)."""
    shards = store.list(embeddings_dir(model_key), ".parquet")
    if any(len(store.read_parquet(shard, columns=["id"])) for shard in shards):  # stops at the first
        return
    statuses = Counter(load_manifests(store).column("status").to_pylist())
    usable = statuses.pop("ok", 0)
    found = ", ".join(f"{n} {status}" for status, n in statuses.most_common())
    if usable:
        why = (f"none of its {usable} usable images was embedded (subset.fraction, seed and "
               f"force_include choose which are)")
    else:
        why = f"none of its files is a usable image ({found})"
    raise ValueError(f"nothing to index: {why}; each file's status and reason is in the "
                     f"manifest (artifacts/manifest/*.parquet)")


def step_seconds(instance: DagsterInstance, run_id: str, partition: str | None) -> list[dict]:
    """Wall time of each asset of a run, from the instance's step records."""
    return [{"asset": s.step_key, "partition": partition or "",
             "seconds": round((s.end_time or s.start_time) - s.start_time, 2)}
            for s in instance.get_run_step_stats(run_id) if s.start_time]

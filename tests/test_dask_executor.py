"""The per-batch job on a Dask cluster: several partitions at once, each a real Dagster run whose
steps the `dask` executor sends to the cluster's worker processes, with the images and every
artifact the steps exchange in a bucket on a real S3 server (moto in server mode) on 127.0.0.1.

Nothing is handed over in memory: the workers find the graph the way workers on other machines
would, by importing `vsearch_pipeline.definitions` (which reads the home named by VSEARCH_HOME),
and each run is launched in a process of its own, as Dagster's run launcher does.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from dagster import DagsterInstance
from distributed import Client, LocalCluster, get_task_stream

from vsearch_pipeline.assets.common import ingest_batches
from vsearch_pipeline.core.embed import table_vectors
from vsearch_pipeline.core.layout import (
    HOME_ENV,
    batch_path,
    embeddings_dir,
    embeddings_path,
    hashes_path,
    manifest_path,
    subset_path,
)
from vsearch_pipeline.core.metrics_queue import QUEUE
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.definitions import make_definitions
from vsearch_pipeline.execution import RunScopedDaskExecutor, executor_for
from vsearch_pipeline.resources import EmbeddingModelResource, ImageSource
from vsearch_pipeline.runner import open_instance, register_new_batch
from vsearch_pipeline.settings import ExecutionSettings, load_settings, save_settings

BUCKET = "scaleout"
CLASSES = ["accordion", "anchor", "pyramid", "windsor_chair"]  # one ingest batch each
PER_CLASS = 6
RUN_TIMEOUT_S = 900  # about 130 s on a quiet 2-core machine; generous for a loaded one

# The run launcher: one process per Dagster run, each executing the job for one partition against
# the home's instance, with the definitions imported by module. The runs' processes are forked
# from one that has imported the definitions already (that import alone takes seconds of CPU).
LAUNCH_RUNS = """
import json, multiprocessing, sys
from pathlib import Path
from dagster import execute_job
from dagster._core.definitions.reconstruct import ReconstructableRepository
import vsearch_pipeline.definitions
from vsearch_pipeline.runner import open_instance

def run(home, key, out):
    job = ReconstructableRepository.for_module(
        "vsearch_pipeline.definitions", "defs").get_reconstructable_job("process_batch")
    with open_instance(home) as instance:
        result = execute_job(job, instance=instance, tags={"dagster/partition": key})
    out.write_text(json.dumps({"run_id": result.run_id, "success": result.success}))

home, out = Path(sys.argv[1]), Path(sys.argv[2])
runs = [multiprocessing.get_context("fork").Process(target=run, args=(home, key, out / f"{key}.json"))
        for key in sys.argv[3:]]
for process in runs:
    process.start()
for process in runs:
    process.join()
"""


def _config(executor) -> dict:
    return executor.apply_config_mapping({}).value["config"]


def test_executor_for_each_setting():
    assert executor_for(ExecutionSettings(executor="in_process")).name == "in_process"
    assert executor_for(ExecutionSettings()).name == "multiprocess"
    assert _config(executor_for(ExecutionSettings(max_concurrent=3)))["max_concurrent"] == 3
    dask = executor_for(ExecutionSettings(executor="dask", dask_address="tcp://scheduler:8786"))
    assert dask.name == "dask"
    config = _config(dask)
    assert config == {"cluster": {"existing": {"address": "tcp://scheduler:8786"}}}
    made = dask.executor_creation_fn(type("Init", (), {"executor_config": config})())
    assert isinstance(made, RunScopedDaskExecutor) and made.address == "tcp://scheduler:8786"


def test_only_the_per_batch_job_goes_to_the_cluster(tmp_path):
    """The collection jobs write the DuckDB file beside the instance: they stay local."""
    from vsearch_pipeline.definitions import make_definitions

    settings = load_settings(tmp_path, {"source": {"uri": str(tmp_path)}, "execution": {
        "executor": "dask", "dask_address": "tcp://scheduler:8786"}})
    defs = make_definitions(tmp_path, settings)
    executors = {j: defs.resolve_job_def(j).executor_def.name
                 for j in ("process_batch", "update_index", "recluster", "refresh_collection")}
    assert executors == {"process_batch": "dask", "update_index": "multiprocess",
                         "recluster": "multiprocess", "refresh_collection": "multiprocess"}


def test_executor_settings_are_checked():
    with pytest.raises(ValueError, match="execution.dask_address"):
        executor_for(ExecutionSettings(executor="dask"))
    with pytest.raises(ValueError, match="execution.executor must be one of"):
        load_settings(Path("/nonexistent"), {"execution": {"executor": "celery"}})


@pytest.fixture
def home(tmp_path, monkeypatch):
    """What a worker needs in its environment: the home and the S3 credentials. Set before the
    cluster starts, so that its worker processes inherit it."""
    home = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return home


def _upload_batches(endpoint: str, photos: Path, store: ArtifactStore, source: ImageSource,
                    instance: DagsterInstance) -> list[str]:
    """Each class arrives as its own upload and becomes its own ingest batch (partition)."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    keys = []
    for name in CLASSES:
        for path in sorted((photos / name).glob("*.jpg"))[:PER_CLASS]:
            client.upload_file(str(path), BUCKET, f"images/{name}/{path.name}")
        keys.append(register_new_batch(instance, store, source.list(), source.uri))
    return keys


def _run_all(home: Path, keys: list[str], out: Path) -> dict[str, dict]:
    """One Dagster run per partition, all at once (as a backfill launches them), each in its
    own process, all on the same Dask cluster."""
    out.mkdir()
    with (out / "runs.log").open("w") as log:
        launcher = subprocess.run([sys.executable, "-c", LAUNCH_RUNS, str(home), str(out), *keys],
                                  stdout=log, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S)
    results = {key: json.loads((out / f"{key}.json").read_text())
               for key in keys if (out / f"{key}.json").exists()}
    if launcher.returncode != 0 or len(results) != len(keys):
        pytest.fail(f"runs finished: {sorted(results)}; the launcher exited with "
                    f"{launcher.returncode}:\n" + (out / "runs.log").read_text()[-6000:])
    return results


def _overlapping(spans: list[tuple[float, float, str]]) -> list[tuple[str, str]]:
    """Pairs of tasks of different partitions that computed at the same time."""
    pairs = []
    for i, (start_a, stop_a, key_a) in enumerate(spans):
        for start_b, stop_b, key_b in spans[i + 1:]:
            if key_a != key_b and start_a < stop_b and start_b < stop_a:
                pairs.append((key_a, key_b))
    return pairs


def _vectors(store: ArtifactStore, path: str) -> dict[str, np.ndarray]:
    table = store.read_parquet(path)
    return dict(zip(table.column("id").to_pylist(), table_vectors(table), strict=True))


def _in_process_reference(home: Path, settings, store: ArtifactStore, keys: list[str]) -> ArtifactStore:
    """The same partitions (the same frozen batch files) run in this process, into another
    prefix of the bucket, with an instance of their own."""
    reference = settings.model_copy(update={
        "storage": settings.storage.model_copy(update={"root": f"s3://{BUCKET}/reference"}),
        "execution": settings.execution.model_copy(update={"executor": "in_process"})})
    defs = make_definitions(home.parent / "reference", reference)
    ref_store = defs.resources["storage"].store
    for key in keys:
        ref_store.write_json(batch_path(key), store.read_json(batch_path(key)))
    job = defs.resolve_job_def("process_batch")
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(ingest_batches.name, keys)
        for key in keys:
            assert job.execute_in_process(partition_key=key, instance=instance).success
    return ref_store


@pytest.mark.slow
def test_partitions_run_in_parallel_on_dask(s3_endpoint, home, shared_data, tmp_path):
    started = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        settings = load_settings(home, {
            "source": {"uri": f"s3://{BUCKET}/images", "endpoint_url": s3_endpoint},
            "storage": {"root": f"s3://{BUCKET}/artifacts", "endpoint_url": s3_endpoint},
            "execution": {"executor": "dask", "dask_address": cluster.scheduler_address},
        })
        save_settings(home, settings)
        store = ArtifactStore(settings.storage.root, s3_endpoint)
        source = ImageSource(**settings.source.model_dump())
        with open_instance(home) as instance:
            keys = _upload_batches(s3_endpoint, shared_data / "caltech101", store, source, instance)
        assert keys == ["b00001", "b00002", "b00003", "b00004"]

        with get_task_stream(client) as stream:
            results = _run_all(home, keys, tmp_path / "runs")
        workers = set(client.scheduler_info()["workers"])
    print(f"{len(keys)} runs on dask in {time.perf_counter() - started:.1f}s")

    assert {k: r["success"] for k, r in results.items()} == dict.fromkeys(keys, True)
    with open_instance(home) as instance:
        for key, result in results.items():
            run = instance.get_run_by_id(result["run_id"])
            assert run.status.value == "SUCCESS" and run.tags["dagster/partition"] == key

    model_key = EmbeddingModelResource(**settings.model.model_dump()).spec.key
    for key in keys:
        assert len(store.read_parquet(manifest_path(key))) == PER_CLASS
        assert len(store.read_parquet(subset_path(key))) == PER_CLASS
        assert len(store.read_parquet(embeddings_path(model_key, key))) == PER_CLASS
    shard_ids = [i for shard in store.list(embeddings_dir(model_key), ".parquet")
                 for i in store.read_parquet(shard, columns=["id"]).column("id").to_pylist()]
    assert len(shard_ids) == len(set(shard_ids)) == PER_CLASS * len(keys)
    assert all(len(store.read_parquet(hashes_path(key))) == PER_CLASS for key in keys)
    assert len(store.list(QUEUE, ".json")) == 4 * len(keys)  # figures wait in storage for DuckDB
    # On local disk only the settings and the Dagster instance: the workers wrote nothing else.
    local = {p.name for p in home.iterdir()}
    assert local <= {"vsearch.yaml", "dagster"}, local

    # The Dask side: every step of every run was a task on the cluster (keyed by its run), both
    # workers computed, and steps of different partitions ran at the same time.
    key_of = {r["run_id"]: key for key, r in results.items()}
    tasks = [t for t in stream.data if str(t["key"]).startswith("process_batch.")]
    spans = []
    for task in tasks:
        partition = key_of[str(task["key"])[-36:]]  # the task key ends with the run id
        spans += [(part["start"], part["stop"], partition)
                  for part in task["startstops"] if part["action"] == "compute"]
    print("tasks:", sorted((str(t["key"]).split("-")[0], t["worker"]) for t in tasks))
    print("overlapping partitions:", sorted(set(_overlapping(spans))))
    assert len(tasks) == 4 * len(keys)  # manifest, subset, embeddings, hashes of each batch
    assert {t["worker"] for t in tasks} == workers and len(workers) == 2
    assert _overlapping(spans)

    # The same partitions run in process give the same vectors.
    reference = _in_process_reference(home, settings, store, keys)
    for key in keys:
        ours = _vectors(store, embeddings_path(model_key, key))
        theirs = _vectors(reference, embeddings_path(model_key, key))
        assert ours.keys() == theirs.keys()
        for image_id, vector in ours.items():
            np.testing.assert_allclose(vector, theirs[image_id], atol=1e-5)

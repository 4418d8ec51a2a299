"""The S3 sensor, the incremental index and the schedules, against a real S3 server (moto in
server mode) on 127.0.0.1 and a real Dagster instance: new objects become exactly one new
partition, their vectors are added to the index without embedding anything twice, and an
incremental index answers exactly as a full rebuild does."""

import json
from pathlib import Path

import boto3
import numpy as np
import pytest
from dagster import DagsterInstance, build_schedule_context, build_sensor_context

from vsearch_pipeline.assets.common import ingest_batches
from vsearch_pipeline.automation import FULL_REBUILD
from vsearch_pipeline.core.artifacts import latest_index_build
from vsearch_pipeline.core.embed import table_vectors
from vsearch_pipeline.core.index import deserialize, search
from vsearch_pipeline.core.model_spec import DEFAULT_KEY
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.definitions import make_definitions
from vsearch_pipeline.runner import open_instance
from vsearch_pipeline.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("s3_credentials")]
BUCKET = "collection"
PREFIX = "incoming"
CLASSES = ["accordion", "airplanes", "anchor", "ant", "barrel", "bass", "beaver"]


def _photos(shared_data: Path, count: int, skip: int = 0) -> list[Path]:
    """`count` Caltech-101 photos, taken round-robin from a few classes, after `skip` of them."""
    per_class = [sorted((shared_data / "caltech101" / c).glob("*.jpg")) for c in CLASSES]
    ordered = [files[i] for i in range(max(map(len, per_class))) for files in per_class
               if i < len(files)]
    return ordered[skip:skip + count]


class Collection:
    """A home whose source and artifacts are both in the bucket, with its Dagster instance."""

    def __init__(self, endpoint: str, home: Path):
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket=BUCKET)
        self.settings = load_settings(home, {
            "source": {"uri": f"s3://{BUCKET}/{PREFIX}", "endpoint_url": endpoint},
            "storage": {"root": f"s3://{BUCKET}/artifacts", "endpoint_url": endpoint},
            "index": {"index_type": "flat", "rebuild_growth_ratio": 0.5},
            "clusters": {"min_cluster_size": 3},
            "near_duplicates": {"method": "phash"},  # the method that groups incrementally
            # an incremental index equals a full rebuild only without database-side augmentation,
            # which augments a new vector from the indexed ones alone
            "retrieval": {"database_augmentation_k": 0},
        })
        self.defs = make_definitions(home, self.settings)
        self.instance: DagsterInstance = open_instance(home)
        self.store = ArtifactStore(f"s3://{BUCKET}/artifacts", endpoint)
        self.cursor: str | None = None

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=data)

    def tick(self):
        """One evaluation of the sensor with Dagster's sensor testing context, as the daemon
        would run it: its partition requests are applied and its cursor kept."""
        sensor = self.defs.resolve_sensor_def("s3_new_objects")
        # as a context manager: the instance it opens from the ref is closed again (an instance
        # left open keeps Dagster's current defs-state storage pointing at it after it is gone)
        with build_sensor_context(instance_ref=self.instance.get_ref(), cursor=self.cursor,
                                  sensor_name=sensor.name, definitions=self.defs,
                                  resources=self.defs.resources) as context:
            result = sensor.evaluate_tick(context)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name,
                                                 list(request.partition_keys))
        self.cursor = result.cursor
        return result

    def run(self, job: str, partition_key: str | None = None, run_config=None):
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, partition_key=partition_key, run_config=run_config)
        assert result.success
        return result

    def materializations(self, asset: str, partition: str | None = None) -> list:
        from dagster import AssetKey

        records = self.instance.fetch_materializations(AssetKey(asset), limit=1000).records
        return [r.asset_materialization for r in records
                if partition is None or r.asset_materialization.partition == partition]


def _index(collection: Collection) -> tuple[dict, list[str]]:
    build = latest_index_build(collection.store, DEFAULT_KEY)
    folder = f"index/{DEFAULT_KEY}/{build['version']}"
    ids = collection.store.read_parquet(f"{folder}/ids.parquet").column("id").to_pylist()
    return build, ids


def _search_all(collection: Collection, queries: np.ndarray, k: int = 10):
    build, ids = _index(collection)
    index = deserialize(collection.store.read_bytes(
        f"index/{DEFAULT_KEY}/{build['version']}/index.faiss"))
    scores, positions = search(index, queries, k)
    return [[ids[p] for p in row] for row in positions], scores


def test_s3_sensor_turns_new_objects_into_one_partition_and_the_index_grows(
        s3_endpoint, tmp_path, shared_data):
    collection = Collection(s3_endpoint, tmp_path / "home")
    first = _photos(shared_data, 50)
    for path in first[:-1]:
        collection.put(f"{path.parent.name}/{path.name}", path.read_bytes())
    collection.put("scans/scan-0001.dat", first[-1].read_bytes())  # a JPEG, by content
    collection.put("notes/readme.jpg", b"<!doctype html><html>not a photo</html>")
    collection.put("notes/list.txt", b"accordion\nairplanes\n")

    result = collection.tick()
    assert [r.partition_key for r in result.run_requests] == ["b00001"]
    assert result.run_requests[0].job_name in (None, "process_batch")
    assert collection.instance.get_dynamic_partitions(ingest_batches.name) == ["b00001"]
    batch = collection.store.read_json("batches/b00001.json")
    assert len(batch["objects"]) == 50
    assert {o["path"] for o in batch["objects"]} >= {"scans/scan-0001.dat"}
    assert not {o["path"] for o in batch["objects"]} & {"notes/readme.jpg", "notes/list.txt"}

    again = collection.tick()
    assert not again.run_requests and again.skip_message

    batch_run = collection.run("process_batch", "b00001")
    request = _index_after_batch_request(collection, batch_run)
    assert request.run_key == f"after-{batch_run.run_id}" and request.job_name in (None, "update_index")
    collection.run("update_index")
    build, ids = _index(collection)
    assert build["count"] == 50 and build["mode"] == "full"

    second = _photos(shared_data, 20, skip=50)
    for path in second:
        collection.put(f"{path.parent.name}/{path.name}", path.read_bytes())
    result = collection.tick()
    assert [r.partition_key for r in result.run_requests] == ["b00002"]
    assert sorted(collection.instance.get_dynamic_partitions(ingest_batches.name)) == [
        "b00001", "b00002"]
    manifest = collection.store.read_parquet("manifest/b00002.parquet") if collection.store.exists(
        "manifest/b00002.parquet") else None
    assert manifest is None  # nothing runs until the run request is executed
    collection.run("process_batch", "b00002")
    manifest = collection.store.read_parquet("manifest/b00002.parquet")
    assert len(manifest) == 20, manifest.to_pylist()
    assert set(manifest.column("status").to_pylist()) == {"ok"}, manifest.column("reason").to_pylist()

    collection.run("update_index")
    build, ids = _index(collection)
    assert build["count"] == 70 and len(set(ids)) == 70
    assert build["mode"] == "incremental" and build["added"] == 20

    # nothing embedded twice: each image's vector was computed by exactly one materialization
    embedded = sum(m.metadata["embedded_now"].value for m in collection.materializations("embeddings"))
    assert embedded == 70
    shard_ids = [collection.store.read_parquet(p, columns=["id"]).column("id").to_pylist()
                 for p in collection.store.list(f"embeddings/{DEFAULT_KEY}", ".parquet")]
    assert sum(map(len, shard_ids)) == 70 and len(set().union(*map(set, shard_ids))) == 70

    # the incremental index answers exactly as a full rebuild of the same vectors
    queries = np.concatenate([table_vectors(collection.store.read_parquet(p))
                              for p in collection.store.list(f"embeddings/{DEFAULT_KEY}",
                                                             ".parquet")])
    incremental = _search_all(collection, queries)
    collection.run("update_index", run_config=FULL_REBUILD)
    build, _ = _index(collection)
    assert build["mode"] == "full" and "requested" in build["reason"]
    rebuilt = _search_all(collection, queries)
    assert incremental[0] == rebuilt[0]
    np.testing.assert_allclose(incremental[1], rebuilt[1], rtol=0, atol=1e-6)

    # an overwritten object is a new version of that image; a deleted one leaves the index at
    # the next full rebuild
    overwritten, deleted = second[0], second[1]
    replacement = _photos(shared_data, 1, skip=80)[0]
    collection.put(f"{overwritten.parent.name}/{overwritten.name}", replacement.read_bytes())
    collection.client.delete_object(Bucket=BUCKET,
                                    Key=f"{PREFIX}/{deleted.parent.name}/{deleted.name}")
    result = collection.tick()
    assert [r.partition_key for r in result.run_requests] == ["b00003"]
    assert [o["path"] for o in collection.store.read_json("batches/b00003.json")["objects"]] == [
        f"{overwritten.parent.name}/{overwritten.name}"]
    collection.run("process_batch", "b00003")
    collection.run("update_index")
    build, ids = _index(collection)
    assert build["mode"] == "incremental" and build["count"] == 71  # stale entries until rebuild
    collection.run("update_index", run_config=FULL_REBUILD)
    build, ids = _index(collection)
    assert build["mode"] == "full" and build["removed"] == 2 and build["count"] == 69
    new_id = collection.store.read_parquet("manifest/b00003.parquet").column("id")[0].as_py()
    assert new_id in ids

    # pHashes of later batches were checked against the earlier ones, incrementally
    groups = collection.materializations("near_duplicate_groups")
    assert {m.metadata["mode"].value for m in groups} == {"full", "incremental"}

    # the nightly recluster compares its figures with the previous run's
    checks = [e for run in (collection.run("recluster"), collection.run("recluster"))
              for e in run.get_asset_check_evaluations()]
    assert [c.metadata["compared_with_previous"].value for c in checks] == [False, True]
    assert all(c.passed for c in checks)  # same images, same settings: no drift


def _index_after_batch_request(collection: Collection, batch_run):
    """What the run-status sensor asks for when a batch run succeeds."""
    from dagster import DagsterEventType, build_run_status_sensor_context

    success = next(e for e in batch_run.all_events if e.event_type == DagsterEventType.RUN_SUCCESS)
    sensor = collection.defs.resolve_sensor_def("index_after_batch")
    context = build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=success, dagster_instance=collection.instance,
        dagster_run=batch_run.dagster_run)
    return sensor(context)


def test_folder_sensor_takes_files_that_share_a_timestamp(tmp_path):
    """The local-folder sensor: several files stamped with the same second all arrive, each
    once, and a file renamed to look like text is taken by its content."""
    import os

    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()

    def write(name: str, colour: tuple, stamp: float) -> None:
        path = folder / name
        Image.new("RGB", (32, 32), colour).save(path, format="PNG")
        os.utime(path, (stamp, stamp))

    home = tmp_path / "home"
    settings = load_settings(home, {"source": {"uri": str(folder)}})
    defs = make_definitions(home, settings)
    instance = open_instance(home)
    sensor = defs.resolve_sensor_def("folder_new_files")
    write("a.png", (255, 0, 0), 1_800_000_000)
    write("b.png", (0, 255, 0), 1_800_000_000)
    def tick(cursor: str | None):
        with build_sensor_context(instance_ref=instance.get_ref(), cursor=cursor,
                                  sensor_name=sensor.name, definitions=defs,
                                  resources=defs.resources) as context:
            return sensor.evaluate_tick(context)

    cursor = tick(None).cursor
    instance.add_dynamic_partitions(ingest_batches.name, ["b00001"])
    write("c.png", (0, 0, 255), 1_800_000_000)  # same second as the files already taken
    write("d.txt", (9, 9, 9), 1_800_000_000)  # a PNG by content
    (folder / "e.png").write_text("not an image")
    result = tick(cursor)
    assert [r.partition_key for r in result.run_requests] == ["b00002"]
    store = ArtifactStore(str(home / "artifacts"))
    assert sorted(o["path"] for o in store.read_json("batches/b00002.json")["objects"]) == [
        "c.png", "d.txt"]
    assert json.loads(result.cursor)["watermark"] == 1_800_000_000


def test_schedules_request_a_full_rebuild_and_a_nightly_recluster(tmp_path):
    home = tmp_path / "home"
    settings = load_settings(home, {"source": {"uri": str(tmp_path)},
                                    "automation": {"recluster_cron": "30 1 * * *"}})
    defs = make_definitions(home, settings)
    instance = open_instance(home)

    rebuild = defs.resolve_schedule_def("index_rebuild")
    requests = rebuild.evaluate_tick(build_schedule_context(instance)).run_requests
    assert len(requests) == 1 and requests[0].job_name in (None, "update_index")
    assert rebuild.job_name == "update_index"
    assert requests[0].run_config["ops"] == {"faiss_index": {"config": {"full_rebuild": True}}}
    assert rebuild.cron_schedule == "0 3 * * 0"

    recluster = defs.resolve_schedule_def("recluster_nightly")
    assert recluster.cron_schedule == "30 1 * * *" and recluster.job_name == "recluster"
    assert len(recluster.evaluate_tick(build_schedule_context(instance)).run_requests) == 1
    job = defs.resolve_job_def("recluster")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "clusters", "curation_grounding", "evaluation", "collection_insight"}


def test_ivf_full_build_goes_shard_by_shard_and_drops_deleted_files(tmp_path):
    """An IVF index is trained on a sample and filled shard by shard; a full rebuild leaves out
    a file deleted from the source, and its recall is measured without loading every vector."""
    from collections import Counter

    from vsearch_pipeline.core.demo import build_demo_corpus
    from vsearch_pipeline.runner import run_pipeline

    images, _ = build_demo_corpus(tmp_path / "demo")
    home = tmp_path / "home"
    settings = load_settings(home, {"source": {"uri": str(images)},
                                    "index": {"index_type": "ivf-flat", "nprobe": 64},
                                    "clusters": {"min_cluster_size": 3}})
    assert run_pipeline(home, settings, say=print)["success"]
    store = ArtifactStore(str(home / "artifacts"))
    first = latest_index_build(store, DEFAULT_KEY)
    assert first["mode"] == "full" and first["params"]["index_type"] == "ivf-flat"
    assert first["recall_at_10"] == 1.0  # every list probed

    manifest = store.read_parquet("manifest/b00001.parquet").to_pylist()
    copies = Counter(r["id"] for r in manifest if r["status"] == "ok")
    unique = next(r for r in manifest if r["status"] == "ok" and copies[r["id"]] == 1)
    (images / unique["path"]).unlink()
    defs = make_definitions(home, settings)
    assert defs.resolve_job_def("update_index").execute_in_process(
        instance=open_instance(home), run_config=FULL_REBUILD).success
    rebuilt = latest_index_build(store, DEFAULT_KEY)
    ids = store.read_parquet(f"index/{DEFAULT_KEY}/{rebuilt['version']}/ids.parquet")
    assert rebuilt["removed"] == 1 and rebuilt["count"] == first["count"] - 1
    assert unique["id"] not in ids.column("id").to_pylist()


def test_a_second_model_materializes_side_by_side(tmp_path):
    """Re-embedding every partition with another model keeps the first model's embeddings and
    index, and the evaluation tables hold both, to compare them by query."""
    import duckdb

    from vsearch_pipeline.core.demo import build_demo_corpus
    from vsearch_pipeline.runner import run_pipeline

    images, grounding = build_demo_corpus(tmp_path / "demo")
    home = tmp_path / "home"
    base = {"source": {"uri": str(images)}, "index": {"index_type": "flat"},
            "clusters": {"min_cluster_size": 3},
            "evaluation": {"grounding_sets": [str(grounding)]}}
    assert run_pipeline(home, load_settings(home, base), say=print)["success"]
    other = load_settings(home, {**base, "model": {"name": "open_clip:ViT-B-32",
                                                   "pretrained": "random"}})
    summary = run_pipeline(home, other, say=print)
    assert summary["success"] and summary["new_batch"] is None  # same batch, another model

    store = ArtifactStore(str(home / "artifacts"))
    keys = [DEFAULT_KEY, "open_clip-ViT-B-32-random"]
    for key in keys:
        shard = store.read_parquet(f"embeddings/{key}/b00001.parquet")
        assert len(shard) == 153 and latest_index_build(store, key)["count"] == 153
    with duckdb.connect(str(home / "vsearch.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT model, max(value) FROM retrieval_metrics WHERE grounding_set = 'demo' "
            "AND metric = 'precision@1' GROUP BY model ORDER BY model").fetchall()
    assert [m for m, _ in rows] == keys
    assert rows[0][1] > rows[1][1]  # trained weights beat random ones

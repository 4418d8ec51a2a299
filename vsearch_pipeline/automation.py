"""Jobs, sensors and schedules: the graph keeps up with a growing collection on its own.

- `s3_new_objects` / `folder_new_files` (whichever the source is) lists the source, freezes the
  files it has not seen as a new ingest batch, adds the partition and requests `process_batch`.
- `index_after_batch` starts `update_index` when a batch is done: the new vectors are added to
  the index and the new pHashes are checked against the old ones.
- `index_rebuild` (weekly by default) runs `update_index` with a full rebuild; `recluster_nightly`
  runs the clusters and the evaluation.

The Dagster daemon ticks them: `vsearch ui` runs it beside the webserver, `vsearch daemon` alone.
"""

from dagster import (
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunConfig,
    RunRequest,
    RunStatusSensorContext,
    ScheduleDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    define_asset_job,
    multiprocess_executor,
    run_status_sensor,
    sensor,
)

from vsearch_pipeline.assets import COLLECTION_ASSETS, PER_BATCH_ASSETS
from vsearch_pipeline.assets.clusters import clusters
from vsearch_pipeline.assets.common import ingest_batches
from vsearch_pipeline.assets.curation import curation_grounding
from vsearch_pipeline.assets.evaluation import evaluation
from vsearch_pipeline.assets.hashes import near_duplicate_groups
from vsearch_pipeline.assets.index import IndexBuildConfig, faiss_index
from vsearch_pipeline.assets.insight import collection_insight
from vsearch_pipeline.assets.projection_head import projection_head
from vsearch_pipeline.assets.retrieval import retrieval_transform
from vsearch_pipeline.core.batches import batch_key, record_batch, stored_batches, unbatched
from vsearch_pipeline.core.discovery import SourceCursor, chunked, new_objects, split_images
from vsearch_pipeline.core.names import shown
from vsearch_pipeline.resources import ArtifactStorage, ImageSource
from vsearch_pipeline.settings import AutomationSettings, Settings

process_batch_job = define_asset_job(
    "process_batch", selection=PER_BATCH_ASSETS,
    description="Manifest, subset, embeddings and hashes of one ingest batch.",
)
refresh_collection_job = define_asset_job(
    "refresh_collection", executor_def=multiprocess_executor, selection=COLLECTION_ASSETS,
    description="Near-duplicate groups, FAISS index, clusters and evaluation of the collection.",
)
update_index_job = define_asset_job(
    "update_index", executor_def=multiprocess_executor,
    selection=[near_duplicate_groups, projection_head, retrieval_transform, faiss_index],
    description="New vectors into the index, new pHashes against the old ones (a full rebuild "
                "when the index asks for one or the run config sets faiss_index.full_rebuild).",
)
recluster_job = define_asset_job(
    "recluster", executor_def=multiprocess_executor, selection=[clusters, curation_grounding, evaluation,
                                                               collection_insight],
    description="Clusters of the whole collection, the curation grounding sets and the evaluation.",
)
# The collection jobs write the DuckDB file beside the instance, so they run on this machine
# whatever `execution.executor` says; only the per-batch work goes to a cluster.
JOBS = [process_batch_job, refresh_collection_job, update_index_job, recluster_job]
# A tick of the run-status sensor reads only the instance's event log, so it may come often:
# a new image is searchable this much sooner after its batch is processed (Dagster's default: 30 s).
INDEX_AFTER_BATCH_INTERVAL_S = 5
FULL_REBUILD = RunConfig(ops={"faiss_index": IndexBuildConfig(full_rebuild=True)})


def source_sensor_name(source_uri: str | None) -> str:
    return "s3_new_objects" if (source_uri or "").startswith("s3://") else "folder_new_files"


def find_new_batches(context: SensorEvaluationContext, source: ImageSource,
                     storage: ArtifactStorage, automation: AutomationSettings) -> SensorResult:
    """One tick: new image files become batches (at most `max_batch_files` each) and runs."""
    store = storage.store
    cursor = SourceCursor.from_json(context.cursor)
    candidates, cursor = new_objects(source.list(), cursor, automation.sensor_lookback_s)
    batches = stored_batches(store)
    images, skipped = split_images(unbatched(candidates, batches), source.read_head)
    for obj, why in skipped:
        context.log.info(f"skipped {shown(obj.path)}: {shown(why)}")
    cursor = cursor.forget(o.uri for o, why in skipped if why.startswith("could not read"))
    keys = []
    for chunk in chunked(images, automation.max_batch_files):
        keys.append(record_batch(store, batch_key(len(batches) + len(keys) + 1), chunk,
                                 source.uri or "", f"sensor {context.sensor_name}"))
    # a batch recorded by a tick that failed before its partition was added is added now
    known = set(context.instance.get_dynamic_partitions(ingest_batches.name))
    keys = sorted(set(keys) | (set(batches) - known))
    if not keys:
        reason = f"no new image files ({len(skipped)} non-image skipped)" if skipped else "no new files"
        return SensorResult(skip_reason=reason, cursor=cursor.to_json())
    context.log.info(f"new batches {keys}: {len(images)} images")
    return SensorResult(
        run_requests=[RunRequest(partition_key=k, run_key=k, tags={"vsearch/trigger": "sensor"})
                      for k in keys],
        dynamic_partitions_requests=[ingest_batches.build_add_request(keys)],
        cursor=cursor.to_json(),
    )


def make_source_sensor(settings: Settings) -> SensorDefinition:
    automation = settings.automation
    running = automation.enabled and bool(settings.source.uri)

    @sensor(name=source_sensor_name(settings.source.uri), job=process_batch_job,
            minimum_interval_seconds=automation.sensor_interval_s,
            default_status=DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED,
            description="New image files under the source become an ingest batch and a run.")
    def new_files(context: SensorEvaluationContext, source: ImageSource,
                  storage: ArtifactStorage) -> SensorResult:
        return find_new_batches(context, source, storage, automation)

    return new_files


def make_index_after_batch_sensor(settings: Settings) -> SensorDefinition:
    running = settings.automation.enabled

    @run_status_sensor(
        name="index_after_batch", run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=[process_batch_job], request_job=update_index_job,
        minimum_interval_seconds=INDEX_AFTER_BATCH_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED,
        description="When a batch is processed, add its vectors and pHashes to the collection.")
    def index_after_batch(context: RunStatusSensorContext) -> RunRequest:
        batch = context.dagster_run.tags.get("dagster/partition", "")
        return RunRequest(run_key=f"after-{context.dagster_run.run_id}",
                          tags={"vsearch/trigger": f"batch {batch}"})

    return index_after_batch


def make_schedules(settings: Settings) -> list[ScheduleDefinition]:
    automation = settings.automation
    status = DefaultScheduleStatus.RUNNING if automation.enabled else DefaultScheduleStatus.STOPPED
    return [
        ScheduleDefinition(
            name="recluster_nightly", job=recluster_job, cron_schedule=automation.recluster_cron,
            execution_timezone=automation.timezone, default_status=status,
            description="Recluster the collection and evaluate it (automation.recluster_cron)."),
        ScheduleDefinition(
            name="index_rebuild", job=update_index_job, run_config=FULL_REBUILD,
            cron_schedule=automation.index_rebuild_cron, execution_timezone=automation.timezone,
            default_status=status, tags={"vsearch/trigger": "schedule"},
            description="Retrain the index from scratch, dropping deleted images "
                        "(automation.index_rebuild_cron)."),
    ]


def make_automation(settings: Settings) -> tuple[list, list]:
    """(sensors, schedules) for a home's settings."""
    return ([make_source_sensor(settings), make_index_after_batch_sensor(settings)],
            make_schedules(settings))

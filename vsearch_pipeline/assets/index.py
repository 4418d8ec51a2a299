"""Asset: the FAISS index over every embedding of the configured model, with its id map."""


import time

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    artifact_version,
    code_version,
    fail_without_embeddings,
    run_keys,
    setting,
)
from vsearch_pipeline.assets.embeddings import embeddings
from vsearch_pipeline.assets.retrieval import retrieval_transform
from vsearch_pipeline.core.artifacts import latest_index_build, load_latest_transform
from vsearch_pipeline.core.index_build import (
    BuiltIndex,
    ModelIdentity,
    add_new,
    build_record,
    embedding_shards,
    full_build,
    incoming_model_version,
    new_rows,
    retrieval_record,
    write_index_version,
)
from vsearch_pipeline.core.index_plan import FULL, BuildPlan, plan_build
from vsearch_pipeline.core.layout import INDEX_FILE, index_dir
from vsearch_pipeline.core.metrics_queue import file_queued_metrics
from vsearch_pipeline.core.retrieval import VectorTransform
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    ImageSource,
    MetricsDatabase,
    PipelineSettings,
)


class IndexBuildConfig(Config):
    full_rebuild: bool = False
    """Train from scratch even when the new vectors could be added (the rebuild schedule sets it)."""


@asset(
    deps=[embeddings, retrieval_transform], code_version="4", retry_policy=STORAGE_RETRY,
    check_specs=[AssetCheckSpec("recall_above_bound", asset="faiss_index",
                                description="Recall@10 against exact search >= index.min_recall.")],
)
def faiss_index(
    context: AssetExecutionContext,
    config: IndexBuildConfig,
    source: ImageSource,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
) -> MaterializeResult:
    """A FAISS index (flat, hnsw, ivf-flat or ivf-pq) of the model's vectors, inner-product metric.

    Each materialization is a new version folder: `index.faiss`, `ids.parquet` (position -> id,
    URI, path, predicted classes) and `build.json` (resolved parameters, mode, figures). When
    only new shards arrived, the previous version is loaded and the new vectors are added
    (`mode: incremental`); a full build (`mode: full`) trains from scratch on what the source
    still holds, on schedule, on request, or once the collection grew past
    `index.rebuild_growth_ratio` since the last training. Recall@10 against exact search is
    measured at each full build; below `index.min_recall` the check fails.
    """
    store = storage.store
    file_queued_metrics(store, metrics_db.db)
    model_key = model.spec.key
    shards = embedding_shards(store, model_key)
    previous = latest_index_build(store, model_key)
    new = new_rows(store, previous, shards)
    requested = settings.index.params().as_dict()
    transform = load_latest_transform(store, model_key)
    retrieval = _retrieval_record(settings, transform)
    plan = plan_build(previous, requested, incoming_model_version(new, previous), len(new),
                      settings.index.rebuild_growth_ratio, config.full_rebuild, retrieval)
    context.log.info(f"index build: {plan.mode} ({plan.reason})")
    version = artifact_version(context)
    start = time.perf_counter()
    if plan.mode == FULL:
        with fail_without_embeddings():
            built = full_build(store, model_key, settings.index.params(),
                               settings.index.recall_queries, source.list(), version, transform,
                               retrieval)
    else:
        built = add_new(store, previous, new, retrieval)
    seconds = time.perf_counter() - start
    folder = index_dir(model_key, version)
    build = build_record(
        built, version=version, model=ModelIdentity(model.name, model_key, model.pretrained,
                                                    model.spec.view, model.spec.int8),
        plan=plan, previous=previous, requested=requested, shards=shards, retrieval=retrieval,
        seconds=seconds, code_version=code_version())
    write_index_version(store, folder, built, build)
    figures = {"vectors": build["count"], "added": built.added, "removed": built.removed,
               "recall_at_10": round(built.recall, 4), "build_seconds": round(seconds, 3)}
    metrics_db.db.record_metrics(
        "index", run_keys(context),
        {"model": model_key, "index_type": built.params.index_type, "index_version": version,
         "params": built.params.as_dict(), "mode": plan.mode}, figures)
    return MaterializeResult(
        metadata={**figures, **_build_metadata(built, build, plan),
                  "model": model.name, "storage_root": storage.root, "index_dir": folder,
                  "path": store.uri(f"{folder}/{INDEX_FILE}"), "code_version": code_version()},
        check_results=[_recall_check(built, settings.index.min_recall)],
    )


def _build_metadata(built: BuiltIndex, build: dict, plan: BuildPlan) -> dict:
    """What the Dagster UI shows of a build, beside its figures."""
    return {"mode": plan.mode, "reason": plan.reason, "base_version": build["base_version"] or "",
            "trained_count": built.trained_count, "trained_version": built.trained_version,
            "recall_measured_on": built.recall_version,
            "retrieval": MetadataValue.json(build["retrieval"]),
            "index_type": built.params.index_type, "factory": build["factory"],
            "params": MetadataValue.json(built.params.as_dict()),
            "dimension": setting(build["dimension"]), "model_key": build["model_key"],
            "model_version": built.model_version, "version": build["version"]}


def _recall_check(built: BuiltIndex, min_recall: float) -> AssetCheckResult:
    return AssetCheckResult(
        check_name="recall_above_bound", passed=built.recall >= min_recall,
        severity=AssetCheckSeverity.ERROR,
        metadata={"recall_at_10": built.recall, "min_recall": setting(min_recall),
                  "measured_on": built.recall_version})


def _retrieval_record(settings: PipelineSettings, transform: VectorTransform) -> dict:
    """`index_build.retrieval_record` of the settings."""
    retrieval = settings.retrieval
    return retrieval_record(settings.index.index_type, transform, retrieval.query_plan(),
                            retrieval.database_augmentation_k, retrieval.rerank_k1)

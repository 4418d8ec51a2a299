"""Asset: the vector transform (projection head, PCA-whitening) fitted on the collection's own
embeddings."""


import time

from dagster import AssetExecutionContext, MaterializeResult, asset

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    artifact_version,
    code_version,
    collection_embeddings,
    refit_reason,
    run_keys,
)
from vsearch_pipeline.assets.embeddings import embeddings
from vsearch_pipeline.assets.projection_head import projection_head
from vsearch_pipeline.core.artifacts import latest_transform
from vsearch_pipeline.core.layout import transform_dir
from vsearch_pipeline.core.transform_fit import (
    fit_transform,
    selected_head,
    write_transform_version,
)
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    MetricsDatabase,
    PipelineSettings,
)


@asset(deps=[embeddings, projection_head], code_version="2", retry_policy=STORAGE_RETRY)
def retrieval_transform(
    context: AssetExecutionContext,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
) -> MaterializeResult:
    """The projection head (when `retrieval.projection_head`; asset `projection_head`) and then
    PCA-whitening with power normalisation, fitted without labels on the model's vectors
    (`retrieval.whitening*` settings): the transform that `faiss_index` applies to every vector it indexes and
    the search service to every query (a copy lives in each index version's folder).

    It is fitted again only when its settings, the head or the model version changed, or the collection
    grew past `index.rebuild_growth_ratio` since the fit (the rule that retrains the index), so
    that an unchanged transform lets the index grow incrementally. `transforms/<model>/<version>/`
    holds `transform.json` and the fitted arrays.
    """
    store = storage.store
    model_key = model.spec.key
    ids, vectors, model_version = collection_embeddings(store, model_key)
    head = selected_head(store, model_key, model_version, settings.retrieval.projection_head)
    wanted = {**settings.retrieval.transform_settings(),
              "head_version": head.version if head else None}
    previous = latest_transform(store, model_key)
    reason = refit_reason(previous, wanted, model_version, len(ids),
                          settings.index.rebuild_growth_ratio)
    if reason is None:
        context.log.info(f"transform {previous['version']} kept")
        return MaterializeResult(metadata={"mode": "kept", "version": previous["version"],
                                           "transform_dir": previous["folder"],
                                           "fitted_on": previous["fitted_on"],
                                           "code_version": code_version()})
    start = time.perf_counter()
    transform, figures = fit_transform(vectors, settings.retrieval, head)
    seconds = round(time.perf_counter() - start, 3)
    version = artifact_version(context)
    folder = transform_dir(model_key, version)
    record = {"version": version, "folder": folder, "model_key": model_key,
              "model_version": model_version, "settings": wanted, "fitted_on": len(ids),
              "transform_version": transform.version, "reason": reason, "fit_seconds": seconds,
              **figures}
    write_transform_version(store, folder, transform, record)
    metrics_db.db.record_metrics("transform", run_keys(context),
                                 {"model": model_key, "transform_version": transform.version},
                                 {"fitted_on": len(ids), "fit_seconds": seconds, **figures})
    return MaterializeResult(metadata={
        "mode": "fitted", "reason": reason, "version": version, "transform_dir": folder,
        "transform_version": transform.version, "fitted_on": len(ids), "fit_seconds": seconds,
        **figures, "settings": str(wanted), "code_version": code_version()})

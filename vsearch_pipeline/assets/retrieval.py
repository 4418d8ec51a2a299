"""Asset: the vector transform (projection head, PCA-whitening) fitted on the collection's own
embeddings."""


import time

import numpy as np
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
from vsearch_pipeline.core.layout import (
    latest_head,
    latest_transform,
    load_head,
    transform_dir,
)
from vsearch_pipeline.core.retrieval import (
    ProjectionHead,
    VectorTransform,
    Whitening,
    fit_whitening,
)
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    MetricsDatabase,
    PipelineSettings,
)

FIT_SAMPLE = 200_000  # vectors the whitening is fitted on at most (a seeded sample)
# fewer vectors than this many per kept axis leave the vectors unwhitened. Measured on Caltech-101
# with DBA + QE on top (docs/search-quality.md), whole view: whitening to 256 axes lowered mAP@10
# on 2,170 and 2,893 photos (-0.005, -0.008), was even at 4,338 and raised it on every sample
# from 5,206 to all 8,677 (+0.001 to +0.006; centre crop +0.001 to +0.002 from 6,073 up);
# 24 per axis is 6,144 photos at 256 axes
MIN_VECTORS_PER_DIM = 24


@asset(deps=[embeddings, projection_head], code_version="2", group_name="index", retry_policy=STORAGE_RETRY)
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
    head = _selected_head(store, model_key, model_version, settings.retrieval.projection_head)
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
    for name, data in transform.files().items():
        store.write_bytes(f"{folder}/{name}", data)
    record = {"version": version, "folder": folder, "model_key": model_key,
              "model_version": model_version, "settings": wanted, "fitted_on": len(ids),
              "transform_version": transform.version, "reason": reason, "fit_seconds": seconds,
              **figures}
    store.write_json(f"{folder}/transform.json", record)  # last: the folder is whole with it
    metrics_db.db.record_metrics("transform", run_keys(context),
                                 {"model": model_key, "transform_version": transform.version},
                                 {"fitted_on": len(ids), "fit_seconds": seconds, **figures})
    return MaterializeResult(metadata={
        "mode": "fitted", "reason": reason, "version": version, "transform_dir": folder,
        "transform_version": transform.version, "fitted_on": len(ids), "fit_seconds": seconds,
        **figures, "settings": str(wanted), "code_version": code_version()})


def _selected_head(store: ArtifactStore, model_key: str, model_version: str, selected: bool
                   ) -> ProjectionHead | None:
    """The newest head trained for this model version, when the settings select one."""
    if not selected:
        return None
    record = latest_head(store, model_key)
    if record is None or record["model_version"] != model_version:
        raise ValueError(f"retrieval.projection_head is on but no head is trained for {model_key} "
                         f"{model_version}: materialize the projection_head asset first")
    return load_head(store, record)


def fit_transform(vectors: np.ndarray, retrieval, head: ProjectionHead | None = None
                  ) -> tuple[VectorTransform, dict]:
    """The transform the settings ask for, with the figures that describe the fit. Whitening is
    fitted on the head's output when there is a head."""
    if head is not None:
        vectors = head.apply(vectors)
    whitening = _fitted_whitening(vectors, retrieval) if retrieval.whitening else None
    return VectorTransform(whitening, head), {"head_dims": head.dim if head else 0,
                                              "whitening_dims": whitening.dims if whitening else 0}


def _fitted_whitening(vectors: np.ndarray, retrieval) -> Whitening | None:
    """None when there are too few vectors to estimate the covariance of the kept axes."""
    if len(vectors) < MIN_VECTORS_PER_DIM * retrieval.whitening_dims:
        return None
    if len(vectors) > FIT_SAMPLE:
        rows = np.random.default_rng(0).choice(len(vectors), FIT_SAMPLE, replace=False)
        vectors = vectors[np.sort(rows)]
    return fit_whitening(vectors, retrieval.whitening_dims, retrieval.whitening_shrinkage,
                         retrieval.whitening_power)

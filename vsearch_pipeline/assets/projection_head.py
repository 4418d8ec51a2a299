"""Asset: a projection head trained on the collection itself, self-supervised (optional)."""

import time

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from vsearch_pipeline.assets.common import (
    STORAGE_RETRY,
    artifact_version,
    code_version,
    collection_embeddings,
    progress_logger,
    refit_reason,
    run_keys,
)
from vsearch_pipeline.assets.embeddings import embeddings
from vsearch_pipeline.core.artifacts import image_locations, latest_head, load_manifests
from vsearch_pipeline.core.head_training import decoded_images, training_rows, write_head_version
from vsearch_pipeline.core.layout import head_dir
from vsearch_pipeline.core.projection_head import train_projection_head, view_vectors
from vsearch_pipeline.resources import (
    ArtifactStorage,
    EmbeddingModelResource,
    ImageSource,
    MetricsDatabase,
    PipelineSettings,
)

VIEWS = 2  # augmented views per image, beside its plain vector: four measured no better
EPOCHS = 10  # twenty measured no better, at twice the cost
MIN_IMAGES = 64  # fewer than this cannot fill one training batch of pairs worth learning from


@asset(deps=[embeddings], code_version="1", retry_policy=STORAGE_RETRY)
def projection_head(
    context: AssetExecutionContext,
    source: ImageSource,
    storage: ArtifactStorage,
    model: EmbeddingModelResource,
    metrics_db: MetricsDatabase,
    settings: PipelineSettings,
) -> MaterializeResult:
    """A small MLP over the frozen backbone, trained with NT-Xent on two random augmentations of
    each image (seed 003's self-supervised contrastive training; no labels), when
    `retrieval.projection_head` is on; otherwise it does nothing. `retrieval_transform` puts the
    newest head in front of the whitening, so index and queries both go through it.

    Off by default: measured on Caltech-101 it gains on new photos of the content it was trained
    on and loses on content it never saw (docs/search-quality.md). Trained again on the rule that
    refits the transform; `heads/<model>/<version>/` holds `head.json` and the weights.
    """
    retrieval = settings.retrieval
    if not retrieval.projection_head:
        return MaterializeResult(metadata={"mode": "off (retrieval.projection_head is false)"})
    store = storage.store
    model_key = model.spec.key
    ids, vectors, model_version = collection_embeddings(store, model_key)
    wanted = {"images": retrieval.projection_head_images, "views": VIEWS, "epochs": EPOCHS}
    previous = latest_head(store, model_key)
    reason = refit_reason(previous, wanted, model_version, len(ids),
                          settings.index.rebuild_growth_ratio)
    if reason is None:
        context.log.info(f"projection head {previous['version']} kept")
        return MaterializeResult(metadata={"mode": "kept", "version": previous["version"],
                                           "head_version": previous["head_version"],
                                           "code_version": code_version()})
    rows = training_rows(len(ids), retrieval.projection_head_images)
    where = image_locations(load_manifests(store))
    uris = [where[ids[row]][0] for row in rows]
    start = time.perf_counter()
    used: list[int] = []
    failed: dict[str, str] = {}
    encoder = model.model
    images = decoded_images(uris, source.read, encoder.decode_min_size, rows, used, failed,
                            progress_logger(context, "projection head views"))
    views = view_vectors(encoder, images, VIEWS, seed=0, batch_size=model.batch_size)
    view_seconds = round(time.perf_counter() - start, 3)
    if len(used) < MIN_IMAGES:
        raise ValueError(f"the projection head needs {MIN_IMAGES} images or more, "
                         f"{len(used)} decoded ({len(failed)} failed)")
    head, history = train_projection_head(views, plain=vectors[used], epochs=EPOCHS, seed=0)
    version = artifact_version(context)
    folder = head_dir(model_key, version)
    record = {"version": version, "folder": folder, "model_key": model_key,
              "model_version": model_version, "settings": wanted, "fitted_on": len(ids),
              "trained_on": len(used), "failed": len(failed), "head_version": head.version,
              "dimension": head.dim, "reason": reason, "view_seconds": view_seconds,
              "train_seconds": history["seconds"], "loss": history["loss"]}
    write_head_version(store, folder, head, record)
    figures = {"trained_on": len(used), "failed": len(failed), "view_seconds": view_seconds,
               "train_seconds": history["seconds"], "final_loss": round(history["loss"][-1], 4)}
    metrics_db.db.record_metrics("projection_head", run_keys(context),
                                 {"model": model_key, "head_version": head.version}, figures)
    return MaterializeResult(metadata={
        "mode": "trained", "reason": reason, "version": version, "head_version": head.version,
        "dimension": head.dim, **figures,
        "loss_by_epoch": MetadataValue.md(loss_table(history["loss"])),
        "failed_images": MetadataValue.json(dict(sorted(failed.items())[:50])),
        "code_version": code_version()})


def loss_table(losses: list[float]) -> str:
    lines = ["| epoch | NT-Xent loss |", "|---|---|"]
    lines += [f"| {epoch} | {loss:.4f} |" for epoch, loss in enumerate(losses, start=1)]
    return "\n".join(lines)

"""Fitting the vector transform on the collection's own embeddings (the projection head, then
PCA-whitening with power normalisation), and writing a transform version's folder."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vsearch_pipeline.core.artifacts import latest_head, load_head
from vsearch_pipeline.core.layout import TRANSFORM_RECORD_FILE
from vsearch_pipeline.core.retrieval import ProjectionHead, VectorTransform, Whitening, fit_whitening
from vsearch_pipeline.core.storage import ArtifactStore

FIT_SAMPLE = 200_000  # vectors the whitening is fitted on at most (a seeded sample)
# fewer vectors than this many per kept axis leave the vectors unwhitened. Measured on Caltech-101
# with DBA + QE on top (docs/search-quality.md), whole view: whitening to 256 axes lowered mAP@10
# on 2,170 and 2,893 photos (-0.005, -0.008), was even at 4,338 and raised it on every sample
# from 5,206 to all 8,677 (+0.001 to +0.006; centre crop +0.001 to +0.002 from 6,073 up);
# 24 per axis is 6,144 photos at 256 axes
MIN_VECTORS_PER_DIM = 24


class WhiteningSettings(Protocol):
    """What the fit reads of the retrieval settings."""

    whitening: bool
    whitening_dims: int
    whitening_shrinkage: float
    whitening_power: float


def selected_head(store: ArtifactStore, model_key: str, model_version: str, selected: bool
                  ) -> ProjectionHead | None:
    """The newest head trained for this model version, when the settings select one."""
    if not selected:
        return None
    record = latest_head(store, model_key)
    if record is None or record["model_version"] != model_version:
        raise ValueError(f"retrieval.projection_head is on but no head is trained for {model_key} "
                         f"{model_version}: materialize the projection_head asset first")
    return load_head(store, record)


def fit_transform(vectors: np.ndarray, retrieval: WhiteningSettings,
                  head: ProjectionHead | None = None) -> tuple[VectorTransform, dict]:
    """The transform the settings ask for, with the figures that describe the fit. Whitening is
    fitted on the head's output when there is a head."""
    if head is not None:
        vectors = head.apply(vectors)
    whitening = fitted_whitening(vectors, retrieval) if retrieval.whitening else None
    return VectorTransform(whitening, head), {"head_dims": head.dim if head else 0,
                                              "whitening_dims": whitening.dims if whitening else 0}


def fitted_whitening(vectors: np.ndarray, retrieval: WhiteningSettings) -> Whitening | None:
    """None when there are too few vectors to estimate the covariance of the kept axes."""
    if len(vectors) < MIN_VECTORS_PER_DIM * retrieval.whitening_dims:
        return None
    if len(vectors) > FIT_SAMPLE:
        rows = np.random.default_rng(0).choice(len(vectors), FIT_SAMPLE, replace=False)
        vectors = vectors[np.sort(rows)]
    return fit_whitening(vectors, retrieval.whitening_dims, retrieval.whitening_shrinkage,
                         retrieval.whitening_power)


def write_transform_version(store: ArtifactStore, folder: str, transform: VectorTransform,
                            record: dict) -> None:
    """The transform's files, then its record (transform.json): the folder is whole with it."""
    for name, data in transform.files().items():
        store.write_bytes(f"{folder}/{name}", data)
    store.write_json(f"{folder}/{TRANSFORM_RECORD_FILE}", record)

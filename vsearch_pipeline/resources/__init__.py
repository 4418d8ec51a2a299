"""Dagster resources: where images come from, where artifacts and metrics go, which model embeds.

Asset bodies never build clients or paths themselves; they ask these resources, which are
chosen per deployment (a local folder or S3 for both the source and the artifacts).
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from vsearch_pipeline.core.model_spec import ModelSpec
from vsearch_pipeline.core.models import EmbeddingModel, load_model
from vsearch_pipeline.core.sources import SourceObject, list_source, read_head, read_object
from vsearch_pipeline.core.storage import ArtifactStore
from vsearch_pipeline.core.store import CurationDB, MetricsDB
from vsearch_pipeline.settings import (
    ClusterSettings,
    EvaluationSettings,
    IndexSettings,
    ManifestSettings,
    NearDuplicateSettings,
    RetrievalSettings,
    SubsetSettings,
)


class ImageSource(ConfigurableResource):
    """A local folder or an s3:// prefix holding the images."""

    uri: str | None = None
    endpoint_url: str | None = None

    def list(self) -> list[SourceObject]:
        if not self.uri:
            raise ValueError("source.uri is not set: give a folder or an s3:// prefix")
        return list_source(self.uri, self.endpoint_url)

    def read(self, uri: str) -> bytes:
        return read_object(uri, self.endpoint_url)

    def read_head(self, uri: str, size: int) -> bytes:
        return read_head(uri, size, self.endpoint_url)


class ArtifactStorage(ConfigurableResource):
    """Where the pipeline's files go: a local folder or an s3:// prefix."""

    root: str
    endpoint_url: str | None = None

    _store: ArtifactStore | None = PrivateAttr(None)

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = ArtifactStore(self.root, self.endpoint_url)
        return self._store


class MetricsDatabase(ConfigurableResource):
    """The DuckDB file with hashes, duplicate groups and the metrics of every run."""

    path: str

    @property
    def db(self) -> MetricsDB:
        return MetricsDB(self.path)


class CurationDatabase(ConfigurableResource):
    """The search service's DuckDB file of tags, searches, clicks and ratings (read here)."""

    path: str

    @property
    def db(self) -> CurationDB:
        return CurationDB(self.path)


class EmbeddingModelResource(ConfigurableResource):
    """The image encoder and how it runs; see vsearch_pipeline.core.models for the names."""

    name: str
    pretrained: str | None = None
    view: str | None = None  # None: the model's default view
    batch_size: int = 32
    device: str = "cpu"
    precision: str = "fp32"
    engine: str = "auto"  # torch | onnx | openvino, or auto: the fastest measured for the model

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.name, self.pretrained, self.view)

    _model: EmbeddingModel | None = PrivateAttr(None)
    _copy_model: EmbeddingModel | None = PrivateAttr(None)

    @property
    def model(self) -> EmbeddingModel:
        """Loaded on first use, once per process."""
        if self._model is None:
            self._model = load_model(self.spec, self.device, self.precision, self.engine)
        return self._model

    @property
    def copy_model(self) -> EmbeddingModel:
        """The same network seeing the copy view (near-duplicate detection's vectors); the
        search model itself when its view is the copy view."""
        if self.spec.copy_spec == self.spec:
            return self.model
        if self._copy_model is None:
            self._copy_model = load_model(self.spec.copy_spec, self.device, self.precision,
                                          self.engine)
        return self._copy_model


class PipelineSettings(ConfigurableResource):
    """The settings of each asset, from the home's vsearch.yaml."""

    manifest: ManifestSettings
    subset: SubsetSettings
    near_duplicates: NearDuplicateSettings
    index: IndexSettings
    retrieval: RetrievalSettings
    clusters: ClusterSettings
    evaluation: EvaluationSettings

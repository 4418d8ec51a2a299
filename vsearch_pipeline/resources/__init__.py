"""Dagster resources: where images come from, where artifacts and metrics go, which model embeds.

Asset bodies never build clients or paths themselves; they ask these resources, which are
chosen per deployment (a local folder or S3 for both the source and the artifacts).
"""

from __future__ import annotations

from dagster import Config, ConfigurableResource
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
    InsightSettings,
    ManifestSettings,
    ModelSettings,
    NearDuplicateSettings,
    RetrievalSettings,
    Settings,
    SourceSettings,
    SubsetSettings,
)

# A resource that holds one settings section is that section with Dagster's ConfigurableResource
# mixed in (ImageSource, EmbeddingModelResource); a resource's fields must be Dagster Config, so
# the sections that PipelineSettings holds are each the section with Config mixed in: the same
# fields, defaults and validators, declared once in vsearch_pipeline.settings.


class ManifestConfig(Config, ManifestSettings):
    """The `manifest` settings."""


class SubsetConfig(Config, SubsetSettings):
    """The `subset` settings."""


class NearDuplicateConfig(Config, NearDuplicateSettings):
    """The `near_duplicates` settings."""


class IndexConfig(Config, IndexSettings):
    """The `index` settings."""


class RetrievalConfig(Config, RetrievalSettings):
    """The `retrieval` settings."""


class ClusterConfig(Config, ClusterSettings):
    """The `clusters` settings."""


class EvaluationConfig(Config, EvaluationSettings):
    """The `evaluation` settings."""


class InsightConfig(Config, InsightSettings):
    """The `insight` settings."""


class ImageSource(ConfigurableResource, SourceSettings):
    """A local folder or an s3:// prefix holding the images (the `source` settings)."""

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


class EmbeddingModelResource(ConfigurableResource, ModelSettings):
    """The image encoder and how it runs (the `model` settings, checked as they are when read);
    see vsearch_pipeline.core.models for the names."""

    _model: EmbeddingModel | None = PrivateAttr(None)
    _copy_model: EmbeddingModel | None = PrivateAttr(None)

    @property
    def model(self) -> EmbeddingModel:
        """Loaded on first use, once per process."""
        if self._model is None:
            self._model = self._load(self.spec)
        return self._model

    @property
    def copy_model(self) -> EmbeddingModel:
        """The same network seeing the copy view (near-duplicate detection's vectors); the
        search model itself when its view is the copy view."""
        if self.spec.copy_spec == self.spec:
            return self.model
        if self._copy_model is None:
            self._copy_model = self._load(self.spec.copy_spec)
        return self._copy_model

    def _load(self, spec: ModelSpec) -> EmbeddingModel:
        return load_model(spec, self.device, self.precision, self.engine)


class PipelineSettings(ConfigurableResource):
    """The settings of each asset, from the home's vsearch.yaml."""

    manifest: ManifestConfig
    subset: SubsetConfig
    near_duplicates: NearDuplicateConfig
    index: IndexConfig
    retrieval: RetrievalConfig
    clusters: ClusterConfig
    evaluation: EvaluationConfig
    insight: InsightConfig

    @classmethod
    def of(cls, settings: Settings) -> PipelineSettings:
        """The sections of `settings` that the assets read."""
        return cls(**{name: getattr(settings, name).model_dump() for name in cls.model_fields})

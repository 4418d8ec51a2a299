"""Nearest images to a query image (a file, bytes, or an id in the collection).

The model is rebuilt from the index's own build record, so a query is embedded exactly as the
collection was; an index whose model does not load, or loads with another version, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vsearch_pipeline.catalog import LoadedIndex, load_index_artifacts
from vsearch_pipeline.core.decode import decode_rgb
from vsearch_pipeline.core.index import search
from vsearch_pipeline.core.model_spec import ModelSpec
from vsearch_pipeline.core.models import EmbeddingModel, load_model
from vsearch_pipeline.core.sources import read_object
from vsearch_pipeline.core.storage import ArtifactStore


@dataclass
class Searcher:
    loaded: LoadedIndex
    model: EmbeddingModel
    source_endpoint_url: str | None = None

    @classmethod
    def from_metadata(cls, store: ArtifactStore, metadata, source_endpoint_url: str | None = None,
                      device: str = "cpu") -> Searcher:
        loaded = load_index_artifacts(store, metadata)
        build = loaded.build
        model = load_model(ModelSpec(build["model"], build.get("pretrained")), device)
        if model.version != build["model_version"]:
            raise ValueError(f"index {loaded.version} was built with model version "
                             f"{build['model_version']!r}, but {model.version!r} is installed")
        return cls(loaded, model, source_endpoint_url)

    def embed_bytes(self, data: bytes) -> np.ndarray:
        return self.model.embed_images([decode_rgb(data, min_size=self.model.image_size)])[0]

    def by_image(self, data: bytes, k: int) -> list[dict]:
        return self._results(self.embed_bytes(data), k, exclude=None)

    def by_id(self, image_id: str, k: int) -> list[dict]:
        position = self.loaded.position_of.get(image_id)
        if position is None:
            raise KeyError(f"no image with id {image_id!r} in index {self.loaded.version}")
        uri = self.loaded.id_map.column("uri")[position].as_py()
        vector = self.embed_bytes(read_object(uri, self.source_endpoint_url))
        return self._results(vector, k, exclude=position)

    def _results(self, vector: np.ndarray, k: int, exclude: int | None) -> list[dict]:
        scores, positions = search(self.loaded.index, vector[None, :], k + (exclude is not None))
        table = self.loaded.id_map
        results = []
        for score, pos in zip(scores[0], positions[0], strict=True):
            if pos < 0 or pos == exclude:
                continue
            results.append({"rank": len(results) + 1, "id": table.column("id")[pos].as_py(),
                            "score": round(float(score), 6),
                            "uri": table.column("uri")[pos].as_py(),
                            "path": table.column("path")[pos].as_py()})
        return results[:k]

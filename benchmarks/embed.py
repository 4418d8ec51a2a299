"""Embedding: JPEG files to the default's vectors, against the plain loop a user would write.

The plain loop (seed 004's `embed_batch`) opens, preprocesses and embeds one image at a time in
fp32 eager PyTorch, seeing the centre crop; it is the baseline every ratio is taken against. Then
each step that makes the default fast, measured end to end on the same photos through the
pipeline's own `embed_files` (decoding on threads, overlapped with inference, batches of 32):
the same centre crop in ONNX Runtime; the default's two views (search `regions` and copy
`centre_region`) from one fp32 pass; the same in int8 (the default); and, for what one pass
saves, the two views as two int8 passes (the copy view as its own centre-crop pass). Quality on
the same sample: precision@1 and mAP@10 by class (nearest other images, exact cosine), int8's
cosine to fp32 and the top label's agreement. Then each engine's model-alone speed, and open_clip
ViT-B-32 (random weights) in fp32 and bf16 at two batch sizes.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vsearch_pipeline.core.embed import _prepare, embed_files
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
from vsearch_pipeline.core.models import EmbeddingModel, Prepared, load_model

DATA_ENV = "VSEARCH_TEST_DATA"
BATCH = 32


def caltech_sample(per_class_total: int, every_class: int = 1) -> tuple[list[Path], list[str]]:
    """About `per_class_total` photos, the same number from each class, spread over each class;
    with `every_class` n, only every n-th class's share of them."""
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    root = Path(os.environ.get(DATA_ENV, default)).resolve() / "caltech101"
    classes = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")
    each = max(2, per_class_total // len(classes))
    files, labels = [], []
    for folder in classes[::every_class]:
        photos = sorted(folder.glob("*.jpg"))
        for i in np.linspace(0, len(photos) - 1, min(each, len(photos))).round().astype(int):
            files.append(photos[i])
            labels.append(folder.name)
    return files, labels


def plain_loop(files: list[Path]) -> tuple[np.ndarray, list[str], float, float]:
    """Seed 004's loop in plain torchvision and PyTorch: open, resize the shorter side to 256, cut
    the centre 224 square, normalise, embed (with the top label) one image at a time in fp32
    eager. Returns the vectors, top-1 labels, seconds end to end and seconds in the model."""
    from torchvision import transforms

    from vsearch_pipeline.core import lite0

    network, names = lite0.torch_network(), lite0.imagenet_class_names()
    bicubic = transforms.InterpolationMode.BICUBIC
    transform = transforms.Compose([transforms.Resize(256, interpolation=bicubic),
                                    transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize([127 / 255] * 3, [128 / 255] * 3)])
    vectors, top1, in_model = [], [], 0.0
    start = time.perf_counter()
    for path in files:
        pixels = transform(Image.open(path).convert("RGB"))[None]
        t0 = time.perf_counter()
        with torch.inference_mode():
            maps, logits = network(pixels)
            vector = torch.nn.functional.normalize(maps.mean(dim=(2, 3)), dim=-1)
        in_model += time.perf_counter() - t0
        vectors.append(vector[0].numpy())
        top1.append(names[int(logits[0].argmax())])
    return np.stack(vectors), top1, time.perf_counter() - start, in_model


def model_alone(model: EmbeddingModel, pixels: list[Prepared], batch: int, top: int = 3) -> float:
    """Images per second of the network (and head) alone on prepared pixels, after a warm-up."""
    model.embed_prepared(pixels[:batch], top=top)
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        model.embed_prepared(pixels[i:i + batch], top=top)
    return len(pixels) / (time.perf_counter() - start)


def precision_at_1(vectors: np.ndarray, labels: list[str]) -> float:
    """Share of images whose nearest other image (cosine) is of the same class."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    return float(np.mean([labels[i] == labels[j] for i, j in enumerate(nearest)]))


def _read(uri: str) -> bytes:
    return Path(uri).read_bytes()


def _prepared(model: EmbeddingModel, files: list[Path]) -> list[Prepared]:
    return [_prepare([model], _read, str(f))[0] for f in files]



def _say(figures: dict, key: str, value: float, unit: str = "") -> None:
    figures[key] = round(float(value), 4)
    print(f"  {key:<44} {figures[key]:>10}{unit}", flush=True)


STEPS = (  # name: (search spec, copy spec or None, engine)
    ("centre_crop_onnx_fp32", ModelSpec(DEFAULT_MODEL, "", "centre_crop", False), None, "onnx"),
    ("one_pass_fp32", ModelSpec(DEFAULT_MODEL, None, None, False), "copy", "onnx"),
    ("two_passes_int8", ModelSpec(DEFAULT_MODEL), ModelSpec(DEFAULT_MODEL, view="centre_crop"), "auto"),
    ("default", ModelSpec(DEFAULT_MODEL), "copy", "auto"),
)


def default_model(quick: bool, figures: dict) -> None:
    # quick: two photos of every third class, as the plain eager loop is slow
    files, labels = caltech_sample(200, every_class=3) if quick else caltech_sample(2000)
    reference = load_model(ModelSpec(DEFAULT_MODEL, view="centre_crop", int8=False), engine="torch")
    reference.embed_prepared(_prepared(reference, files[:1]))  # the plain loop's warm-up: loading
    print(f"# default model, {len(files)} Caltech-101 photos ({len(set(labels))} classes); "
          f"batch {BATCH}; torch threads {torch.get_num_threads()}", flush=True)
    figures.update(images=len(files), batch_size=BATCH)
    ref_vectors, ref_top1, ref_total, ref_model = plain_loop(files)
    plain = len(files) / ref_total
    _say(figures, "plain_end_to_end_images_per_s", plain)
    _say(figures, "plain_model_alone_images_per_s", len(files) / ref_model)
    _say(figures, "plain_precision_at_1", precision_at_1(ref_vectors, labels))
    _say(figures, "plain_map_at_10", map_at_10(ref_vectors, labels))
    results = {}
    for name, spec, copy, engine in STEPS:
        model = load_model(spec, engine=engine)
        copy_model = load_model(spec.copy_spec if copy == "copy" else copy, engine=engine) \
            if copy else None
        model.embed_prepared(_prepared(model, files[:BATCH]))  # warm-up, as the plain loop had none
        start = time.perf_counter()
        result = embed_files(model, [str(f) for f in files], [str(f) for f in files], _read,
                             batch_size=BATCH, workers=2, copy_model=copy_model)
        seconds = time.perf_counter() - start
        assert not result.failed, result.failed
        results[name] = result
        print(f"# {name}: {model.spec.key}" + (f" + {copy_model.spec.key}" if copy_model else ""))
        _say(figures, f"{name}_end_to_end_images_per_s", len(files) / seconds)
        _say(figures, f"{name}_ratio_to_plain", figures[f"{name}_end_to_end_images_per_s"] / plain, "x")
        _say(figures, f"{name}_precision_at_1", precision_at_1(result.vectors, labels))
        _say(figures, f"{name}_map_at_10", map_at_10(result.vectors, labels))
        if name == "centre_crop_onnx_fp32":  # the plain loop's own vectors, only faster
            _say(figures, f"{name}_cosine_to_plain_min", (result.vectors * ref_vectors).sum(axis=1).min())
    figures["ratio_end_to_end"] = figures["default_ratio_to_plain"]
    agreement(figures, results["one_pass_fp32"], results["default"], ref_top1)
    engines(figures, _prepared(reference, files[: 32 if quick else 256]))


def map_at_10(vectors: np.ndarray, labels: list[str]) -> float:
    """mAP@10 by class: each image a query, the other images ranked by cosine."""
    from vsearch_pipeline.core.metrics import retrieval_metrics

    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    ranked = np.argsort(-sims, axis=1)[:, :10]
    _, groups = np.unique(labels, return_inverse=True)
    return retrieval_metrics(ranked, groups, groups, ks=(10,))["map@10"]


def agreement(figures: dict, fp32, int8, ref_top1: list[str]) -> None:
    """Int8 against fp32, view by view, and the top label against the plain loop's."""
    for view, a, b in (("search", fp32.vectors, int8.vectors),
                       ("copy", fp32.copy_vectors, int8.copy_vectors)):
        cosines = (a * b).sum(axis=1)
        _say(figures, f"int8_{view}_cosine_to_fp32_min", cosines.min())
        _say(figures, f"int8_{view}_cosine_to_fp32_mean", cosines.mean())
    _say(figures, "int8_top1_label_agreement_with_plain",
         np.mean([p[0][0] == r for p, r in zip(int8.labels, ref_top1, strict=True)]))
    _say(figures, "fp32_top1_label_agreement_with_plain",
         np.mean([p[0][0] == r for p, r in zip(fp32.labels, ref_top1, strict=True)]))


def engines(figures: dict, pixels: list[Prepared]) -> None:
    """The network alone on the same centre-crop pixels, by engine and batch: how `auto` and the
    int8 default were chosen."""
    print(f"# default model alone by engine, {len(pixels)} images (images/s)", flush=True)
    runs: list[tuple[str, str, bool, int]] = [
        ("torch", "fp32", False, 1), ("torch", "fp32", False, 8), ("torch", "bf16", False, 8),
        ("onnx", "fp32", False, 1), ("onnx", "fp32", False, BATCH), ("onnx", "fp32", True, 1),
        ("onnx", "fp32", True, BATCH), ("openvino", "fp32", False, BATCH),
        ("openvino", "bf16", False, BATCH)]
    for engine, precision, int8, batch in runs:
        if engine == "openvino" and importlib.util.find_spec("openvino") is None:
            continue
        spec = ModelSpec(DEFAULT_MODEL, view="centre_crop", int8=int8)
        model = load_model(spec, precision=precision, engine=engine)
        name = f"engine_{engine}_{'int8' if int8 else precision}_batch{batch}"
        _say(figures, name, model_alone(model, pixels, batch))


def open_clip_vit(quick: bool, figures: dict) -> None:
    """ViT-B-32 with random weights: fp32 against bf16 autocast, model alone, two batch sizes."""
    files, _ = caltech_sample(16 if quick else 64)
    files = files[: 16 if quick else 64]
    spec = ModelSpec("open_clip:ViT-B-32", "random")
    fp32, bf16 = load_model(spec), load_model(spec, precision="bf16")
    pixels = _prepared(fp32, files)
    print(f"# open_clip ViT-B-32 (random weights) model alone, {len(pixels)} images (images/s)", flush=True)
    for batch in (1, 16):
        for name, model in (("fp32", fp32), ("bf16", bf16)):
            _say(figures, f"vit_b32_{name}_batch{batch}_images_per_s", model_alone(model, pixels, batch))
        _say(figures, f"vit_b32_bf16_over_fp32_batch{batch}",
             figures[f"vit_b32_bf16_batch{batch}_images_per_s"]
             / figures[f"vit_b32_fp32_batch{batch}_images_per_s"], "x")
    cosines = (fp32.embed_prepared(pixels, top=0)[0] * bf16.embed_prepared(pixels, top=0)[0]).sum(axis=1)
    _say(figures, "vit_b32_bf16_cosine_min", cosines.min())


def run(quick: bool) -> dict:
    figures: dict = {"cpu_bf16": _cpu_has_bf16(), "load_average_start": os.getloadavg()[0]}
    _timed(lambda: default_model(quick, figures), figures, "default_model_seconds")
    _timed(lambda: open_clip_vit(quick, figures), figures, "open_clip_seconds")
    figures["load_average_end"] = os.getloadavg()[0]
    print(f"# load average {figures['load_average_start']:.2f} -> {figures['load_average_end']:.2f}; "
          f"CPU bf16 instructions: {figures['cpu_bf16']}", flush=True)
    return figures


def _timed(step: Callable[[], None], figures: dict, key: str) -> None:
    start = time.perf_counter()
    step()
    figures[key] = round(time.perf_counter() - start, 1)


def _cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: without them bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags

"""Embedding: JPEG files to unit vectors with the default model, against the plain loop.

The plain loop opens, preprocesses and embeds one image at a time in fp32 eager PyTorch (seed
004's `embed_batch`); it is also the fp32 reference every vsearch vector is compared with. The
vsearch path is the pipeline's own `embed_files` with the engine `auto` picks. Both run on the
same Caltech-101 photos, sampled evenly over the 101 object classes (the background class is left
out: it is no class), and precision@1 (nearest other image of the same class) is computed for
both on that sample. Then each engine's model-alone speed, and open_clip ViT-B-32 (random
weights) in fp32 and bf16 at two batch sizes.
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


def plain_loop(model: EmbeddingModel, files: list[Path]) -> tuple[np.ndarray, list[str], float, float]:
    """Open, preprocess, embed (with labels) one image at a time: vectors, top-1 labels, seconds
    end to end and seconds in the model alone."""
    vectors, top1, in_model = [], [], 0.0
    start = time.perf_counter()
    for path in files:
        pixels = model.prepare(Image.open(path).convert("RGB"))
        t0 = time.perf_counter()
        vector, labels = model.embed_prepared([pixels])
        in_model += time.perf_counter() - t0
        vectors.append(vector[0])
        top1.append(labels[0][0][0])
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


def default_model(quick: bool, figures: dict) -> None:
    # quick: two photos of every third class, as the plain eager loop is slow (multi: 2 photos/s)
    files, labels = caltech_sample(200, every_class=3) if quick else caltech_sample(2000)
    spec = ModelSpec(DEFAULT_MODEL)
    reference = load_model(spec, engine="torch")
    fast = load_model(spec, engine="auto")
    print(f"# default model, {len(files)} Caltech-101 photos ({len(set(labels))} classes); "
          f"vsearch engine {fast.engine}, batch {BATCH}; torch threads {torch.get_num_threads()}",
          flush=True)
    figures.update(images=len(files), engine=fast.engine, batch_size=BATCH)
    ref_vectors, ref_top1, ref_total, ref_model = plain_loop(reference, files)
    _say(figures, "plain_end_to_end_images_per_s", len(files) / ref_total)
    _say(figures, "plain_model_alone_images_per_s", len(files) / ref_model)

    fast.embed_prepared(_prepared(fast, files[:BATCH]))  # warm-up, as the plain loop had none
    start = time.perf_counter()
    result = embed_files(fast, [str(f) for f in files], [str(f) for f in files], _read,
                         batch_size=BATCH, workers=2)
    total = time.perf_counter() - start
    assert not result.failed, result.failed
    _say(figures, "vsearch_end_to_end_images_per_s", len(files) / total)
    pixels = _prepared(fast, files)
    _say(figures, "vsearch_model_alone_images_per_s", model_alone(fast, pixels, BATCH))
    _say(figures, "ratio_end_to_end", figures["vsearch_end_to_end_images_per_s"]
         / figures["plain_end_to_end_images_per_s"], "x")
    _say(figures, "ratio_model_alone", figures["vsearch_model_alone_images_per_s"]
         / figures["plain_model_alone_images_per_s"], "x")
    agreement(figures, ref_vectors, ref_top1, result.vectors, result.labels, labels)
    engines(figures, spec, pixels[: 32 if quick else 256])


def agreement(figures: dict, ref: np.ndarray, ref_top1: list[str], vectors: np.ndarray,
              predicted: list, labels: list[str]) -> None:
    cosines = (ref * vectors).sum(axis=1)
    _say(figures, "cosine_min", cosines.min())
    _say(figures, "cosine_mean", cosines.mean())
    _say(figures, "images_below_0.999", int((cosines < 0.999).sum()))
    _say(figures, "top1_label_agreement", np.mean([p[0][0] == r for p, r in zip(predicted, ref_top1,
                                                                                   strict=True)]))
    _say(figures, "precision_at_1_reference", precision_at_1(ref, labels))
    _say(figures, "precision_at_1_vsearch", precision_at_1(vectors, labels))
    _say(figures, "precision_at_1_change_points", 100 * (figures["precision_at_1_vsearch"]
                                                         - figures["precision_at_1_reference"]))


def engines(figures: dict, spec: ModelSpec, pixels: list[Prepared]) -> None:
    """Every engine's model-alone speed on the same pixels: how `auto` was chosen."""
    print(f"# default model alone by engine, {len(pixels)} images (images/s)", flush=True)
    runs: list[tuple[str, str, int]] = [("torch", "fp32", 1), ("torch", "fp32", 8), ("torch", "bf16", 8),
                                        ("onnx", "fp32", 1), ("onnx", "fp32", BATCH),
                                        ("openvino", "fp32", BATCH), ("openvino", "bf16", BATCH)]
    for engine, precision, batch in runs:
        if engine == "openvino" and importlib.util.find_spec("openvino") is None:
            continue
        model = load_model(spec, precision=precision, engine=engine)
        _say(figures, f"engine_{engine}_{precision}_batch{batch}", model_alone(model, pixels, batch))


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

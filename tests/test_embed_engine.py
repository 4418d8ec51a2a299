"""The exported engines give the eager model's vectors and labels, the setting is validated, large
JPEGs decode at reduced scale without moving their vectors, and the embed benchmark runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsearch_pipeline.core.decode import decode_rgb
from vsearch_pipeline.core.embed import embed_files
from vsearch_pipeline.core.engines import resolve_engine, validate_engine
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
from vsearch_pipeline.core.models import load_model
from vsearch_pipeline.settings import ModelSettings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def caltech(shared_data: Path) -> list[Path]:
    """Two photos from each of 12 classes, spread over the alphabet."""
    classes = sorted(p for p in (shared_data / "caltech101").iterdir() if p.name != "BACKGROUND_Google")
    return [photo for folder in classes[::9] for photo in sorted(folder.glob("*.jpg"))[:2]]


@pytest.fixture(scope="module")
def torch_model():
    return load_model(ModelSpec(DEFAULT_MODEL), engine="torch")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return load_model(ModelSpec(DEFAULT_MODEL), engine="onnx")


def _reference(model, files: list[Path]) -> tuple[np.ndarray, list]:
    """The plain way: full-size decode, the model's transform, eager fp32."""
    return model.embed_prepared([model.prepare(Image.open(f).convert("RGB")) for f in files])


def test_onnx_engine_agrees_with_torch_on_real_photos(torch_model, onnx_model, caltech) -> None:
    assert onnx_model.engine == "onnx" and onnx_model.version == torch_model.version
    expected, expected_labels = _reference(torch_model, caltech)
    result = embed_files(onnx_model, [f.name for f in caltech], [str(f) for f in caltech],
                         lambda uri: Path(uri).read_bytes(), batch_size=8)
    assert not result.failed and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    cosines = (result.vectors * expected).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    assert [row[0][0] for row in result.labels] == [row[0][0] for row in expected_labels]
    probs = np.array([[p for _, p in row] for row in result.labels])
    np.testing.assert_allclose(probs, [[p for _, p in row] for row in expected_labels], atol=1e-3)


def test_onnx_file_is_cached_by_model_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vsearch_pipeline.core.engines import exported_onnx

    monkeypatch.setenv("VSEARCH_CACHE", str(tmp_path))

    class TwoOutputs(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pooled = x.mean(dim=(2, 3))
            return pooled, pooled * 2

    first = exported_onnx(TwoOutputs(), torch.zeros(2, 3, 8, 8), "v1")
    mtime = first.stat().st_mtime_ns
    assert exported_onnx(TwoOutputs(), torch.zeros(2, 3, 8, 8), "v1") == first
    assert first.stat().st_mtime_ns == mtime  # not exported again
    assert exported_onnx(TwoOutputs(), torch.zeros(2, 3, 8, 8), "v2") != first
    assert sorted(p.suffix for p in (tmp_path / "onnx").iterdir()) == [".onnx", ".onnx"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"engine": "tensorrt"}, r"model\.engine must be one of"),
        ({"engine": "onnx", "name": "open_clip:ViT-B-32", "pretrained": "random"},
         r"model\.engine 'onnx' runs only 'efficientnet-lite0'"),
        ({"engine": "onnx", "precision": "bf16"}, r"model\.engine 'onnx' runs in fp32 only"),
        ({"engine": "openvino", "device": "cuda"}, r"runs on the CPU only"),
    ],
)
def test_engine_setting_is_validated(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSettings(**settings)
    with pytest.raises(ValueError, match=message):
        validate_engine(settings["engine"], settings.get("name", DEFAULT_MODEL),
                        settings.get("device", "cpu"), settings.get("precision", "fp32"))


def test_auto_picks_the_measured_engine() -> None:
    assert ModelSettings().engine == "auto"
    assert resolve_engine("auto", DEFAULT_MODEL, "cpu", "fp32") == "onnx"
    assert resolve_engine("auto", DEFAULT_MODEL, "cpu", "bf16") == "torch"
    assert resolve_engine("auto", "open_clip:ViT-B-32", "cpu", "fp32") == "torch"
    assert resolve_engine("torch", DEFAULT_MODEL, "cpu", "fp32") == "torch"


def _large_jpegs(shared_data: Path, count: int) -> list[Path]:
    """Photos whose shorter side is at least 1024 pixels: the ones DCT scaling reduces."""
    found = []
    for path in sorted((shared_data / "caltech101" / "BACKGROUND_Google").glob("*.jpg")):
        with Image.open(path) as im:
            if min(im.size) >= 1024:
                found.append(path)
        if len(found) == count:
            break
    return found


def test_reduced_jpeg_decoding_keeps_vectors(onnx_model, shared_data: Path) -> None:
    photos = _large_jpegs(shared_data, 4)
    if not photos:
        pytest.skip("no large JPEG in the test photos")
    full = [decode_rgb(p.read_bytes()) for p in photos]
    reduced = [decode_rgb(p.read_bytes(), min_size=onnx_model.decode_size) for p in photos]
    assert all(min(r.size) < min(f.size) for r, f in zip(reduced, full, strict=True))
    assert all(min(r.size) >= onnx_model.decode_size for r in reduced)
    a, labels_a = onnx_model.embed_prepared([onnx_model.prepare(im) for im in full])
    b, labels_b = onnx_model.embed_prepared([onnx_model.prepare(im) for im in reduced])
    # libjpeg's scaled decode moves these 12-megapixel photos by up to ~0.003 (measured minimum
    # 0.9963 over the 108 large Caltech photos at this decode size); labels stay.
    assert (a * b).sum(axis=1).min() >= 0.995
    assert [row[0][0] for row in labels_a] == [row[0][0] for row in labels_b]


@pytest.mark.slow
def test_embed_benchmark_quick_writes_its_figures(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "embed.json"
    subprocess.run([sys.executable, "-m", "benchmarks", "embed", "--quick", "--json", str(out)],
                   cwd=ROOT, check=True, timeout=300)
    figures = json.loads(out.read_text())["figures"]
    for key in ("plain_end_to_end_images_per_s", "vsearch_end_to_end_images_per_s", "ratio_end_to_end",
                "ratio_model_alone", "cosine_min", "precision_at_1_reference",
                "precision_at_1_vsearch", "vit_b32_bf16_over_fp32_batch1"):
        assert figures[key] > 0, key
    assert figures["cosine_min"] >= 0.999

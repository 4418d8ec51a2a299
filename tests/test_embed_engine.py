"""The exported engines give the eager model's vectors and labels, the setting is validated, large
JPEGs decode at reduced scale without moving their vectors, and the embed benchmark runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsearch_pipeline.core import lite0
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


FP32 = ModelSpec(DEFAULT_MODEL, int8=False)


@pytest.fixture(scope="module")
def torch_model():
    return load_model(FP32, engine="torch")


@pytest.fixture(scope="module")
def onnx_model():
    return load_model(FP32, engine="onnx")


@pytest.fixture(scope="module")
def int8_model():
    return load_model(ModelSpec(DEFAULT_MODEL))


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


def test_graphs_are_made_once_and_cached_by_what_identifies_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 graph is quantized from the fp32 one, both land in the cache once, every squashed
    view shares the one graph, and the int8 file holds int8 weights (about a quarter the size)."""
    monkeypatch.setenv("VSEARCH_CACHE", str(tmp_path))
    int8 = ModelSpec(DEFAULT_MODEL)
    graph = lite0.cached_graph(int8)
    fp32 = lite0.graph_path(FP32)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted([graph.name, fp32.name])
    mtime = graph.stat().st_mtime_ns
    assert lite0.cached_graph(int8) == graph and graph.stat().st_mtime_ns == mtime  # not again
    assert graph.stat().st_size < fp32.stat().st_size / 3
    assert lite0.graph_path(ModelSpec(DEFAULT_MODEL, view="whole")) == graph
    assert lite0.graph_path(ModelSpec(DEFAULT_MODEL, view="centre_crop", int8=False)) == fp32


def test_int8_keeps_the_labels_and_the_neighbours_of_fp32(onnx_model, int8_model, caltech) -> None:
    """Int8 moves each vector a little (cosine to fp32 about 0.98), not what it means: the top
    label and each photo's nearest other photo mostly stay."""
    fp32_spec, int8_spec = ModelSpec(DEFAULT_MODEL, int8=False), ModelSpec(DEFAULT_MODEL)
    fp32 = load_model(fp32_spec, engine="onnx")
    assert int8_model.version != fp32.version and "int8" in int8_model.version
    assert int8_spec.key == fp32_spec.key + "-int8"
    expected, expected_labels = _reference(fp32, caltech)
    got, labels = _reference(int8_model, caltech)
    cosines = (expected * got).sum(axis=1)
    assert cosines.mean() >= 0.95 and cosines.min() >= 0.85, cosines
    agree = np.mean([a[0][0] == b[0][0] for a, b in zip(labels, expected_labels, strict=True)])
    assert agree >= 0.8, agree

    def nearest(v: np.ndarray) -> np.ndarray:
        sims = v @ v.T
        np.fill_diagonal(sims, -1)
        return sims.argmax(axis=1)

    assert np.mean(nearest(got) == nearest(expected)) >= 0.8


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


def test_int8_is_the_default_where_it_runs_and_refused_where_it_does_not() -> None:
    assert ModelSettings().spec.int8 and ModelSettings().spec.key == "efficientnet-lite0-regions-int8"
    assert not ModelSettings(engine="torch").spec.int8  # unset: float where int8 cannot run
    assert not ModelSettings(name="open_clip:ViT-B-32", pretrained="random").spec.int8
    with pytest.raises(ValueError, match=r"model\.int8 runs with engine 'onnx'"):
        ModelSettings(engine="torch", int8=True)
    with pytest.raises(ValueError, match=r"model\.int8 runs only 'efficientnet-lite0'"):
        ModelSettings(name="open_clip:ViT-B-32", pretrained="random", int8=True)


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
    for key in ("plain_end_to_end_images_per_s", "default_end_to_end_images_per_s",
                "default_ratio_to_plain", "one_pass_fp32_ratio_to_plain", "two_passes_int8_ratio_to_plain",
                "int8_search_cosine_to_fp32_min", "plain_map_at_10", "default_map_at_10",
                "engine_onnx_int8_batch32", "vit_b32_bf16_over_fp32_batch1"):
        assert figures[key] > 0, key
    assert figures["ratio_end_to_end"] == figures["default_ratio_to_plain"]
    assert figures["centre_crop_onnx_fp32_cosine_to_plain_min"] >= 0.999
    assert figures["int8_search_cosine_to_fp32_mean"] >= 0.95

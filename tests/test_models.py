"""Embedding models (vsearch_pipeline.core.models) and batch embedding (vsearch_pipeline.core.embed).

Nothing here downloads: the default model's weights ship in a package, and the open_clip model
gets random weights that the test saves to a checkpoint file itself.
"""

from __future__ import annotations

import io
import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vsearch_pipeline.core.decode import decode_rgb
from vsearch_pipeline.core.embed import (
    embed_files,
    embeddings_table,
    table_vectors,
    vector_problems,
)
from vsearch_pipeline.core.model_spec import (
    DEFAULT_MODEL,
    ModelSpec,
    file_sha256,
    validate_settings,
)
from vsearch_pipeline.core.models import aspect_size, load_model
from vsearch_pipeline.core.sources import read_object

OPEN_CLIP_ARCH = "ViT-S-32-alt"  # the smallest plain ViT in open_clip's list (~43M parameters)


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("the test tried to open a network connection")


@pytest.fixture(scope="module")
def photos(cases: Path) -> dict[str, Image.Image]:
    names = {
        "original": "mixed_images/ukbench00120.jpg",
        "resized": "mixed_images/ukbench00120_resize.jpg",
        "unrelated": "mixed_images/ukbench09268.jpg",
    }
    # decode_rgb applies EXIF orientation (ukbench09268.jpg is stored turned by 90 degrees).
    return {key: decode_rgb((cases / rel).read_bytes()) for key, rel in names.items()}


@pytest.fixture(scope="module")
def lite0():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        return load_model(ModelSpec(DEFAULT_MODEL, view="centre_crop"))


@pytest.fixture(scope="module")
def lite0_vectors(lite0, photos) -> np.ndarray:
    return lite0.embed_images([photos["original"], photos["resized"], photos["unrelated"]])


# ----------------------------------------------------------------------------- efficientnet-lite0


def test_default_model_loads_from_packaged_weights(lite0) -> None:
    assert lite0.name == DEFAULT_MODEL
    assert lite0.dim == 1280 and lite0.image_size == 224
    assert lite0.device == "cpu" and lite0.precision == "fp32"
    assert "weights sha256:" in lite0.version
    # the centre crop keeps the key vectors had before views existed; it is the view
    # near-duplicate detection reads when the search view is the squashed whole image
    centre = ModelSpec(DEFAULT_MODEL, view="centre_crop")
    assert centre.key == "efficientnet-lite0"
    assert ModelSpec(DEFAULT_MODEL, view="whole").copy_spec == centre
    # the default view: multi for the default model, the centre crop for open_clip models
    assert ModelSpec(DEFAULT_MODEL) == ModelSpec(DEFAULT_MODEL, view="multi")
    assert ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random").view == "centre_crop"


def test_whole_view_sees_what_the_centre_crop_throws_away(lite0) -> None:
    """A wide photo whose sides are painted over: the centre crop (the default) cannot tell the
    two apart, the whole view can. Each view has its own key and version, so their vectors
    never mix."""
    import skimage.data

    wide = Image.fromarray(skimage.data.astronaut()).resize((600, 300))
    painted = wide.copy()
    painted.paste((255, 0, 0), (0, 0, 140, 300))
    painted.paste((0, 0, 255), (460, 0, 600, 300))
    whole = load_model(ModelSpec(DEFAULT_MODEL, view="whole"))
    crop_a, crop_b = lite0.embed_images([wide, painted])
    whole_a, whole_b = whole.embed_images([wide, painted])
    assert float(crop_a @ crop_b) > 0.999
    assert float(whole_a @ whole_b) < 0.95
    assert ModelSpec(DEFAULT_MODEL, view="whole").key == "efficientnet-lite0-whole"
    assert whole.version == lite0.version + "; view whole"
    with pytest.raises(ValueError, match="model.view must be one of"):
        load_model(ModelSpec(DEFAULT_MODEL, view="tiles"))


def test_default_model_gives_unit_float32_vectors(lite0_vectors) -> None:
    assert lite0_vectors.shape == (3, 1280) and lite0_vectors.dtype == np.float32
    assert np.isfinite(lite0_vectors).all()
    np.testing.assert_allclose(np.linalg.norm(lite0_vectors, axis=1), 1.0, atol=1e-5)
    assert vector_problems(lite0_vectors) == {"non_finite": 0, "non_unit": 0}


def test_default_model_is_deterministic(lite0, photos, lite0_vectors) -> None:
    again = lite0.embed_images([photos["original"], photos["resized"], photos["unrelated"]])
    np.testing.assert_allclose(again, lite0_vectors, rtol=0, atol=1e-6)
    # Batch composition does not change a vector.
    alone = lite0.embed_images([photos["unrelated"]])
    np.testing.assert_allclose(alone[0], lite0_vectors[2], rtol=0, atol=1e-5)


def test_default_model_labels_what_it_sees(lite0) -> None:
    import skimage.data

    photos = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    vectors, labels = lite0.embed_prepared([lite0.prepare(p) for p in photos])
    np.testing.assert_allclose(vectors, lite0.embed_images(photos), atol=1e-6)
    cat, coffee = ([name for name, _ in row] for row in labels)
    assert len(cat) == len(coffee) == 3
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(cat), cat
    assert coffee[0] == "espresso", coffee
    probs = [p for _, p in labels[1]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    with pytest.raises(ValueError, match="no text tower"):
        lite0.embed_text(["a cat"])


def test_edited_copy_is_closer_than_an_unrelated_photo(lite0_vectors) -> None:
    original, resized, unrelated = lite0_vectors
    copy_cos, other_cos = float(original @ resized), float(original @ unrelated)
    assert copy_cos > 0.7
    assert other_cos < 0.5
    assert copy_cos > other_cos + 0.3


def test_bf16_is_close_to_fp32(photos, lite0_vectors) -> None:
    bf16 = load_model(ModelSpec(DEFAULT_MODEL, view="centre_crop"), precision="bf16")
    assert bf16.precision == "bf16"
    vectors = bf16.embed_images([photos["original"], photos["resized"], photos["unrelated"]])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * lite0_vectors).sum(axis=1)
    assert (cosines >= 0.99).all(), cosines


# ----------------------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def open_clip_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    import open_clip

    torch.manual_seed(1234)
    model, _, preprocess = open_clip.create_model_and_transforms(OPEN_CLIP_ARCH)
    model.eval()
    ckpt = tmp_path_factory.mktemp("open_clip") / "random_vit.pt"
    torch.save(model.state_dict(), ckpt)
    return model, preprocess, ckpt


def test_open_clip_checkpoint_loads_with_the_same_weights(open_clip_checkpoint, photos) -> None:
    original, preprocess, ckpt = open_clip_checkpoint
    spec = ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", pretrained=str(ckpt))  # a centre crop, as open_clip's own
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        loaded = load_model(spec)
    images = [photos["original"], photos["unrelated"]]
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(
            original.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1
        ).numpy()
    got = loaded.embed_images(images)
    assert got.shape == (2, original.visual.output_dim) == (2, loaded.dim)
    assert loaded.image_size == 224
    cosines = (got * expected).sum(axis=1)
    assert (cosines > 0.9999).all(), cosines

    digest = file_sha256(str(ckpt))[:12]
    assert spec.key == f"open_clip-{OPEN_CLIP_ARCH}-ckpt-{digest}"
    assert f"pretrained ckpt-{digest}" in loaded.version

    # The text tower lands in the same space as the images, as the model itself computes it.
    import open_clip

    texts = ["a photo of a cat", "a red car"]
    with torch.inference_mode():
        expected_text = torch.nn.functional.normalize(
            original.encode_text(open_clip.get_tokenizer(OPEN_CLIP_ARCH)(texts)), dim=-1).numpy()
    got_text = loaded.embed_text(texts)
    assert got_text.shape == (2, loaded.dim)
    np.testing.assert_allclose(got_text, expected_text, atol=1e-5)


def test_model_keys_are_file_name_safe() -> None:
    assert ModelSpec("open_clip:ViT-B-32", "laion2b_s34b_b79k").key == "open_clip-ViT-B-32-laion2b_s34b_b79k"
    assert ModelSpec("open_clip:ViT-B-32", "random", "whole").key == "open_clip-ViT-B-32-random-whole"
    assert ModelSpec("open_clip:ViT-B-32", "a/b:c").key == "open_clip-ViT-B-32-a_b_c"


def test_checkpoints_with_different_content_get_different_keys(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    key_a = ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", str(a)).key
    key_b = ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", str(b)).key
    assert key_a != key_b
    # The key depends on the content, not on the file name.
    c = tmp_path / "c.pt"
    c.write_bytes(b"weights one")
    assert ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", str(c)).key == key_a


def test_key_follows_a_checkpoint_overwritten_in_place(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"first training run")
    before = ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", str(ckpt)).key
    ckpt.write_bytes(b"second training run, other weights")
    after = ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", str(ckpt)).key
    assert after != before


@pytest.mark.parametrize(("width", "height", "expected"), [
    (300, 300, (224, 224)),  # square: one shape
    (300, 200, (224, 32 * round(1.5 * 7))),  # 3:2 landscape: the longer side to a multiple of 32
    (200, 300, (32 * round(1.5 * 7), 224)),  # portrait: the same, turned
    (2000, 300, (224, 448)),  # a panorama: at most twice the shorter side
    (231, 224, (224, 224)),  # nearly square rounds to the square
])
def test_aspect_kept_view_falls_into_few_shapes(width: int, height: int,
                                                expected: tuple[int, int]) -> None:
    assert aspect_size(width, height, 224) == expected


@pytest.fixture(scope="module")
def multi():
    return load_model(ModelSpec(DEFAULT_MODEL, view="multi"))


def test_multi_view_is_the_squashed_and_the_aspect_kept_vector_side_by_side(multi, photos) -> None:
    """Each half is a unit vector over sqrt 2: the first is the whole view's own vector, the
    second the aspect-kept view GeM-pooled, which differs from it (else there is no point)."""
    import skimage.data

    images = [photos["original"], photos["unrelated"], Image.fromarray(skimage.data.astronaut())]
    vectors = multi.embed_images(images)
    assert vectors.shape == (3, 2560) and multi.dim == 2560 and vectors.dtype == np.float32
    square, aspect = vectors[:, :1280] * np.sqrt(2), vectors[:, 1280:] * np.sqrt(2)
    np.testing.assert_allclose(np.linalg.norm(square, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(aspect, axis=1), 1, atol=1e-5)
    whole = load_model(ModelSpec(DEFAULT_MODEL, view="whole"))
    np.testing.assert_allclose(square, whole.embed_images(images), atol=1e-5)
    assert ((square * aspect).sum(axis=1) < 0.99).all()
    assert ModelSpec(DEFAULT_MODEL, view="multi").key == "efficientnet-lite0-multi"
    assert "view multi" in multi.version and "GeM p=3" in multi.version
    assert ModelSpec(DEFAULT_MODEL, view="multi").copy_spec.view == "centre_crop"


def test_multi_view_batches_images_of_several_shapes_in_order(multi, photos) -> None:
    """A batch that mixes landscape, portrait and square images gives each image the vector it
    gets alone, in the order given; the ONNX engine agrees with eager torch."""
    import skimage.data

    base = Image.fromarray(skimage.data.chelsea())  # 451 x 300
    images = [base, base.transpose(Image.Transpose.ROTATE_90), photos["original"],
              base.crop((0, 0, 300, 300)), photos["unrelated"], base.resize((900, 300))]
    shapes = {tuple(multi.prepare(image)[1].shape) for image in images}
    assert len(shapes) >= 4
    batched, labels = multi.embed_prepared([multi.prepare(image) for image in images])
    alone = np.concatenate([multi.embed_images([image]) for image in images])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert labels[0][0][0] in ("tabby", "tiger cat", "Egyptian cat")
    onnx = load_model(ModelSpec(DEFAULT_MODEL, view="multi"), engine="onnx")
    assert onnx.version == multi.version
    assert ((onnx.embed_images(images) * batched).sum(axis=1) > 0.999).all()


def test_queries_are_embedded_without_torch_by_the_cached_graphs(multi, photos, tmp_path) -> None:
    """Once the pipeline exported the default model's graphs, a query is embedded by them with
    NumPy preprocessing: the pipeline's own vectors, and torch is never imported."""
    import subprocess
    import sys

    import skimage.data

    from vsearch_pipeline.core.query_encoder import cached_query_encoder

    spec = ModelSpec(DEFAULT_MODEL, view="multi")
    onnx = load_model(spec, engine="onnx")  # exports the two graphs into the cache, if not yet
    light = cached_query_encoder(spec)
    assert light is not None and light.version == onnx.version and light.dim == onnx.dim
    images = [photos["original"], photos["unrelated"], Image.fromarray(skimage.data.chelsea())]
    np.testing.assert_allclose(light.embed_images(images), onnx.embed_images(images), atol=1e-6)
    assert ((light.embed_images(images) * multi.embed_images(images)).sum(axis=1) > 0.999).all()
    assert cached_query_encoder(ModelSpec(DEFAULT_MODEL, view="centre_crop")) is None  # full model
    Image.fromarray(skimage.data.chelsea()).save(tmp_path / "cat.png")
    code = ("import sys; from PIL import Image; "
            "from vsearch_pipeline.core.model_spec import ModelSpec, DEFAULT_MODEL; "
            "from vsearch_pipeline.core.query_encoder import cached_query_encoder; "
            "encoder = cached_query_encoder(ModelSpec(DEFAULT_MODEL, view='multi')); "
            f"vector = encoder.embed_images([Image.open({str(tmp_path / 'cat.png')!r})]); "
            "print(vector.shape[1], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2560", "False"]


def test_multi_view_finds_the_cropped_copy_the_whole_view_misses(multi) -> None:
    """The aspect-kept half sees a wide photo at its own proportions, as a crop of it is seen:
    the crop's nearest photo is its original, nearer than with the squashed view alone."""
    import skimage.data

    wide = Image.fromarray(skimage.data.astronaut()).resize((900, 450))
    crop = wide.crop((150, 0, 750, 450))
    whole = load_model(ModelSpec(DEFAULT_MODEL, view="whole"))
    (w_wide, w_crop), (m_wide, m_crop) = whole.embed_images([wide, crop]), multi.embed_images([wide, crop])
    assert float(m_wide @ m_crop) > float(w_wide @ w_crop)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("spec", "device", "precision", "message"),
    [
        (ModelSpec("resnet50"), "cpu", "fp32", r"model\.name 'resnet50' is unknown"),
        (ModelSpec("open_clip:NoSuchArch", "random"), "cpu", "fp32", r"model\.name: open_clip has no"),
        (ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}"), "cpu", "fp32", r"model\.pretrained is required"),
        (ModelSpec(DEFAULT_MODEL), "tpu", "fp32", r"model\.device must be one of"),
        (ModelSpec(DEFAULT_MODEL), "cpu", "fp16", r"model\.precision must be one of"),
        (ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random", "multi"), "cpu", "fp32",
         r"model\.view 'multi' needs a convolutional network"),
    ],
)
def test_validate_settings_errors(spec: ModelSpec, device: str, precision: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_settings(spec, device, precision)
    with pytest.raises(ValueError, match=message):
        load_model(spec, device, precision)


def test_valid_settings_pass() -> None:
    validate_settings(ModelSpec(DEFAULT_MODEL), "cpu", "bf16")
    validate_settings(ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random"), "cpu", "fp32")


# ----------------------------------------------------------------------------- embed_files


def test_embed_files_with_an_unreadable_file(lite0, cases: Path) -> None:
    files = {
        "id-original": cases / "mixed_images/ukbench00120.jpg",
        "id-broken": cases / "mixed_images/ukbench00120_hflip.jpg",
        "id-resized": cases / "mixed_images/ukbench00120_resize.jpg",
        "id-notimage": cases / "mixed_images/ukbench09268_corrupt.jpg",
        "id-other": cases / "mixed_images/ukbench09268.jpg",
    }
    broken_uri = str(files["id-broken"])

    def read(uri: str) -> bytes:
        if uri == broken_uri:
            raise OSError("permission denied (simulated)")
        return read_object(uri)

    calls: list[tuple[int, int]] = []
    result = embed_files(lite0, list(files), [str(p) for p in files.values()], read,
                         batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert result.ids == ["id-original", "id-resized", "id-other"]
    assert set(result.failed) == {"id-broken", "id-notimage"}
    assert "permission denied (simulated)" in result.failed["id-broken"]
    assert "not an image" in result.failed["id-notimage"]
    assert result.vectors.shape == (3, 1280) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert calls[-1] == (5, 5) and len(calls) == 2  # a report per model batch of 2, and the rest
    # Each vector belongs to its own file: close to that file embedded on its own.
    for row, image_id in enumerate(result.ids):
        # embed_files decodes JPEGs with DCT scaling (here 1/2), so not bit-identical.
        alone = lite0.embed_images([decode_rgb(files[image_id].read_bytes())])[0]
        assert float(result.vectors[row] @ alone) > 0.97


def test_embed_files_when_everything_fails(lite0) -> None:
    def read(uri: str) -> bytes:
        raise FileNotFoundError(uri)

    result = embed_files(lite0, ["a", "b"], ["/nope/a.jpg", "/nope/b.jpg"], read)
    assert result.ids == [] and set(result.failed) == {"a", "b"}
    assert result.vectors.shape == (0, 1280) and result.vectors.dtype == np.float32


def test_embed_files_with_a_copy_model_reads_each_file_once(lite0, cases: Path) -> None:
    """Search and copy views from one read and decode of each file, each view's vectors the
    same as that view embedded alone, row for row; a file that fails, fails for both."""
    files = [cases / "mixed_images" / n for n in
             ("ukbench00120.jpg", "ukbench00120_resize.jpg", "ukbench09268_corrupt.jpg",
              "ukbench09268.jpg", "ukbench00120_rotation.jpg")]
    whole = load_model(ModelSpec(DEFAULT_MODEL, view="whole"))
    reads: list[str] = []

    def read(uri: str) -> bytes:
        reads.append(uri)
        return read_object(uri)

    uris = [str(f) for f in files]
    both = embed_files(whole, uris, uris, read, batch_size=2, copy_model=lite0)
    assert sorted(reads) == sorted(uris)
    assert list(both.failed) == [uris[2]] and both.ids == uris[:2] + uris[3:]
    alone = embed_files(lite0, uris, uris, read_object, batch_size=2)
    np.testing.assert_allclose(both.copy_vectors, alone.vectors, atol=1e-5)
    assert both.copy_labels == alone.labels
    np.testing.assert_allclose(both.vectors, embed_files(whole, uris, uris, read_object).vectors,
                               atol=1e-5)
    # the views see different pixels: the vectors of a file differ between them
    assert float(np.max(np.sum(both.vectors * both.copy_vectors, axis=1))) < 0.99


# ----------------------------------------------------------------------------- shard tables


def test_embeddings_table_round_trip() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 12)).astype(np.float32)
    ids = [f"id{i}" for i in range(7)]
    table = embeddings_table(ids, vectors, "efficientnet-lite0", "v1")
    assert table.column_names == ["id", "model", "model_version", "vector", "labels", "label_probs"]
    assert table.column("labels").to_pylist() == [[]] * 7
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 12)
    assert table.column("id").to_pylist() == ids
    assert set(table.column("model").to_pylist()) == {"efficientnet-lite0"}
    assert set(table.column("model_version").to_pylist()) == {"v1"}
    np.testing.assert_array_equal(table_vectors(table), vectors)
    # Through parquet and split into several chunks, the vectors come back the same.
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=3)
    back = pq.read_table(io.BytesIO(buffer.getvalue()))
    assert back.column("vector").num_chunks > 1
    out = table_vectors(back)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, vectors)


def test_embeddings_table_of_float64_and_empty() -> None:
    vectors = np.eye(3, dtype=np.float64)
    np.testing.assert_array_equal(table_vectors(embeddings_table(["a", "b", "c"], vectors, "m", "v")),
                                  vectors.astype(np.float32))
    empty = embeddings_table([], np.zeros((0, 5), np.float32), "m", "v")
    assert len(empty) == 0
    assert table_vectors(empty).shape == (0, 5)


def test_vector_problems_counts() -> None:
    vectors = np.array([[1, 0], [0.6, 0.8], [2, 0], [np.nan, 0], [np.inf, 1]], dtype=np.float32)
    assert vector_problems(vectors) == {"non_finite": 2, "non_unit": 1}


# Embeds 1-pixel images and strips at and past the aspect limit with each (model, pretrained,
# view) of argv[1], printing what was embedded and why the rest were refused.
EMBED_STRIPS = """
import io, json, sys
from PIL import Image
from vsearch_pipeline.core.embed import embed_files
from vsearch_pipeline.core.model_spec import ModelSpec
from vsearch_pipeline.core.models import load_model

files = {}
for width, height in json.loads(sys.argv[2]):
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    files[f"{width}x{height}"] = out.getvalue()
found = {}
for name, pretrained, view in json.loads(sys.argv[1]):
    done = embed_files(load_model(ModelSpec(name, pretrained, view)), list(files), list(files),
                       files.__getitem__, batch_size=4)
    found[f"{name} {view}"] = {"embedded": done.ids, "failed": done.failed,
                               "dim": int(done.vectors.shape[1])}
print(json.dumps(found))
"""
STRIP_ADDRESS_SPACE = 8 * 2**30  # torch and ONNX Runtime map ~5 GB; a 1 x 100,000 strip asked 19 GB


def test_every_view_of_every_model_family_embeds_strips_in_bounded_memory() -> None:
    """1-pixel images and strips up to 100:1 are embedded by every view; longer strips are refused
    from the header before any resize (a 475-byte 1 x 100,000 PNG took the embedding step to
    17.7 GB); the whole child runs under an address-space limit, so a regression fails here."""
    kept = [(1, 1), (1, 100), (100, 1), (2, 200), (150, 2)]
    refused = [(1, 101), (1, 10_000), (1, 100_000), (100_000, 1), (3, 1000)]
    runs = [[DEFAULT_MODEL, None, view] for view in ("centre_crop", "whole", "multi")]
    runs += [[f"open_clip:{OPEN_CLIP_ARCH}", "random", view] for view in ("centre_crop", "whole")]

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (STRIP_ADDRESS_SPACE, STRIP_ADDRESS_SPACE))

    done = subprocess.run([sys.executable, "-c", EMBED_STRIPS, json.dumps(runs),
                           json.dumps(kept + refused)], capture_output=True, text=True,
                          preexec_fn=limit_memory, timeout=600, env={**os.environ,
                                                                     "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(found) == len(runs)
    for run, outcome in found.items():
        assert outcome["embedded"] == [f"{w}x{h}" for w, h in kept], run
        assert set(outcome["failed"]) == {f"{w}x{h}" for w, h in refused}, run
        assert all("over the limit of 100:1" in why for why in outcome["failed"].values()), run

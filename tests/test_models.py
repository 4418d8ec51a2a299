"""Embedding models (vsearch_pipeline.core.models) and batch embedding (vsearch_pipeline.core.embed).

Nothing here downloads: the default model's weights ship in a package, and the open_clip model
gets random weights that the test saves to a checkpoint file itself.
"""

from __future__ import annotations

import dataclasses
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

from vsearch_pipeline.core import lite0 as lite0_network
from vsearch_pipeline.core.decode import decode_rgb
from vsearch_pipeline.core.embed import (
    embed_files,
    embeddings_table,
    table_vectors,
    vector_problems,
)
from vsearch_pipeline.core.engines import cache_dir
from vsearch_pipeline.core.model_spec import (
    DEFAULT_MODEL,
    ModelSpec,
    file_sha256,
    validate_settings,
)
from vsearch_pipeline.core.models import load_model
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
    """The fp32 network seeing the centre crop: the vectors stored before views and int8 existed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        return load_model(ModelSpec(DEFAULT_MODEL, view="centre_crop", int8=False))


@pytest.fixture(scope="module")
def lite0_vectors(lite0, photos) -> np.ndarray:
    return lite0.embed_images([photos["original"], photos["resized"], photos["unrelated"]])


@pytest.fixture(scope="module")
def default():
    """The default model as the pipeline runs it: view `regions`, int8."""
    return load_model(ModelSpec(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def default_copy(default):
    """The default model's near-duplicate view (`copy_spec`)."""
    return load_model(default.spec.copy_spec)


def _test_images(photos: dict[str, Image.Image]) -> list[Image.Image]:
    import skimage.data

    return [photos["original"], photos["resized"], photos["unrelated"],
            Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.chelsea()),
            Image.fromarray(skimage.data.coffee())]


# ----------------------------------------------------------------------------- efficientnet-lite0


def test_default_model_loads_from_packaged_weights(lite0) -> None:
    assert lite0.name == DEFAULT_MODEL
    assert lite0.dim == 1280 and lite0.image_size == 224
    assert lite0.device == "cpu" and lite0.precision == "fp32"
    assert "weights sha256:" in lite0.version and "int8" not in lite0.version
    # the fp32 centre crop keeps the key vectors had before views and int8 existed
    assert lite0.spec.key == "efficientnet-lite0"
    assert ModelSpec(DEFAULT_MODEL, view="centre_crop").key == "efficientnet-lite0-int8"
    # the default: view regions in int8 for the default model, the fp32 centre crop for open_clip
    assert ModelSpec(DEFAULT_MODEL) == ModelSpec(DEFAULT_MODEL, view="regions", int8=True)
    assert ModelSpec(DEFAULT_MODEL).key == "efficientnet-lite0-regions-int8"
    clip = ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random")
    assert clip.view == "centre_crop" and clip.int8 is False
    # near-duplicate detection reads the centre of the same feature map for the squashed views,
    # the centre crop otherwise; the copy spec keeps the search spec's int8
    for view in ("whole", "regions", "centre_region"):
        for int8 in (True, False):
            spec = ModelSpec(DEFAULT_MODEL, view=view, int8=int8)
            assert spec.copy_spec == ModelSpec(DEFAULT_MODEL, view="centre_region", int8=int8)
    assert lite0.spec.copy_spec == lite0.spec
    assert ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random", "whole").copy_spec == clip


def test_whole_view_sees_what_the_centre_crop_throws_away(lite0) -> None:
    """A wide photo whose sides are painted over: the centre crop cannot tell the two apart, the
    whole view can. Each view has its own key and version, so their vectors never mix."""
    import skimage.data

    wide = Image.fromarray(skimage.data.astronaut()).resize((600, 300))
    painted = wide.copy()
    painted.paste((255, 0, 0), (0, 0, 140, 300))
    painted.paste((0, 0, 255), (460, 0, 600, 300))
    whole = load_model(ModelSpec(DEFAULT_MODEL, view="whole", int8=False))
    crop_a, crop_b = lite0.embed_images([wide, painted])
    whole_a, whole_b = whole.embed_images([wide, painted])
    assert float(crop_a @ crop_b) > 0.999
    assert float(whole_a @ whole_b) < 0.95
    assert ModelSpec(DEFAULT_MODEL, view="whole", int8=False).key == "efficientnet-lite0-whole"
    assert ModelSpec(DEFAULT_MODEL, view="whole").key == "efficientnet-lite0-whole-int8"
    assert whole.version == lite0.version + "; view whole"
    with pytest.raises(ValueError, match="model.view must be one of"):
        load_model(ModelSpec(DEFAULT_MODEL, view="tiles"))
    with pytest.raises(ValueError, match="model.view must be one of"):
        load_model(ModelSpec(DEFAULT_MODEL, view="multi"))  # the view `regions` replaced


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
    spec = ModelSpec(DEFAULT_MODEL, view="centre_crop", int8=False)
    bf16 = load_model(spec, precision="bf16", engine="torch")
    assert bf16.precision == "bf16" and bf16.engine == "torch"
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

# ----------------------------------------------------------------------------- views of one pass


def test_default_view_pools_regions_of_the_squashed_image(default, photos) -> None:
    """The default: R-MAC regions of the whole image, in int8, 1280 dimensions, unit float32;
    a vector other than the whole view's average (else there is no point), the same in any
    batch, and the head still names what it sees."""
    assert default.spec.view == "regions" and default.spec.int8 is True
    assert default.dim == 1280 and default.image_size == 224 and default.engine == "onnx"
    assert default.spec.key == "efficientnet-lite0-regions-int8"
    assert "view regions" in default.version and "GeM p=3" in default.version
    assert "int8" in default.version
    images = _test_images(photos)
    vectors, labels = default.embed_prepared([default.prepare(image) for image in images])
    assert vectors.shape == (6, 1280) and vectors.dtype == np.float32
    assert vector_problems(vectors) == {"non_finite": 0, "non_unit": 0}
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = np.concatenate([default.embed_images([image]) for image in images])
    np.testing.assert_allclose(vectors, alone, atol=1e-5)
    assert {"tabby", "tiger cat", "Egyptian cat"} & {name for name, _ in labels[4]}, labels[4]
    assert labels[5][0][0] == "espresso", labels[5]
    whole = load_model(ModelSpec(DEFAULT_MODEL, view="whole"))
    cosines = (vectors * whole.embed_images(images)).sum(axis=1)
    assert (cosines < 0.99).all(), cosines


def test_centre_region_is_the_copy_view_from_the_same_pass(default, default_copy, photos) -> None:
    """The near-duplicate vectors average the centre of the search view's feature map: one run
    of the network gives both, and they weigh the centre of the image more than `whole` does."""
    import skimage.data

    assert default_copy.spec == ModelSpec(DEFAULT_MODEL, view="centre_region")
    assert default_copy.spec.key == "efficientnet-lite0-centre_region-int8"
    assert "view centre_region" in default_copy.version and "int8" in default_copy.version
    whole = load_model(ModelSpec(DEFAULT_MODEL, view="whole"))
    centre_crop = load_model(ModelSpec(DEFAULT_MODEL, view="centre_crop"))
    fp32 = load_model(ModelSpec(DEFAULT_MODEL, int8=False))
    assert default.shares_pass(default_copy) and default_copy.shares_pass(default)
    assert default.shares_pass(whole)
    assert centre_crop.network is default.network and not default.shares_pass(centre_crop)
    assert not default.shares_pass(fp32)  # the fp32 network is another network
    images = _test_images(photos)
    vectors = default_copy.embed_images(images)
    assert vectors.shape == (6, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    whole_vectors = whole.embed_images(images)
    assert np.abs(vectors - whole_vectors).max() > 1e-3
    assert ((vectors * whole_vectors).sum(axis=1) < 0.9999).all()
    # a cup of coffee in the middle of a cat: the centre view is nearer the coffee alone
    cat, coffee = Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())
    composite = cat.resize((448, 448))
    composite.paste(coffee.resize((224, 224)), (112, 112))
    centre_pair = default_copy.embed_images([composite, coffee.resize((448, 448))])
    whole_pair = whole.embed_images([composite, coffee.resize((448, 448))])
    assert float(centre_pair[0] @ centre_pair[1]) > float(whole_pair[0] @ whole_pair[1]) + 0.01


def test_poolings_of_a_feature_map() -> None:
    """The views' poolings on maps whose answer is known: an even map pools to itself, regions
    sum nine unit region vectors, the centre region ignores what lies outside the centre."""
    region = lite0_network.region_weights(7, 7)
    assert region.shape == (49, 9) and region.dtype == np.float32
    np.testing.assert_allclose(region.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(region[:, 0], 1 / 49, atol=1e-7)  # the first region: the whole map
    # 2 x 2 squares of sides 2/3 and 1/2 of 7 cells, at the corners: 5 x 5 and 4 x 4 cells touched
    assert (region[:, 1:] > 0).sum(axis=0).tolist() == [25] * 4 + [16] * 4
    assert region[48, 1] == 0 and region[0, 4] == 0 and region[0, 1] > 0  # top-left, bottom-right
    even = np.full((2, 4, 7, 7), 3.0, np.float32)
    np.testing.assert_allclose(lite0_network.average(even), 3.0, rtol=1e-6)
    np.testing.assert_allclose(lite0_network.centre_region(even), 3.0, rtol=1e-6)
    np.testing.assert_allclose(lite0_network.regions(even), 9 / np.sqrt(4), rtol=1e-5)
    centre = lite0_network.centre_weights(7, 7).reshape(7, 7)
    np.testing.assert_allclose(centre.sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(centre, centre.T, atol=1e-7)
    np.testing.assert_allclose(centre, centre[::-1, ::-1], atol=1e-7)
    assert centre[3, 3] > centre[0, 3] > centre[0, 0] > 0
    rim = np.zeros((1, 1, 7, 7), np.float32)
    rim[..., 0, :] = 1.0  # only the top row lit
    assert float(lite0_network.centre_region(rim)[0, 0]) < float(lite0_network.average(rim)[0, 0])
    # GeM (p = 3) lies between average and max pooling: one hot cell counts more than its mean
    hot = np.zeros((1, 2, 7, 7), np.float32)
    hot[0, 0, 3, 3] = 1.0
    hot[0, 1] = 1 / 49
    pooled = lite0_network.regions(hot)[0]
    assert pooled[0] > pooled[1]
    assert set(lite0_network.POOLINGS) == {"centre_crop", "whole", "regions", "centre_region"}


def test_search_and_copy_views_come_from_one_network_run(default, default_copy, cases: Path) -> None:
    """embed_files with the copy view runs the network once per batch for both, and each view's
    vectors are those it gives alone; a copy view with another geometry costs its own run."""
    files = [cases / "mixed_images" / n for n in
             ("ukbench00120.jpg", "ukbench00120_resize.jpg", "ukbench09268_corrupt.jpg",
              "ukbench09268.jpg", "ukbench00120_rotation.jpg")]
    uris = [str(f) for f in files]
    runs: list[int] = []

    def counting(batch: np.ndarray):
        runs.append(len(batch))
        return default.network(batch)

    search = dataclasses.replace(default, network=counting)
    copy = dataclasses.replace(default_copy, network=counting)
    both = embed_files(search, uris, uris, read_object, batch_size=2, copy_model=copy)
    assert runs == [2, 2]  # four images that decode, two batches, one run each
    assert list(both.failed) == [uris[2]] and both.ids == uris[:2] + uris[3:]
    assert both.vectors.shape == both.copy_vectors.shape == (4, 1280)
    assert both.copy_vectors.dtype == np.float32
    alone = embed_files(default, uris, uris, read_object, batch_size=2)
    copy_alone = embed_files(default_copy, uris, uris, read_object, batch_size=2)
    np.testing.assert_allclose(both.vectors, alone.vectors, atol=1e-5)
    np.testing.assert_allclose(both.copy_vectors, copy_alone.vectors, atol=1e-5)
    assert both.labels == both.copy_labels == alone.labels
    assert float(np.min(np.sum(both.vectors * both.copy_vectors, axis=1))) < 0.99
    runs.clear()
    crop = dataclasses.replace(load_model(ModelSpec(DEFAULT_MODEL, view="centre_crop")),
                               network=counting)
    embed_files(search, uris, uris, read_object, batch_size=2, copy_model=crop)
    assert runs == [2, 2, 2, 2]


def test_int8_keeps_the_fp32_vectors_and_their_order(default, photos) -> None:
    """Int8 vectors are other vectors (their own key and version) but close to fp32's, and they
    rank the edited copy and the nearest photos as fp32 does."""
    fp32 = load_model(ModelSpec(DEFAULT_MODEL, int8=False), engine="onnx")
    assert fp32.spec.key == "efficientnet-lite0-regions" != default.spec.key
    assert "int8" not in fp32.version and fp32.version != default.version
    assert fp32.network is not default.network
    images = _test_images(photos)
    int8_vectors, fp32_vectors = default.embed_images(images), fp32.embed_images(images)
    cosines = (int8_vectors * fp32_vectors).sum(axis=1)
    assert cosines.mean() > 0.95 and (cosines > 0.9).all(), cosines
    assert (cosines < 0.99999).any(), "int8 gave the fp32 vectors: was it quantized?"
    for vectors in (int8_vectors, fp32_vectors):
        original, resized, unrelated = vectors[:3]
        assert float(original @ resized) > 0.7
        assert float(original @ resized) > float(original @ unrelated) + 0.3
    int8_similar, fp32_similar = int8_vectors @ int8_vectors.T, fp32_vectors @ fp32_vectors.T
    np.fill_diagonal(int8_similar, -1)
    np.fill_diagonal(fp32_similar, -1)
    assert int8_similar.argmax(axis=1).tolist() == fp32_similar.argmax(axis=1).tolist()


def test_onnx_fp32_agrees_with_eager_torch(photos) -> None:
    """The exported fp32 graph gives eager PyTorch's vectors and classes; int8 runs only in
    ONNX Runtime."""
    spec = ModelSpec(DEFAULT_MODEL, int8=False)
    eager, onnx = load_model(spec, engine="torch"), load_model(spec, engine="onnx")
    assert eager.engine == "torch" and onnx.engine == "onnx" and eager.version == onnx.version
    images = _test_images(photos)
    eager_vectors, eager_labels = eager.embed_prepared([eager.prepare(im) for im in images])
    onnx_vectors, onnx_labels = onnx.embed_prepared([onnx.prepare(im) for im in images])
    cosines = (eager_vectors * onnx_vectors).sum(axis=1)
    assert (cosines > 0.999).all(), cosines
    assert [row[0][0] for row in eager_labels] == [row[0][0] for row in onnx_labels]
    with pytest.raises(ValueError, match="model.int8 runs with engine 'onnx'"):
        load_model(ModelSpec(DEFAULT_MODEL), engine="torch")


def test_queries_are_embedded_without_torch_once_the_graph_is_cached(default, tmp_path) -> None:
    """Once the int8 graph is cached, a fresh process loads the default model and embeds a query
    with NumPy preprocessing and ONNX Runtime: the pipeline's own vectors, torch never imported."""
    import skimage.data

    assert lite0_network.graph_path(default.spec).is_file()  # the fixture exported it
    path = tmp_path / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    expected = default.embed_images([Image.open(path)])[0]
    code = ("import json, sys; from PIL import Image; "
            "from vsearch_pipeline.core.model_spec import ModelSpec, DEFAULT_MODEL; "
            "from vsearch_pipeline.core.models import load_model; "
            "model = load_model(ModelSpec(DEFAULT_MODEL)); "
            f"vector = model.embed_images([Image.open({str(path)!r})])[0]; "
            "print(json.dumps({'version': model.version, 'torch': 'torch' in sys.modules, "
            "'vector': vector.tolist()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "VSEARCH_CACHE": str(cache_dir())}, timeout=300)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["torch"] is False
    assert found["version"] == default.version
    np.testing.assert_allclose(np.array(found["vector"], np.float32), expected, atol=1e-5)


def test_regions_find_the_cropped_copy_nearer_than_the_whole_view(default) -> None:
    """Regions pool parts of the image as well as the whole: a crop of a wide photo, squashed
    otherwise than its original, is nearer its original than with the whole view's average."""
    import skimage.data

    wide = Image.fromarray(skimage.data.astronaut()).resize((900, 450))
    crop = wide.crop((150, 0, 750, 450))
    whole = load_model(ModelSpec(DEFAULT_MODEL, view="whole"))
    (w_wide, w_crop), (r_wide, r_crop) = whole.embed_images([wide, crop]), default.embed_images([wide, crop])
    assert float(r_wide @ r_crop) > float(w_wide @ w_crop) + 0.01


def test_preprocessing_is_torchvision_s() -> None:
    """The NumPy preprocessing computes what torchvision's transforms did before it: the centre
    crop (Resize(256) and CenterCrop(224)) and the squashed square, both bicubic."""
    import skimage.data
    from torchvision import transforms

    bicubic = transforms.InterpolationMode.BICUBIC
    normalize = [transforms.ToTensor(), transforms.Normalize([127 / 255] * 3, [128 / 255] * 3)]
    crop = transforms.Compose([transforms.Resize(256, interpolation=bicubic),
                               transforms.CenterCrop(224), *normalize])
    square = transforms.Compose([transforms.Resize((224, 224), interpolation=bicubic), *normalize])
    astronaut, cat = Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.chelsea())
    for image in (astronaut, cat, cat.transpose(Image.Transpose.ROTATE_90), astronaut.resize((333, 250)),
                  astronaut.resize((101, 900)), astronaut.resize((225, 224)), astronaut.resize((3, 2))):
        ours = lite0_network.pixels(lite0_network.centre_cropped(image))
        assert ours.shape == (3, 224, 224) and ours.dtype == np.float32, image.size
        assert np.abs(ours - crop(image).numpy()).max() < 1e-5, image.size
        ours = lite0_network.pixels(lite0_network.squashed(image))
        assert ours.shape == (3, 224, 224) and ours.dtype == np.float32, image.size
        assert np.abs(ours - square(image).numpy()).max() < 1e-5, image.size


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("spec", "device", "precision", "message"),
    [
        (ModelSpec("resnet50"), "cpu", "fp32", r"model\.name 'resnet50' is unknown"),
        (ModelSpec("open_clip:NoSuchArch", "random"), "cpu", "fp32", r"model\.name: open_clip has no"),
        (ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}"), "cpu", "fp32", r"model\.pretrained is required"),
        (ModelSpec(DEFAULT_MODEL, int8=False), "tpu", "fp32", r"model\.device must be one of"),
        (ModelSpec(DEFAULT_MODEL, int8=False), "cpu", "fp16", r"model\.precision must be one of"),
        (ModelSpec(DEFAULT_MODEL, view="multi"), "cpu", "fp32", r"model\.view must be one of"),
        (ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random", "regions"), "cpu", "fp32",
         r"model\.view 'regions' pools a convolutional feature map"),
        (ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random", "centre_region"), "cpu", "fp32",
         r"model\.view 'centre_region' pools a convolutional feature map"),
        (ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random", int8=True), "cpu", "fp32",
         r"model\.int8 runs only 'efficientnet-lite0'"),
        (ModelSpec(DEFAULT_MODEL), "cpu", "bf16", r"model\.int8 runs on the CPU, with precision 'fp32'"),
    ],
)
def test_validate_settings_errors(spec: ModelSpec, device: str, precision: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_settings(spec, device, precision)
    with pytest.raises(ValueError, match=message):
        load_model(spec, device, precision)


def test_valid_settings_pass() -> None:
    validate_settings(ModelSpec(DEFAULT_MODEL), "cpu", "fp32")
    validate_settings(ModelSpec(DEFAULT_MODEL, int8=False), "cpu", "bf16")
    validate_settings(ModelSpec(DEFAULT_MODEL, view="centre_region", int8=False), "cpu", "bf16")
    validate_settings(ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random"), "cpu", "fp32")
    validate_settings(ModelSpec(f"open_clip:{OPEN_CLIP_ARCH}", "random", "whole"), "cpu", "bf16")


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
    runs = [[DEFAULT_MODEL, None, view] for view in ("centre_crop", "whole", "regions", "centre_region")]
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

"""The self-supervised projection head, on real photographs: views, training, the NumPy head, and
its effect on retrieval by class measured on images it was not fitted on."""

from pathlib import Path

import numpy as np
import pytest

from vsearch_pipeline.core.decode import decode_rgb
from vsearch_pipeline.core.metrics import retrieval_metrics
from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
from vsearch_pipeline.core.models import load_model
from vsearch_pipeline.core.projection_head import train_projection_head, view_vectors
from vsearch_pipeline.core.retrieval import ProjectionHead
from vsearch_pipeline.settings import RetrievalSettings

SEEN, PER_CLASS = 20, 20  # classes fitted on: 10 images of each to fit on, 10 to evaluate on
UNSEEN, PER_UNSEEN = 10, 12  # other classes, not fitted on, to evaluate on


@pytest.fixture(scope="module")
def model():
    return load_model(ModelSpec(DEFAULT_MODEL, view="centre_crop"))


@pytest.fixture(scope="module")
def caltech(shared_data: Path, model):
    """Fit part: the ordinary (centre-crop) vector and one augmented view of half the images of
    the seen classes. Held-out: the ordinary vectors, which the index holds, of the other half
    ('held') and of classes the head never saw ('unseen'), with class labels."""
    root = shared_data / "caltech101"
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in
                     {"BACKGROUND_Google", "Faces_easy"} and len(list(p.iterdir())) >= PER_CLASS)
    step = len(folders) // SEEN
    seen, unseen = folders[::step][:SEEN], folders[step // 2::step][:UNSEEN]

    def images(folder: Path, count: int) -> list:
        return [decode_rgb(path.read_bytes(), min_size=model.decode_min_size)
                for path in sorted(folder.iterdir())[:count]]

    fit_images, held_images, held_labels, unseen_images, unseen_labels = [], [], [], [], []
    for label, folder in enumerate(seen):
        photos = images(folder, PER_CLASS)
        fit_images += photos[::2]
        held_images += photos[1::2]
        held_labels += [label] * len(photos[1::2])
    for label, folder in enumerate(unseen, start=SEEN):
        photos = images(folder, PER_UNSEEN)
        unseen_images += photos
        unseen_labels += [label] * len(photos)
    return {
        "fit_views": view_vectors(model, fit_images, views=1, seed=0),
        "fit_plain": model.embed_images(fit_images),
        "held": model.embed_images(held_images),
        "held_labels": np.array(held_labels),
        "unseen": model.embed_images(unseen_images),
        "unseen_labels": np.array(unseen_labels),
        "some_images": fit_images[:4],
    }


def class_retrieval(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> dict[str, float]:
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)  # the query itself is left out
    ranked = np.argsort(-similarity, axis=1)[:, :k]
    return retrieval_metrics(ranked, labels, labels, ks=[1, k])


def test_views_are_unit_vectors_deterministic_for_a_seed_and_differ_from_the_plain_vector(
        model, caltech):
    views, plain = caltech["fit_views"], caltech["fit_plain"]
    assert views.shape == (len(plain), 1, model.dim) and views.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(views, axis=2), 1.0, atol=1e-5)
    # a view is close to its image's plain vector (closer than to other images'), never equal
    to_own = np.sum(views[:, 0] * plain, axis=1)
    to_other = np.sum(views[:, 0] * np.roll(plain, 1, axis=0), axis=1)
    assert to_own.max() < 0.999 and to_own.mean() > to_other.mean() + 0.2
    images = caltech["some_images"]
    two = view_vectors(model, images, 2, seed=0)
    np.testing.assert_array_equal(two[:, :1], views[:len(images)])  # the same draws, in order
    assert not np.allclose(two[:, 0], two[:, 1])
    assert not np.allclose(view_vectors(model, images, 1, seed=1), views[:len(images)])


def fit(caltech: dict, **kwargs):
    return train_projection_head(caltech["fit_views"], plain=caltech["fit_plain"], **kwargs)


def test_training_lowers_the_loss_and_the_same_seed_gives_the_same_head(caltech):
    head, history = fit(caltech, seed=3)
    losses = history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert history["seconds"] < 60
    again, _ = fit(caltech, seed=3)
    assert again.version == head.version
    np.testing.assert_array_equal(again.apply(caltech["held"]), head.apply(caltech["held"]))
    other, _ = fit(caltech, seed=4)
    assert other.version != head.version


def test_apply_gives_unit_vectors_and_the_head_round_trips_exactly(caltech):
    head, _ = fit(caltech, epochs=2)
    out = head.apply(caltech["held"])
    assert out.shape == (len(caltech["held"]), head.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    one = head.apply(caltech["held"][0])
    assert one.shape == (head.dim,)
    np.testing.assert_allclose(one, out[0], atol=1e-6)
    copy = ProjectionHead.from_bytes(head.to_bytes())
    assert copy.version == head.version
    np.testing.assert_array_equal(copy.apply(caltech["held"]), out)
    with pytest.raises(ValueError, match="1280"):
        head.apply(np.ones((2, 7), dtype=np.float32))


def test_the_head_gains_on_held_out_images_of_seen_classes_and_not_on_unseen_classes(caltech):
    head, _ = fit(caltech)
    gains = {}
    for part in ("held", "unseen"):
        raw = class_retrieval(caltech[part], caltech[f"{part}_labels"])["map@10"]
        with_head = class_retrieval(head.apply(caltech[part]), caltech[f"{part}_labels"])["map@10"]
        print(f"{part}: mAP@10 raw {raw:.4f}, with the head {with_head:.4f}")
        gains[part] = with_head - raw
    # Measured here: +0.036 on held-out images of the classes fitted on, -0.019 on unseen ones
    # (+0.030 to +0.055 and -0.023 to +0.001 over eight random draws of classes and images). At
    # full scale (Caltech-101, module notes) the same: +0.010 on images of the fitted classes,
    # -0.024 on the 51 classes not fitted on; hence the head is not on by default.
    assert gains["held"] > 0.01, gains
    assert gains["unseen"] < 0.01, gains
    assert gains["held"] - gains["unseen"] > 0.015, gains
    assert not RetrievalSettings().projection_head

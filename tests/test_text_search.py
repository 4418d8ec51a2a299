"""Text search over the words attached to images (vsearch_pipeline.core.text_search), with the
packaged sentence model (no download)."""

import numpy as np
import pytest

from vsearch_pipeline.core.text_search import AttachedTextIndex, SentenceEncoder, path_phrases


@pytest.mark.parametrize(("path", "phrases"), [
    ("Faces_easy/image_0001.jpg", ["faces easy"]),
    ("trips/2019/IMG_1234.JPG", ["trips"]),
    ("animals/big-cats/snowLeopard_03.png", ["animals", "big cats", "snow leopard"]),
    ("a/a/a.jpg", ["a"]),
    ("", []),
])
def test_path_phrases_keep_the_words_that_describe(path, phrases):
    assert path_phrases(path) == phrases


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def test_encoder_gives_unit_vectors_and_embeds_each_text_once(encoder):
    vectors = encoder.encode(["a red car", "a red car", "a sailing boat"])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert vectors[0] @ encoder.encode(["an automobile"])[0] > vectors[2] @ encoder.encode(
        ["an automobile"])[0]


def test_images_rank_by_their_best_phrase(encoder):
    paths = ["cars/one.jpg", "misc/two.jpg", "misc/three.jpg", "boats/four.jpg"]
    labels = [["sports car"], ["tabby", "tiger cat"], ["tabby"], []]
    probs = [[0.9], [0.9, 0.05], [0.3], []]
    index = AttachedTextIndex(encoder, paths, labels, probs)
    query = encoder.encode(["a kitten"])[0]
    scores = index.scores(query)
    assert set(np.argsort(-scores)[:2]) == {1, 2}
    assert scores[1] > scores[2]  # the surer guess of the same class ranks first
    assert index.matched_phrase(1, query) in {"tabby", "tiger cat"}
    # A tag counts as a word of its images, and can outrank everything else.
    tagged = index.scores(query, {"my kitten": [3]})
    assert int(np.argmax(tagged)) == 3
    assert index.matched_phrase(3, query, ["my kitten"]) == "my kitten"


def test_a_phrase_twice_on_one_image_counts_once(encoder):
    """The folder 'ant' and the label 'ant' on one image must not add up to a score above 1."""
    index = AttachedTextIndex(encoder, ["ant/x.jpg", "bee/y.jpg"], [["ant"], ["bee"]], [[0.9], [0.9]])
    scores = index.scores(encoder.encode(["ant"])[0])
    assert scores[0] == pytest.approx(1.0, abs=1e-4) and scores[1] < 0.9


def test_nothing_attached_scores_zero(encoder):
    index = AttachedTextIndex(encoder, ["IMG_0001.jpg"], [[]], [[]])
    assert index.phrases == [] and index.scores(encoder.encode(["cat"])[0]).tolist() == [0.0]
    assert index.matched_phrase(0, encoder.encode(["cat"])[0]) is None

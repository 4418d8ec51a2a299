"""Clustering of embeddings (vsearch_pipeline.core.cluster) on well-separated synthetic blobs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from vsearch_pipeline.core.cluster import (
    MIN_CLUSTER_SIZES,
    ClusterParams,
    cluster_images,
    reduce_dimensions,
    validate_params,
)
from vsearch_pipeline.core.knn_hdbscan import knn_hdbscan_labels

N_BLOBS, PER_BLOB, D = 5, 40, 64


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """5 blobs of 40 unit vectors in 64-d, shuffled, and the blob of each vector."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(N_BLOBS, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(N_BLOBS), PER_BLOB)
    vectors = centres[truth] + rng.normal(scale=0.05, size=(len(truth), D))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(len(truth))
    return vectors[order].astype(np.float32), truth[order]


@pytest.mark.parametrize("reduce", ["none", "pca"])
@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_recovers_the_blobs(blobs, method: str, reduce: str) -> None:
    vectors, truth = blobs
    params = ClusterParams(method=method, reduce=reduce, n_components=16,
                           n_clusters=N_BLOBS if method == "kmeans" else None)
    labels = cluster_images(vectors, params).labels
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    assert adjusted_rand_score(truth, labels) > 0.9
    assert len(set(labels.tolist()) - {-1}) == N_BLOBS
    assert (labels == -1).mean() < 0.1  # hardly any noise on clean blobs


@pytest.mark.filterwarnings("ignore:n_jobs value:UserWarning")
def test_recovers_the_blobs_after_umap(blobs) -> None:
    vectors, truth = blobs
    labels = cluster_images(vectors, ClusterParams(method="hdbscan", reduce="umap", n_components=5)).labels
    assert adjusted_rand_score(truth, labels) > 0.9


def test_kmeans_default_cluster_count(blobs) -> None:
    vectors, _ = blobs
    labels = cluster_images(vectors, ClusterParams(method="kmeans", reduce="none")).labels
    assert len(set(labels.tolist())) == round(np.sqrt(len(vectors) / 2))  # 10 for 200 points
    assert (labels >= 0).all()


def test_kmeans_is_deterministic_for_a_seed(blobs) -> None:
    vectors, _ = blobs
    params = ClusterParams(method="kmeans", reduce="pca", n_components=8, n_clusters=7, seed=3)
    np.testing.assert_array_equal(cluster_images(vectors, params).labels,
                                  cluster_images(vectors, params).labels)


def test_hdbscan_marks_isolated_points_as_noise(blobs) -> None:
    vectors, _ = blobs
    rng = np.random.default_rng(1)
    outliers = rng.normal(size=(5, D))
    outliers /= np.linalg.norm(outliers, axis=1, keepdims=True)
    mixed = np.vstack([vectors, outliers.astype(np.float32)])
    labels = cluster_images(mixed, ClusterParams(method="hdbscan", reduce="none")).labels
    assert (labels[-5:] == -1).all()
    assert (labels[:-5] >= 0).mean() > 0.9


def test_pca_reduction_is_unit_length_and_capped(blobs) -> None:
    vectors, _ = blobs
    reduced = reduce_dimensions(vectors, ClusterParams(reduce="pca", n_components=16))
    assert reduced.shape == (len(vectors), 16) and reduced.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    # Never more components than the data allows: n - 2 for 6 points.
    few = reduce_dimensions(vectors[:6], ClusterParams(reduce="pca", n_components=32))
    assert few.shape == (6, 4)
    # Asking for at least the input dimension, or no reduction, returns the input unchanged.
    assert reduce_dimensions(vectors, ClusterParams(reduce="pca", n_components=D)) is vectors
    assert reduce_dimensions(vectors, ClusterParams(reduce="none")) is vectors


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
@pytest.mark.parametrize("n", [0, 1, 4])
def test_too_few_points_are_all_noise(blobs, method: str, n: int) -> None:
    vectors, _ = blobs
    labels = cluster_images(vectors[:n], ClusterParams(method=method, min_cluster_size=5)).labels
    assert labels.dtype == np.int64
    assert labels.tolist() == [-1] * n


@pytest.mark.parametrize(
    ("params", "setting"),
    [
        (ClusterParams(method="dbscan"), "clusters.method"),
        (ClusterParams(reduce="tsne"), "clusters.reduce"),
        (ClusterParams(n_components=1), "clusters.n_components"),
        (ClusterParams(min_cluster_size=1), "clusters.min_cluster_size"),
        (ClusterParams(method="kmeans", n_clusters=1), "clusters.n_clusters"),
    ],
)
def test_validation_errors_name_the_setting(blobs, params: ClusterParams, setting: str) -> None:
    with pytest.raises(ValueError, match=setting.replace(".", r"\.")):
        validate_params(params)
    with pytest.raises(ValueError, match=setting.replace(".", r"\.")):
        cluster_images(blobs[0], params)


def test_params_as_dict() -> None:
    assert ClusterParams(method="kmeans", n_clusters=4).as_dict() == {
        "method": "kmeans", "reduce": "pca", "n_components": 32, "min_cluster_size": None,
        "min_samples": None, "n_clusters": 4, "seed": 0,
    }


def test_suggested_name_prefers_a_common_tag_then_the_common_label():
    from vsearch_pipeline.core.cluster import suggest_name

    labels = ["tabby", "tabby", "tiger cat", None]
    assert suggest_name(4, [[], [], [], []], labels) == ("tabby", [("tabby", 2), ("tiger cat", 1)])
    name, candidates = suggest_name(4, [["my cats"], ["my cats", "x"], [], []], labels)
    assert name == "my cats" and candidates[0] == ("my cats", 2)
    # One tag on one member of ten is not enough to name the cluster.
    assert suggest_name(10, [["odd"]] + [[]] * 9, ["dog"] * 10)[0] == "dog"
    assert suggest_name(2, [[], []], [None, None]) == (None, [])


def test_suggested_name_counts_each_member_once_per_name():
    """A member tagged with its own predicted class counts once for that name, not twice: a
    6-image cluster never has a candidate of 12 (issue 20: "Egyptian cat (12)")."""
    from vsearch_pipeline.core.cluster import suggest_name

    name, candidates = suggest_name(6, [["Egyptian cat"]] * 6, ["Egyptian cat"] * 6)
    assert (name, candidates) == ("Egyptian cat", [("Egyptian cat", 6)])
    # Partly overlapping: 3 tagged and labelled alike, 2 only labelled, 1 tagged something else.
    tags = [["cat"], ["cat"], ["cat", "cat"], [], [], ["pet"]]
    labels = ["cat", "cat", "cat", "cat", "cat", "dog"]
    name, candidates = suggest_name(6, tags, labels)
    assert name == "cat"
    assert candidates == [("cat", 5), ("pet", 1), ("dog", 1)]
    assert all(count <= 6 for _, count in candidates)


def test_knn_graph_hdbscan_agrees_with_the_hdbscan_library() -> None:
    """Overlapping clusters of uneven density, with stray points: the pipeline's k-NN-graph
    HDBSCAN labels them as hdbscan.HDBSCAN does."""
    import hdbscan
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 16))
    sizes = rng.integers(20, 120, size=40)
    points = np.vstack([c + rng.normal(scale=rng.uniform(0.15, 0.5), size=(s, 16))
                        for c, s in zip(centres, sizes, strict=True)]
                       + [rng.normal(scale=2.0, size=(60, 16))]).astype(np.float32)
    ours = knn_hdbscan_labels(points, 8)
    theirs = hdbscan.HDBSCAN(min_cluster_size=8).fit_predict(points.astype(np.float64))
    assert len(set(theirs)) > 20
    assert adjusted_rand_score(theirs, ours) > 0.97
    assert abs(np.mean(ours == -1) - np.mean(theirs == -1)) < 0.02


def test_hdbscan_covers_real_photos_that_it_alone_calls_noise(shared_data) -> None:
    """15 photos of each of 40 Caltech-101 classes: HDBSCAN alone calls a fifth of them noise
    (whole classes too sparse beside the dense ones); the covering steps give nearly all a
    cluster without losing agreement with the classes, and say how each joined."""
    from vsearch_pipeline.core.decode import decode_rgb
    from vsearch_pipeline.core.model_spec import DEFAULT_MODEL, ModelSpec
    from vsearch_pipeline.core.models import load_model

    root = shared_data / "caltech101"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")
    photos = [(c, p) for c in classes[::2][:40] for p in sorted((root / c).glob("*.jpg"))[:15]]
    model = load_model(ModelSpec(DEFAULT_MODEL))
    vectors = model.embed_images([decode_rgb(p.read_bytes(), min_size=model.decode_size)
                                  for _, p in photos])
    truth = np.array([classes.index(c) for c, _ in photos])

    def agreement(labels: np.ndarray) -> float:  # outliers as singletons
        labels = labels.copy()
        labels[labels < 0] = labels.max() + 1 + np.arange((labels < 0).sum())
        return adjusted_rand_score(truth, labels)

    params = ClusterParams()
    alone = knn_hdbscan_labels(reduce_dimensions(vectors, params), 5, 5)
    clustering = cluster_images(vectors, params)
    labels, counts = clustering.labels, clustering.counts()
    assert (alone < 0).mean() > 0.15  # measured 0.225
    assert (labels < 0).mean() <= 0.10  # measured 0.055
    assert agreement(labels) >= agreement(alone) - 0.02  # measured 0.743 against 0.740
    assert counts["second_pass"] > 0 and counts["neighbours"] > 0
    assert counts["outlier"] == int((labels < 0).sum()) and sum(counts.values()) == len(photos)
    assert clustering.min_cluster_size in MIN_CLUSTER_SIZES and "silhouette" in clustering.chosen_by
    fixed = cluster_images(vectors, ClusterParams(min_cluster_size=20))
    assert fixed.min_cluster_size == 20 and fixed.chosen_by == "clusters.min_cluster_size"

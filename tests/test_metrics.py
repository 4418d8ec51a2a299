"""Hand-checked tests for vsearch_pipeline.core.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vsearch_pipeline.core.metrics import cluster_metrics, retrieval_metrics

# ----------------------------------------------------------------------------- retrieval

# Items 0..5: group 0 = {0, 1, 2}, group 1 = {3, 4}, item 5 in no group.
ITEM_GROUPS = np.array([0, 0, 0, 1, 1, -1])


def test_single_query_hand_checked() -> None:
    # Query is item 0 (group 0), so R = 3 - 1 = 2. Hits at ranks 1 and 3 of 5.
    ranked = np.array([[1, 3, 2, 4, 5]])
    m = retrieval_metrics(ranked, np.array([0]), ITEM_GROUPS, ks=(1, 3, 5))
    assert m["queries"] == 1 and m["skipped_queries"] == 0
    # k=1: one hit in one slot; recall 1/2; AP@1 = P(1)*1 / min(1, 2) = 1; nDCG@1 = 1/1.
    assert m["precision@1"] == pytest.approx(1.0)
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["hit_rate@1"] == pytest.approx(1.0)
    assert m["map@1"] == pytest.approx(1.0)
    assert m["ndcg@1"] == pytest.approx(1.0)
    # k=3: 2 hits -> precision 2/3, recall 2/2; AP@3 = (1/1 + 2/3) / 2 = 0.8333.
    # nDCG@3 = (1 + 1/log2(4)) / (1 + 1/log2(3)) = 1.5 / 1.6309 = 0.9197.
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["map@3"] == pytest.approx(0.8333333)
    assert m["ndcg@3"] == pytest.approx(0.9197207)
    # k=5: precision 2/5, AP@5 = (1/1 + 2/3) / min(5, 2) = 0.8333, nDCG unchanged.
    assert m["precision@5"] == pytest.approx(0.4)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["hit_rate@5"] == pytest.approx(1.0)
    assert m["map@5"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))


def test_result_keys_and_plain_types() -> None:
    m = retrieval_metrics(np.array([[1, 2]]), np.array([0]), ITEM_GROUPS, ks=(1, 2))
    expected = {"queries", "skipped_queries"} | {
        f"{name}@{k}" for name in ("precision", "recall", "hit_rate", "map", "ndcg") for k in (1, 2)
    }
    assert set(m) == expected
    assert type(m["queries"]) is int and type(m["skipped_queries"]) is int
    assert all(type(v) is float for key, v in m.items() if "@" in key)


def test_perfect_ranking_is_one_everywhere() -> None:
    # 3 groups of 6 items; every item queries and gets its 5 group mates back (R = 5 = K).
    item_groups = np.repeat(np.arange(3), 6)
    ranked = np.array([[j for j in np.flatnonzero(item_groups == g) if j != i]
                       for i, g in enumerate(item_groups)])
    m = retrieval_metrics(ranked, item_groups, item_groups, ks=(1, 3, 5))
    assert m["queries"] == 18
    for key, value in m.items():
        if "@" in key and not key.startswith("recall"):
            assert value == pytest.approx(1.0), key
    # recall@k = k / 5 below the full group, 1.0 at k = 5.
    assert m["recall@1"] == pytest.approx(0.2)
    assert m["recall@3"] == pytest.approx(0.6)
    assert m["recall@5"] == pytest.approx(1.0)


def test_no_hits_is_zero_everywhere() -> None:
    # Query item 0 (group 0) gets only group-1 and ungrouped items.
    m = retrieval_metrics(np.array([[3, 4, 5]]), np.array([0]), ITEM_GROUPS, ks=(1, 3))
    assert m["queries"] == 1
    assert all(v == 0.0 for key, v in m.items() if "@" in key)


def test_padding_never_counts_as_hit() -> None:
    # Item 5 (last item, index -1 in NumPy) is put in group 0 so a naive item_groups[-1]
    # lookup would wrongly count each padding slot as a hit.
    item_groups = np.array([0, 1, 0, 1, 1, 0])
    # Query item 0: group 0 = {0, 2, 5}, R = 2. Only result: item 2 at rank 1.
    m = retrieval_metrics(np.array([[2, -1, -1]]), np.array([0]), item_groups, ks=(1, 3))
    # precision@3 = 1/3, recall@3 = 1/2, AP@3 = (1/1) / min(3, 2) = 0.5,
    # nDCG@3 = 1 / (1 + 1/log2(3)) = 0.6131.
    assert m["precision@1"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["map@3"] == pytest.approx(0.5)
    assert m["ndcg@3"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_all_padding_row() -> None:
    m = retrieval_metrics(np.array([[-1, -1]]), np.array([0]), ITEM_GROUPS, ks=(2,))
    assert m["queries"] == 1
    assert m["precision@2"] == 0.0 and m["map@2"] == 0.0 and m["ndcg@2"] == 0.0


def test_skipped_queries_are_counted_and_not_averaged() -> None:
    # Groups: 0 = {0, 1}, 1 = {2} (singleton, R = 0), item 3 ungrouped.
    item_groups = np.array([0, 0, 1, -1])
    ranked = np.array([[1, 2],    # query item 0, group 0: hit at rank 1
                       [0, 3],    # query item 2, group 1: R = 0 -> skipped
                       [0, 1]])   # query item 3, group -1: never relevant -> skipped
    m = retrieval_metrics(ranked, np.array([0, 1, -1]), item_groups, ks=(1, 2))
    assert m["queries"] == 1
    assert m["skipped_queries"] == 2
    # Only the first query counts: precision@2 = 1/2, the others are 1.0.
    assert m["precision@1"] == pytest.approx(1.0)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["recall@2"] == pytest.approx(1.0)
    assert m["map@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx(1.0)


def test_all_skipped_gives_nan() -> None:
    m = retrieval_metrics(np.array([[0]]), np.array([-1]), ITEM_GROUPS, ks=(1,))
    assert m["queries"] == 0 and m["skipped_queries"] == 1
    assert math.isnan(m["precision@1"])


def test_average_over_queries() -> None:
    # Query A (item 0): perfect [1, 2]; query B (item 3, group 1, R = 1): miss then hit [5, 4].
    ranked = np.array([[1, 2], [5, 4]])
    m = retrieval_metrics(ranked, np.array([0, 1]), ITEM_GROUPS, ks=(1, 2))
    # precision@1 = (1 + 0)/2; precision@2 = (1 + 1/2)/2; recall@1 = (1/2 + 0)/2.
    assert m["precision@1"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.75)
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["hit_rate@1"] == pytest.approx(0.5)
    assert m["hit_rate@2"] == pytest.approx(1.0)
    # B: AP@2 = P(2) * 1 / min(2, 1) = 1/2; nDCG@2 = (1/log2(3)) / 1 = 0.6309.
    assert m["map@2"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 2)


def test_group_sizes_override() -> None:
    # Declared group 0 size 5 -> R = 4 even though only 3 items carry the label here.
    m = retrieval_metrics(np.array([[1, 2]]), np.array([0]), ITEM_GROUPS,
                          group_sizes={0: 5}, ks=(2,))
    # 2 hits: recall 2/4; AP@2 = (1 + 1) / min(2, 4) = 1; nDCG@2 = 1.
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["map@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx(1.0)


@pytest.mark.parametrize("ks", [(1, 4), (0,)])
def test_k_out_of_range_raises(ks: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        retrieval_metrics(np.array([[1, 2, 3]]), np.array([0]), ITEM_GROUPS, ks=ks)


def test_out_of_range_index_raises() -> None:
    with pytest.raises(ValueError):
        retrieval_metrics(np.array([[6]]), np.array([0]), ITEM_GROUPS, ks=(1,))


# ----------------------------------------------------------------------------- clustering


def test_perfect_clustering() -> None:
    truth = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([7, 7, 7, 3, 3, 3])  # label values differ from truth; only grouping matters
    m = cluster_metrics(None, labels, truth)
    assert m["n_clusters"] == 2
    assert m["noise_share"] == 0.0
    assert math.isnan(m["silhouette"])  # no vectors given
    for key in ("coverage", "purity", "adjusted_rand", "nmi"):
        assert m[key] == pytest.approx(1.0), key


def test_all_noise() -> None:
    truth = np.array([0, 0, 1, 1])
    m = cluster_metrics(None, np.full(4, -1), truth)
    assert m["n_clusters"] == 0
    assert m["noise_share"] == 1.0
    assert m["coverage"] == 0.0
    assert math.isnan(m["purity"])  # no grounded item in a cluster


def test_noise_is_singletons_not_one_cluster() -> None:
    # Every noise item is its own cluster, so an all-noise result scores low, and a grounding
    # group dumped entirely into noise is not mistaken for one perfect cluster.
    truth = np.array([0, 0, 1, 1])
    m = cluster_metrics(None, np.full(4, -1), truth)
    # Pred = 4 singletons. I(T;P) = H(T) = ln 2, H(P) = ln 4 -> NMI = 2 ln2 / (ln2 + ln4) = 2/3.
    # ARI: no co-clustered pair in pred -> index 0, expected 0 -> ARI = 0.
    assert m["nmi"] == pytest.approx(2 / 3)
    assert m["nmi"] < 1.0
    assert m["adjusted_rand"] == pytest.approx(0.0)
    # Group 1 entirely noise, group 0 a proper cluster: would be perfect with noise-as-cluster.
    m2 = cluster_metrics(None, np.array([5, 5, -1, -1]), truth)
    assert m2["adjusted_rand"] < 1.0 and m2["nmi"] < 1.0
    assert m2["coverage"] == pytest.approx(0.5)
    assert m2["purity"] == pytest.approx(1.0)


def test_mixed_example_hand_checked() -> None:
    truth = np.array([0, 0, 0, 1, 1, 1, -1, -1])
    labels = np.array([5, 5, 7, 7, 7, -1, 5, -1])
    m = cluster_metrics(None, labels, truth)
    assert m["n_clusters"] == 2
    assert m["noise_share"] == pytest.approx(2 / 8)
    # Grounded = items 0..5; 5 of 6 are in a cluster.
    assert m["coverage"] == pytest.approx(5 / 6)
    # Cluster 5: {g0, g0} -> max 2. Cluster 7: {g0, g1, g1} -> max 2. Purity = 4 / 5.
    # (Item 6 is in cluster 5 but ungrounded, so it is ignored.)
    assert m["purity"] == pytest.approx(0.8)
    # ARI over grounded, item 5 as its own cluster. Contingency rows g0: (2,1,0), g1: (0,2,1).
    # sum C(n_ij,2) = 1 + 1 = 2; rows C(3,2)*2 = 6; cols C(2,2)+C(3,2)+C(1,2) = 4; C(6,2) = 15.
    # expected = 6*4/15 = 1.6; max = (6+4)/2 = 5; ARI = (2 - 1.6) / (5 - 1.6) = 0.1176.
    assert m["adjusted_rand"] == pytest.approx(0.4 / 3.4)
    assert 0.0 < m["nmi"] < 1.0


def test_without_truth_keys_absent_and_plain_types() -> None:
    m = cluster_metrics(None, np.array([0, 0, 1, -1]))
    assert set(m) == {"n_clusters", "noise_share", "silhouette"}
    assert type(m["n_clusters"]) is int
    assert type(m["noise_share"]) is float and type(m["silhouette"]) is float
    m2 = cluster_metrics(None, np.array([0, 1]), np.array([0, 0]))
    assert all(type(v) in (int, float) for v in m2.values())


def test_no_grounded_items_gives_nan() -> None:
    m = cluster_metrics(None, np.array([0, 0, 1]), np.array([-1, -1, -1]))
    for key in ("coverage", "purity", "adjusted_rand", "nmi"):
        assert math.isnan(m[key]), key


def _two_blobs(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0.0, 0.0]) + 0.05 * rng.standard_normal((n, 3))
    b = np.array([0.0, 1.0, 0.0]) + 0.05 * rng.standard_normal((n, 3))
    return np.vstack([a, b]), np.repeat([0, 1], n)


def test_silhouette_two_blobs() -> None:
    vectors, labels = _two_blobs()
    m = cluster_metrics(vectors, labels)
    assert m["silhouette"] > 0.8
    # Noise items are excluded: adding far-off noise does not change the score.
    noise = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    m2 = cluster_metrics(np.vstack([vectors, noise]), np.append(labels, [-1, -1]))
    assert m2["silhouette"] == pytest.approx(m["silhouette"])
    # Subsampling is deterministic for a fixed seed.
    s1 = cluster_metrics(vectors, labels, silhouette_sample=30, seed=3)["silhouette"]
    s2 = cluster_metrics(vectors, labels, silhouette_sample=30, seed=3)["silhouette"]
    assert s1 == s2 and s1 > 0.8


def test_silhouette_undefined_cases() -> None:
    vectors, _ = _two_blobs(5)
    assert math.isnan(cluster_metrics(vectors, np.zeros(10, dtype=int))["silhouette"])
    assert math.isnan(cluster_metrics(vectors, np.full(10, -1))["silhouette"])

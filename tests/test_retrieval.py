"""Retrieval post-processing (vsearch_pipeline.core.retrieval): whitening, DBA, alpha-QE and
k-reciprocal re-ranking, each measured on Caltech-101 photos it was not fitted on."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from vsearch_pipeline.core import retrieval as R
from vsearch_pipeline.core.embed import embed_files
from vsearch_pipeline.core.metrics import retrieval_metrics
from vsearch_pipeline.core.model_spec import ModelSpec
from vsearch_pipeline.core.models import load_model
from vsearch_pipeline.core.transform_fit import MIN_VECTORS_PER_DIM
from vsearch_pipeline.settings import RetrievalSettings

CLASSES_EVERY = 2  # every other Caltech class (51 classes)
PER_CLASS = 40


def _flat(vectors: np.ndarray):
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return lambda q, k: index.search(np.ascontiguousarray(q, dtype=np.float32), k)


NO_PLAN = R.QueryPlan()


def _score(vectors: np.ndarray, labels: np.ndarray, dba_k: int = 0, plan: R.QueryPlan = NO_PLAN,
           alpha: float = 3.0) -> dict[str, float]:
    """mAP@10 and precision@1 of every image as a query against the others, with the
    post-processing given (the pipeline's own functions, over an exact index)."""
    search, stored = _flat(vectors), vectors
    if dba_k:
        near = R.neighbour_graph(search, vectors, dba_k)
        stored = R.augment_database(vectors, near.positions, near.scores, alpha)
        search = _flat(stored)
    reranker = None
    if plan.rerank != "none":  # its graph: neighbours among the vectors as indexed
        reranker = R.KReciprocalReranker(R.neighbour_graph(search, stored, plan.rerank_k1),
                                         plan.rerank_k1)
    _, found = R.ranked_search(search, lambda p: stored[p], vectors, 11, plan, reranker,
                               plain=lambda p: vectors[p])
    ranked = np.array([row[row != i][:10] for i, row in enumerate(found)])
    figures = retrieval_metrics(ranked, labels, labels, ks=[1, 10])
    return {"map@10": figures["map@10"], "precision@1": figures["precision@1"],
            "itself_first": float(np.mean(found[:, 0] == np.arange(len(vectors))))}


@pytest.fixture(scope="module")
def caltech(shared_data):
    """Unit vectors of the default model for 40 photos of every other Caltech class, split in
    two halves within each class: `fit` (what transforms are fitted on) and `held` (measured)."""
    root = shared_data / "caltech101"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")
    files, labels = [], []
    for label, name in enumerate(classes[::CLASSES_EVERY]):
        photos = sorted((root / name).glob("*.jpg"))[:PER_CLASS]
        files += photos
        labels += [label] * len(photos)
    default, crop = (load_model(ModelSpec("efficientnet-lite0", view=v)) for v in (None, "centre_crop"))
    result = embed_files(default, [str(i) for i in range(len(files))], [str(f) for f in files],
                         lambda path: Path(path).read_bytes(), copy_model=crop)
    assert not result.failed
    labels = np.array(labels)
    rank_in_class = np.array([np.sum(labels[:i] == labels[i]) for i in range(len(labels))])
    held = rank_in_class % 2 == 1
    return result.vectors, labels, ~held, held, result.copy_vectors


def test_the_default_view_beats_the_centre_crop_on_held_back_photos(caltech):
    """`regions` (the default) against the centre crop, both raw and with the default retrieval:
    a gain of the descriptor itself, not of how it is searched."""
    vectors, labels, _, held, centre = caltech
    defaults = RetrievalSettings()
    regions_raw, centre_raw = _score(vectors[held], labels[held]), _score(centre[held], labels[held])
    regions_default, centre_default = (
        _score(v[held], labels[held], dba_k=defaults.database_augmentation_k,
               plan=defaults.query_plan())
        for v in (vectors, centre))
    print(f"raw: regions {regions_raw}, centre crop {centre_raw}; default retrieval: regions "
          f"{regions_default}, centre crop {centre_default}")
    assert vectors.shape[1] == centre.shape[1] == 1280
    assert regions_raw["map@10"] > centre_raw["map@10"] + 0.01
    assert regions_default["map@10"] > centre_default["map@10"] + 0.005


def test_whitening_fitted_elsewhere_does_not_hurt_held_back_photos(caltech):
    vectors, labels, fit, held, _ = caltech
    dims = int(fit.sum()) // MIN_VECTORS_PER_DIM  # the most axes the pipeline fits on this many
    whitening = R.fit_whitening(vectors[fit], dims=dims, shrinkage=1.0, power=1.0)
    raw = _score(vectors[held], labels[held])
    whitened = _score(whitening.apply(vectors[held]), labels[held])
    print(f"held back: raw {raw}, whitened to {dims} axes {whitened}")
    assert whitened["map@10"] > raw["map@10"] + 0.01
    # why the default shrinks the eigenvalues: with more axes for the photos (8 per axis, what a
    # user may set), plain whitening blows up the weak, noisy axes and shrinkage keeps them down
    many = int(fit.sum()) // 8
    shrunk, unshrunk = (_score(R.fit_whitening(vectors[fit], many, shrinkage, 1.0)
                               .apply(vectors[held]), labels[held]) for shrinkage in (1.0, 0.0))
    print(f"{many} axes: shrunk {shrunk}, unshrunk {unshrunk}")
    assert shrunk["map@10"] > unshrunk["map@10"] + 0.005


def test_augmentation_and_expansion_raise_map_on_held_back_photos(caltech):
    vectors, labels, _, held, _ = caltech
    vectors, labels = vectors[held], labels[held]
    raw = _score(vectors, labels)
    dba = _score(vectors, labels, dba_k=10)
    qe = _score(vectors, labels, plan=R.QueryPlan(query_expansion_k=10))
    both = _score(vectors, labels, dba_k=10, plan=R.QueryPlan(query_expansion_k=10))
    twice = _score(vectors, labels, dba_k=10,
                   plan=R.QueryPlan(query_expansion_k=10, query_expansion_rounds=2))
    print(f"raw {raw}, dba {dba}, qe {qe}, dba+qe {both}, dba+qe twice {twice}")
    assert dba["map@10"] > raw["map@10"] + 0.01
    assert qe["map@10"] > raw["map@10"] + 0.005
    assert both["map@10"] > max(dba["map@10"], qe["map@10"])
    assert twice["map@10"] >= both["map@10"]


def test_k_reciprocal_reranking_raises_map_on_held_back_photos(caltech):
    vectors, labels, _, held, _ = caltech
    raw = _score(vectors[held], labels[held])
    reranked = _score(vectors[held], labels[held],
                      plan=R.QueryPlan(rerank="k_reciprocal", rerank_depth=50))
    print(f"raw {raw}, k-reciprocal {reranked}")
    assert reranked["map@10"] > raw["map@10"]


def test_near_duplicates_first_keeps_the_class_gain_and_finds_the_query_itself(caltech):
    """With DBA and QE an image need not come back first for its own upload (its augmented
    vector is a class average); lifting candidates whose plain cosine clears the floor puts it
    back without giving up what augmentation gained."""
    vectors, labels, _, held, _ = caltech
    vectors, labels = vectors[held], labels[held]
    augmented = _score(vectors, labels, dba_k=10,
                       plan=R.QueryPlan(query_expansion_k=10, query_expansion_rounds=2))
    lifted = _score(vectors, labels, dba_k=10,
                    plan=R.QueryPlan(query_expansion_k=10, query_expansion_rounds=2,
                                     near_duplicate_floor=0.75))
    print(f"dba+qe twice {augmented}, with near-duplicates first {lifted}")
    assert augmented["itself_first"] < 0.9  # measured 0.28: what near-duplicates first is for
    assert lifted["itself_first"] == 1.0
    assert lifted["map@10"] > augmented["map@10"] - 0.005


def test_near_duplicates_first_lifts_only_above_the_floor():
    query = np.array([1.0, 0.0], np.float32)
    plain = np.array([[0.6, 0.8], [1.0, 0.0], [0.8, 0.6]], np.float32)  # cosines 0.6, 1.0, 0.8
    scores, positions = R.near_duplicates_first(query, np.array([0.9, 0.8, 0.7, 0.5], np.float32),
                                                np.array([0, 1, 2, -1]), lambda p: plain[p],
                                                floor=0.75)
    weight = R.NEAR_DUPLICATE_WEIGHT
    scale = 1 + weight * 0.25
    # the exact copy rises to the top; a slight lift leaves the third below the first; the
    # padding is dropped; an exact copy that also led the search would score 1
    assert positions.tolist() == [1, 0, 2]
    assert np.allclose(scores, [(0.8 + weight * 0.25) / scale, 0.9 / scale,
                                (0.7 + weight * 0.05) / scale])


def test_whitening_round_trips_and_gives_unit_vectors():
    rng = np.random.default_rng(0)
    vectors = R.unit(rng.normal(size=(300, 32)))
    whitening = R.fit_whitening(vectors, dims=16, shrinkage=1.0, power=0.5)
    again = R.Whitening.from_bytes(whitening.to_bytes())
    assert again.version == whitening.version and again.dims == 16
    assert np.array_equal(again.apply(vectors), whitening.apply(vectors))
    assert np.allclose(np.linalg.norm(whitening.apply(vectors), axis=1), 1, atol=1e-5)
    # the kept axes are decorrelated with unshrunk whitening
    plain = R.fit_whitening(vectors, dims=16, shrinkage=0.0, power=1.0)
    projected = (vectors - plain.mean) @ plain.projection
    covariance = np.cov(projected.T)
    assert np.allclose(covariance, np.eye(16), atol=1e-3)
    with pytest.raises(ValueError, match="at least 3"):
        R.fit_whitening(vectors[:2], 16, 1.0, 1.0)


def test_neighbour_graph_leaves_each_vector_out_of_its_own_row():
    rng = np.random.default_rng(1)
    vectors = R.unit(rng.normal(size=(50, 8)))
    graph = R.neighbour_graph(_flat(vectors), vectors, 5)
    assert graph.positions.shape == (50, 5)
    assert not (graph.positions == np.arange(50)[:, None]).any()
    exact = np.argsort(-(vectors @ vectors.T), axis=1)[:, 1:6]
    assert np.array_equal(graph.positions, exact)
    again = R.NeighbourGraph.from_bytes(graph.to_bytes())
    assert np.array_equal(again.positions, graph.positions)


def test_augmentation_weights_by_cosine_power():
    query = np.array([[1.0, 0.0]], np.float32)
    neighbours = np.array([[[0.0, 1.0], [0.0, -1.0]]], np.float32)
    # a neighbour at cosine 0.5 weighs 0.125 with alpha 3; one at cosine -0.2 weighs nothing
    out = R.augment(query, neighbours, np.array([[0.5, -0.2]]), alpha=3.0)
    assert np.allclose(out, R.unit(np.array([[1.0, 0.125]])))


def test_no_plan_is_plain_search():
    rng = np.random.default_rng(2)
    vectors = R.unit(rng.normal(size=(40, 8)))
    search = _flat(vectors)
    expected = search(vectors[:5], 7)
    found = R.ranked_search(search, lambda p: vectors[p], vectors[:5], 7, R.QueryPlan())
    assert np.array_equal(found[1], expected[1])


def test_reranking_trusts_mutual_neighbours():
    """Two tight groups; a query between them is nearer one outlier, but the outlier's own
    neighbours are the other group: re-ranking puts the query's mutual neighbours first."""
    rng = np.random.default_rng(3)
    group = R.unit(np.array([1.0, 0.0, 0.0]) + 0.05 * rng.normal(size=(6, 3)))
    others = R.unit(np.array([0.0, 1.0, 0.0]) + 0.05 * rng.normal(size=(6, 3)))
    outlier = R.unit(np.array([[0.55, 0.6, 0.1]]))
    vectors = np.concatenate([group, others, outlier])
    search = _flat(vectors)
    graph = R.neighbour_graph(search, vectors, 6)
    reranker = R.KReciprocalReranker(graph, k1=6)
    query = R.unit(np.array([[0.7, 0.45, 0.0]]))
    scores, positions = search(query, 13)
    assert positions[0, 0] == 12  # the outlier is the nearest by cosine
    _, reranked = reranker.rerank(scores[0], positions[0])
    assert set(reranked[:6].tolist()) == set(range(6))


def test_the_match_floor_stands_above_unrelated_scores_and_ignores_a_few_related():
    """95% unrelated pairs around 0.3 and 5% near-duplicates at 1.0 (the demo's share): the
    floor sits just above the unrelated ones, unmoved by the duplicates; a tiny sample has none."""
    from vsearch_pipeline.core.relevance import match_floor, pair_scores, sample_positions, tail_floor

    rng = np.random.default_rng(0)
    unrelated = rng.normal(0.3, 0.05, 9500)
    floor = match_floor(np.concatenate([unrelated, np.ones(500)]))
    assert 0.43 < floor < 0.48 and np.mean(unrelated >= floor) < 0.01
    assert match_floor(unrelated[:10]) is None and tail_floor(unrelated[:10]) is None
    assert abs(tail_floor(unrelated) - np.quantile(unrelated, 0.99)) < 1e-6
    vectors = rng.normal(size=(600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sample = sample_positions(600)
    assert len(sample) == 512 and np.array_equal(sample, sample_positions(600))
    assert len(pair_scores(vectors[sample])) == 512 * 511 // 2

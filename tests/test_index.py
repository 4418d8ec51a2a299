"""FAISS index building, parameter resolution and serialisation (vsearch_pipeline.core.index).

The ivf-pq cases use explicit small M / nbits: with the default M=64, nbits=8 one build of 3000
vectors takes minutes on two cores (see test_ivf_pq_skips_polysemous_training).
"""

from __future__ import annotations

import re
from dataclasses import replace

import faiss
import numpy as np
import pytest

from vsearch_pipeline.core.index import (
    IndexParams,
    build_index,
    deserialize,
    exact_neighbours,
    factory_string,
    recall_at_k,
    resolve_params,
    search,
    serialize,
    validate_params,
)

N, D, N_CLUSTERS = 3000, 64, 30


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """3000 unit vectors in 64-d around 30 random centres, and the centre of each."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(N_CLUSTERS, D))
    labels = rng.integers(0, N_CLUSTERS, N)
    vectors = centres[labels] + rng.normal(scale=0.3, size=(N, D))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


CASES = {
    "flat": IndexParams("flat"),
    "hnsw": IndexParams("hnsw"),
    "ivf-flat": IndexParams("ivf-flat"),
    "ivf-pq": IndexParams("ivf-pq", M=16, nbits=4),
    "ivf-pq-opq": IndexParams("ivf-pq", M=8, nbits=4, opq=True),
}


@pytest.fixture(scope="module")
def built(clustered) -> dict[str, tuple[IndexParams, faiss.Index]]:
    vectors, _ = clustered
    out = {}
    for name, params in CASES.items():
        resolved = resolve_params(params, N, D)
        out[name] = (resolved, build_index(vectors, resolved, seed=0))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_build_fills_the_index_with_every_vector(built, clustered, name: str) -> None:
    vectors, _ = clustered
    _, index = built[name]
    assert index.ntotal == N and index.d == D and index.is_trained
    scores, positions = search(index, vectors[:20], 5)
    assert positions.shape == (20, 5) and scores.shape == (20, 5)
    assert (positions >= 0).all() and (positions < N).all()
    assert (np.diff(scores, axis=1) <= 1e-5).all()  # best first


@pytest.mark.parametrize("name", list(CASES))
def test_top_hit_is_in_the_query_cluster(built, clustered, name: str) -> None:
    vectors, labels = clustered
    _, index = built[name]
    _, positions = search(index, vectors[:300], 2)
    same = labels[positions[:, 1]] == labels[:300]  # the first hit other than itself (mostly)
    assert same.mean() > 0.95


def test_flat_recall_is_exact(built, clustered) -> None:
    vectors, _ = clustered
    assert recall_at_k(built["flat"][1], vectors, k=10) == 1.0


def test_hnsw_recall(built, clustered) -> None:
    vectors, _ = clustered
    assert recall_at_k(built["hnsw"][1], vectors, k=10) >= 0.9


def test_ivf_flat_with_every_list_probed_is_exact(built, clustered) -> None:
    vectors, _ = clustered
    resolved, index = built["ivf-flat"]
    assert resolved.nprobe < resolved.nlist
    exhaustive = replace(resolved, nprobe=resolved.nlist)
    assert recall_at_k(build_index(vectors, exhaustive), vectors, k=10) == 1.0
    assert recall_at_k(index, vectors, k=10) >= 0.8  # the default nprobe is close


@pytest.mark.parametrize("name", ["ivf-pq", "ivf-pq-opq"])
def test_ivf_pq_recall_far_above_chance(built, clustered, name: str) -> None:
    vectors, _ = clustered
    # 16 or 8 codes of 4 bits are very lossy (measured 0.34 and 0.24); chance is 10 / 3000.
    assert recall_at_k(built[name][1], vectors, k=10) > 0.15


def test_resolved_params_and_factory_strings(built) -> None:
    nlist = int(4 * np.sqrt(N))  # 219 -> clamped to 3000 // 39 = 76
    assert nlist > N // 39
    flat, hnsw, ivf_flat, ivf_pq, opq = (built[n][0] for n in CASES)
    assert flat == IndexParams("flat")
    assert hnsw.M == 32 and hnsw.efConstruction == 200 and hnsw.efSearch == 128
    assert ivf_flat.nlist == 76 and ivf_flat.nprobe == 16
    assert (ivf_pq.nlist, ivf_pq.M, ivf_pq.nbits) == (76, 16, 4)
    assert factory_string(flat, D) == "Flat"
    assert factory_string(hnsw, D) == "HNSW32,Flat"
    assert factory_string(ivf_flat, D) == "IVF76,Flat"
    # An optional "np" suffix (no polysemous training) is allowed.
    assert re.fullmatch(r"IVF76,PQ16x4(np)?", factory_string(ivf_pq, D))
    assert re.fullmatch(r"OPQ8,IVF76,PQ8x4(np)?", factory_string(opq, D))


def test_index_types_are_what_the_factory_string_says(built) -> None:
    assert isinstance(faiss.downcast_index(built["flat"][1]), faiss.IndexFlat)
    hnsw = faiss.downcast_index(built["hnsw"][1])
    assert isinstance(hnsw, faiss.IndexHNSWFlat)
    assert hnsw.hnsw.efConstruction == 200 and hnsw.hnsw.efSearch == 128
    ivf = faiss.extract_index_ivf(built["ivf-flat"][1])
    assert ivf.nlist == 76 and ivf.nprobe == 16
    opq = faiss.downcast_index(built["ivf-pq-opq"][1])
    assert isinstance(opq, faiss.IndexPreTransform)
    assert faiss.extract_index_ivf(opq).nprobe == 16
    for name in CASES:
        assert built[name][1].metric_type == faiss.METRIC_INNER_PRODUCT


def test_default_ivf_pq_resolution() -> None:
    resolved = resolve_params(IndexParams("ivf-pq"), 100_000, 512)
    assert resolved.nlist == int(4 * np.sqrt(100_000))  # 1264, under 100000 // 39
    assert resolved.M == 64 and resolved.nbits == 8 and resolved.nprobe == 16
    assert resolve_params(IndexParams("ivf-pq"), 100_000, 96).M == 48  # largest divisor <= 64
    assert resolve_params(IndexParams("ivf-pq"), 100_000, 67).M == 1  # prime dimension


def test_resolve_params_clamps_nlist_and_nprobe_for_small_n() -> None:
    small = resolve_params(IndexParams("ivf-flat"), 100, D)
    assert small.nlist == 2 and small.nprobe == 2  # 100 // 39; nprobe never above nlist
    tiny = resolve_params(IndexParams("ivf-flat", nlist=50), 10, D)
    assert tiny.nlist == 1 and tiny.nprobe == 1
    big = resolve_params(IndexParams("ivf-flat", nlist=50), 10_000, D)
    assert big.nlist == 50  # an explicit nlist is kept when the data can train it


def test_resolve_params_lowers_nbits_for_tiny_collections() -> None:
    assert resolve_params(IndexParams("ivf-pq"), 100, D).nbits == 4  # 16 centroids from 100 points
    assert resolve_params(IndexParams("ivf-pq"), 1000, D).nbits == 7
    assert resolve_params(IndexParams("ivf-pq"), 10, D).nbits == 1
    assert resolve_params(IndexParams("ivf-pq", nbits=6), 1_000_000, D).nbits == 6


def test_tiny_ivf_pq_collection_builds(clustered) -> None:
    vectors = clustered[0][:100]
    resolved = resolve_params(IndexParams("ivf-pq", M=16), len(vectors), D)
    assert (resolved.nlist, resolved.nbits) == (2, 4)
    index = build_index(vectors, resolved)
    assert index.ntotal == 100
    assert recall_at_k(index, vectors, k=5) > 0.3


def test_search_k_larger_than_the_collection(clustered) -> None:
    vectors = clustered[0][:7]
    index = build_index(vectors, resolve_params(IndexParams("flat"), 7, D))
    scores, positions = search(index, vectors[0], 50)  # one query as a 1-d vector
    assert positions.shape == (1, 7)
    assert sorted(positions[0].tolist()) == list(range(7))
    assert positions[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_exact_neighbours_match_numpy(clustered) -> None:
    vectors = clustered[0][:500]
    truth = exact_neighbours(vectors, vectors[:10], 5)
    expected = np.argsort(-(vectors[:10] @ vectors.T), axis=1)[:, :5]
    np.testing.assert_array_equal(truth, expected)


@pytest.mark.parametrize("name", list(CASES))
def test_serialize_round_trip_gives_identical_results(built, clustered, name: str) -> None:
    vectors, _ = clustered
    _, index = built[name]
    data = serialize(index)
    assert isinstance(data, bytes) and len(data) > 0
    copy = deserialize(data)
    assert copy.ntotal == index.ntotal
    queries = vectors[::37]
    scores_a, positions_a = search(index, queries, 10)
    scores_b, positions_b = search(copy, queries, 10)
    np.testing.assert_array_equal(positions_a, positions_b)
    np.testing.assert_array_equal(scores_a, scores_b)


@pytest.mark.parametrize("bad", ["ivf", "IVF-PQ", "", "lsh"])
def test_invalid_index_type_raises(bad: str) -> None:
    with pytest.raises(ValueError, match=r"index\.index_type"):
        resolve_params(IndexParams(bad), 1000, D)


@pytest.mark.parametrize(
    ("params", "setting"),
    [(IndexParams(nprobe=0), "nprobe"), (IndexParams(efSearch=0), "efSearch"),
     (IndexParams(efConstruction=0), "efConstruction"), (IndexParams(nbits=0), "nbits"),
     (IndexParams(nbits=17), "nbits")],
)
def test_invalid_numbers_raise(params: IndexParams, setting: str) -> None:
    with pytest.raises(ValueError, match=rf"index\.{setting}"):
        validate_params(params)


def test_pq_m_that_does_not_divide_the_dimension_raises() -> None:
    with pytest.raises(ValueError, match=r"index\.M=7 must divide the vector dimension 64"):
        resolve_params(IndexParams("ivf-pq", M=7), 1000, D)


def test_ivf_pq_skips_polysemous_training() -> None:
    for opq in (False, True):
        resolved = resolve_params(IndexParams("ivf-pq", opq=opq), N, D)
        index = faiss.index_factory(D, factory_string(resolved, D), faiss.METRIC_INNER_PRODUCT)
        ivfpq = faiss.downcast_index(faiss.extract_index_ivf(index))
        assert isinstance(ivfpq, faiss.IndexIVFPQ)
        assert not ivfpq.do_polysemous_training


@pytest.mark.parametrize("name", list(CASES))
def test_filtered_search_returns_only_allowed_positions(built, clustered, name: str) -> None:
    from vsearch_pipeline.core.index import filtered_search

    vectors, labels = clustered
    params, index = built[name]
    # A few far-away positions: another cluster than the query's, so an unfiltered search
    # would never reach them.
    query = vectors[0]
    allowed = np.flatnonzero(labels != labels[0])[:7]
    _, positions = filtered_search(index, params, query, 5, allowed)
    found = positions[0][positions[0] >= 0]
    assert len(found) >= 1 and set(found) <= set(allowed)


# --- re-ranking (IndexRefineFlat), quantized HNSW storage, fast-scan PQ -----------------------


def test_refine_returns_the_exact_order_when_every_candidate_is_re_ranked(clustered) -> None:
    """With k_factor*k candidates covering what the coarse codes confuse, the exact re-ranking
    gives flat search's order, even over 4-bit PQ codes that alone order poorly."""
    vectors = clustered[0][:1000]
    params = resolve_params(IndexParams("ivf-pq", M=16, nbits=4, refine=True, k_factor=50.0,
                                        nprobe=100), len(vectors), D)
    index = build_index(vectors, params)
    assert isinstance(faiss.downcast_index(index), faiss.IndexRefineFlat)
    scores, positions = search(index, vectors[:50], 5)
    np.testing.assert_array_equal(positions, exact_neighbours(vectors, vectors[:50], 5))
    expected = np.take_along_axis(vectors[:50] @ vectors.T, positions, axis=1)
    np.testing.assert_allclose(scores, expected, atol=1e-5)  # exact scores, not PQ estimates


@pytest.mark.parametrize("storage", ["SQ8", "SQfp16"])
def test_hnsw_with_scalar_quantized_storage(clustered, storage: str) -> None:
    vectors, _ = clustered
    params = resolve_params(IndexParams("hnsw", storage=storage, efConstruction=40), N, D)
    assert factory_string(params, D) == f"HNSW32,{storage}"
    index = build_index(vectors, params)
    inner = faiss.downcast_index(index)
    assert isinstance(inner, faiss.IndexHNSWSQ) and inner.hnsw.efSearch == 128
    assert recall_at_k(index, vectors, k=10) >= 0.85


def test_hnsw_sq8_refine_sets_search_params_through_the_wrapper(clustered) -> None:
    vectors, _ = clustered
    params = resolve_params(IndexParams("hnsw", storage="SQ8", refine=True, k_factor=2.0,
                                        efSearch=64, efConstruction=40), N, D)
    assert factory_string(params, D) == "HNSW32,SQ8,RFlat"
    index = build_index(vectors, params)
    refine = faiss.downcast_index(index)
    assert refine.k_factor == 2.0 and faiss.downcast_index(refine.base_index).hnsw.efSearch == 64
    assert recall_at_k(index, vectors, k=10) >= 0.9
    copy = deserialize(serialize(index))
    from vsearch_pipeline.core.index import set_search_params

    set_search_params(copy, params)
    np.testing.assert_array_equal(search(copy, vectors[:20], 10)[1], search(index, vectors[:20], 10)[1])


def test_fast_scan_ivf_pq_factory_and_filtered_search(clustered) -> None:
    from vsearch_pipeline.core.index import filtered_search

    vectors, labels = clustered
    params = resolve_params(IndexParams("ivf-pq", M=16, nbits=4, fast_scan=True, refine=True), N, D)
    assert factory_string(params, D) == "IVF76,PQ16x4fs,RFlat"
    index = build_index(vectors, params)
    assert recall_at_k(index, vectors, k=10) >= 0.4  # measured 0.52: 16 codes of 4 bits, k_factor 4
    allowed = np.flatnonzero(labels != labels[0])[:7]
    _, positions = filtered_search(index, params, vectors[0], 5, allowed)
    found = positions[0][positions[0] >= 0]
    assert len(found) >= 1 and set(found) <= set(allowed)


@pytest.mark.parametrize(
    ("params", "message"),
    [(IndexParams("hnsw", storage="SQ3"), r"index\.storage must be one of"),
     (IndexParams("ivf-flat", storage="SQ8"), r"index\.storage applies to index_type hnsw"),
     (IndexParams("ivf-pq", fast_scan=True), r"index\.fast_scan needs .* nbits 4"),
     (IndexParams("hnsw", fast_scan=True, nbits=4), r"index\.fast_scan needs index_type ivf-pq"),
     (IndexParams("flat", refine=True), r"index\.refine re-ranks an approximate index"),
     (IndexParams("hnsw", refine=True, k_factor=0.5), r"index\.k_factor must be at least 1")],
)
def test_invalid_encoding_options_raise(params: IndexParams, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_params(params)


def test_fast_scan_needs_an_even_m_after_resolution() -> None:
    with pytest.raises(ValueError, match=r"index\.fast_scan needs nbits 4 and an even M"):
        resolve_params(IndexParams("ivf-pq", M=1, nbits=4, fast_scan=True), 10_000, 67)


def test_index_settings_validate_the_new_options() -> None:
    from pydantic import ValidationError

    from vsearch_pipeline.settings import IndexSettings

    settings = IndexSettings(index_type="hnsw", storage="SQ8", refine=True, k_factor=2)
    assert settings.params() == IndexParams("hnsw", storage="SQ8", refine=True, k_factor=2.0)
    with pytest.raises(ValidationError, match=r"index\.storage applies to index_type hnsw"):
        IndexSettings(index_type="ivf-pq", storage="SQ8")
    with pytest.raises(ValidationError, match="k_factor"):
        IndexSettings(refine=True, k_factor=0.5)
    # the pipeline serves HNSW over 8-bit codes by default; the other types store what they store
    assert IndexSettings().params() == IndexParams(storage="SQ8")
    assert IndexSettings(index_type="ivf-pq").params() == IndexParams("ivf-pq")


def test_plain_vectors_at_one_byte_a_dimension_decode_close_to_the_floats() -> None:
    """What a DBA index keeps beside itself for searches by id: int8 rows, a quarter of float32,
    whose decoded rows stay within cosine 0.9999 of the unit vectors they encode, and which
    grow by appending and round-trip through bytes exactly."""
    from vsearch_pipeline.core.vectors import Int8Rows

    rng = np.random.default_rng(3)
    for dim in (256, 1280):
        vectors = rng.standard_normal((500, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        rows = Int8Rows.of(vectors[:300]).append(vectors[300:])
        assert len(rows) == 500 and rows.nbytes == 500 * (dim + 4)
        decoded = rows.rows(np.arange(500))
        cosines = (decoded * vectors).sum(axis=1) / np.linalg.norm(decoded, axis=1)
        assert cosines.min() > 0.9999, cosines.min()
        again = Int8Rows.from_bytes(rows.to_bytes())
        np.testing.assert_array_equal(again.rows([7, 499]), rows.rows([7, 499]))
    assert len(Int8Rows.of(np.zeros((0, 8), np.float32))) == 0
    np.testing.assert_array_equal(Int8Rows.of(np.zeros((1, 8), np.float32)).rows([0]), 0)


@pytest.mark.parametrize("params", [IndexParams("hnsw", storage="SQ8", efConstruction=40),
                                    IndexParams("hnsw", storage="Flat", refine=True, efConstruction=40),
                                    IndexParams("ivf-flat"), IndexParams("flat")],
                         ids=["hnsw-sq8", "hnsw-refine", "ivf-flat", "flat"])
def test_refill_answers_for_the_new_vectors_at_the_same_positions(clustered, params) -> None:
    """What DBA's index is: the first index holding vectors moved a little (augmented), its
    graph or lists kept; searches find the moved vectors' own neighbours."""
    from vsearch_pipeline.core.index import refill

    vectors, _ = clustered
    noise = np.random.default_rng(1).normal(0, 0.3 / np.sqrt(D), vectors.shape)
    moved = (vectors + noise).astype(np.float32)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    resolved = resolve_params(params, N, D)
    index = refill(build_index(vectors, resolved), moved)
    assert index.ntotal == N
    exact = exact_neighbours(moved, moved[:100], 10)
    found = search(index, moved[:100], 10)[1]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.85
    with pytest.raises(ValueError, match="refill needs"):
        refill(index, moved[:10])

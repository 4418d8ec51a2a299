"""IVF indexes built shard by shard from embedding Parquet shards (core.sharded_index), checked
against the in-memory path: `load_embeddings`, `build_index`, `exact_neighbours`."""

from __future__ import annotations

import socket

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from vsearch_pipeline.core.artifacts import load_embeddings
from vsearch_pipeline.core.embed import embeddings_table
from vsearch_pipeline.core.index import (
    IndexParams,
    deserialize,
    exact_neighbours,
    search,
    serialize,
    set_search_params,
)
from vsearch_pipeline.core.layout import embeddings_dir, embeddings_path
from vsearch_pipeline.core.sharded_index import (
    build_ivf_by_shards,
    exact_topk_by_shards,
    iter_shard_vectors,
    recall_by_shards,
    sample_vectors,
    shard_row_counts,
    sharded_params,
)
from vsearch_pipeline.core.storage import ArtifactStore

MODEL, D = "test-model", 32
SHARD_ROWS = {"b00001": 700, "b00002": 450, "b00003": 0, "b00004": 600, "b00005": 380}
BATCH = 128  # small, so record batches and shards do not line up
PQ_TYPES = [IndexParams("ivf-flat", nlist=16, nprobe=4), IndexParams("ivf-pq", nlist=16, M=8, nbits=6),
            IndexParams("ivf-pq", nlist=16, M=8, nbits=6, opq=True)]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, D)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_shards(store: ArtifactStore) -> None:
    """Five shards (one empty, one in row groups of 100 rows) with random unit vectors; shards
    2 and 4 repeat 30 ids of shard 1 with other vectors, which the first shard's must win over."""
    rng = np.random.default_rng(7)
    first_ids: list[str] = []
    for number, (key, rows) in enumerate(SHARD_ROWS.items()):
        ids = [f"{number:02d}{i:014x}" for i in range(rows)]
        if key in ("b00002", "b00004"):
            ids[5:35] = first_ids[100 + 50 * number: 130 + 50 * number]
        first_ids = first_ids or ids
        table = embeddings_table(ids, _unit(rng, rows), MODEL, "v1")
        if key == "b00004":
            store.fs.makedirs(store.path(embeddings_dir(MODEL)), exist_ok=True)
            with store.fs.open(store.path(embeddings_path(MODEL, key)), "wb") as f:
                pq.write_table(table, f, row_group_size=100)
        else:
            store.write_parquet(embeddings_path(MODEL, key), table)


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """OPQ training on a few thousand points is ~3x slower with two OpenMP threads than with one."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ArtifactStore:
    store = ArtifactStore(str(tmp_path_factory.mktemp("artifacts")))
    write_shards(store)
    return store


@pytest.fixture(scope="module")
def shards(store) -> list[str]:
    return store.list(embeddings_dir(MODEL), ".parquet")


@pytest.fixture(scope="module")
def loaded(store) -> tuple[list[str], np.ndarray]:
    ids, vectors, _ = load_embeddings(store, MODEL)
    return ids, vectors


def test_row_counts_come_from_the_metadata(store, shards):
    assert shard_row_counts(store, shards) == list(SHARD_ROWS.values())


def test_shard_vectors_are_load_embeddings_in_batches(store, shards, loaded):
    batches = list(iter_shard_vectors(store, shards, BATCH))
    assert all(0 < len(ids) == len(vectors) <= BATCH for ids, vectors in batches)
    assert [i for ids, _ in batches for i in ids] == loaded[0]
    assert len(loaded[0]) == sum(SHARD_ROWS.values()) - 60  # the repeated ids, once each
    np.testing.assert_array_equal(np.concatenate([v for _, v in batches]), loaded[1])
    assert batches[0][1].dtype == np.float32


def test_sample_is_deterministic_and_drawn_from_the_shards(store, shards, loaded):
    sample = sample_vectors(store, shards, 300, seed=3, batch_rows=BATCH)
    assert sample.shape == (300, D) and sample.dtype == np.float32
    np.testing.assert_array_equal(sample, sample_vectors(store, shards, 300, seed=3, batch_rows=BATCH))
    assert not np.array_equal(sample, sample_vectors(store, shards, 300, seed=4, batch_rows=BATCH))
    every_row = np.concatenate([store.read_parquet(p).column("vector").to_numpy(zero_copy_only=False)
                                for p in shards if store.read_parquet(p).num_rows])
    stored = {np.asarray(v, np.float32).tobytes() for v in every_row}
    assert all(row.tobytes() in stored for row in sample)
    assert len({row.tobytes() for row in sample}) == 300  # drawn without replacement
    assert len(sample_vectors(store, shards, 10**6, seed=0)) == sum(SHARD_ROWS.values())


@pytest.mark.parametrize("params", PQ_TYPES, ids=["ivf-flat", "ivf-pq", "opq-ivf-pq"])
def test_filled_by_shards_searches_as_filled_at_once(store, shards, loaded, params):
    """The shard-by-shard index against a copy of the same trained index filled with every
    vector in one `add`: identical scores and positions."""
    index, ids = build_ivf_by_shards(store, shards, params, batch_rows=BATCH)
    assert ids == loaded[0] and index.ntotal == len(ids)
    at_once = deserialize(serialize(index))
    at_once.reset()  # trained, empty
    at_once.add(loaded[1])
    set_search_params(at_once, sharded_params(store, shards, params))
    queries = loaded[1][::37]
    by_shards, all_together = search(index, queries, 10), search(at_once, queries, 10)
    np.testing.assert_array_equal(by_shards[1], all_together[1])
    np.testing.assert_array_equal(by_shards[0], all_together[0])
    recall = recall_by_shards(index, ids, store, shards, k=10, n_queries=100, batch_rows=BATCH)
    assert 0 < recall <= 1


def test_resolved_params_are_the_built_ones(store, shards):
    params = sharded_params(store, shards, IndexParams("ivf-pq", nprobe=64, opq=True))
    assert params.nlist == sum(SHARD_ROWS.values()) // 39 and params.nprobe == params.nlist
    assert params.M == 32 and params.opq
    index, _ = build_ivf_by_shards(store, shards, IndexParams("ivf-pq", nprobe=64, M=8, nbits=6),
                                   batch_rows=BATCH)
    assert index.nlist == params.nlist and index.nprobe == params.nlist


def test_exact_topk_by_shards_is_exact_neighbours(store, shards, loaded):
    ids, vectors = loaded
    queries = _unit(np.random.default_rng(11), 25)
    scores, found = exact_topk_by_shards(store, shards, queries, 10, batch_rows=BATCH)
    positions = exact_neighbours(vectors, queries, 10)
    assert found == [[ids[p] for p in row] for row in positions]
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, positions, axis=1),
                               rtol=1e-5, atol=1e-6)


def test_exact_topk_with_k_beyond_the_collection(store, shards, loaded):
    scores, found = exact_topk_by_shards(store, shards[:1], loaded[1][:2], 5000)
    assert scores.shape == (2, SHARD_ROWS["b00001"]) and len(found[0]) == SHARD_ROWS["b00001"]
    assert found[0][0] == loaded[0][0] and sorted(found[1]) == sorted(loaded[0][:700])


def test_recall_is_one_when_every_list_is_probed(store, shards):
    index, ids = build_ivf_by_shards(store, shards, IndexParams("ivf-flat", nlist=16, nprobe=16),
                                     batch_rows=BATCH)
    assert recall_by_shards(index, ids, store, shards, k=10, n_queries=200, batch_rows=BATCH) == 1.0


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_other_types_are_refused(store, shards, index_type):
    with pytest.raises(ValueError, match="shard by shard"):
        build_ivf_by_shards(store, shards, IndexParams(index_type))


def test_no_shards_is_an_error(store):
    with pytest.raises(ValueError, match="no embedding shards"):
        build_ivf_by_shards(store, [], IndexParams("ivf-flat"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_builds_from_shards_on_s3(monkeypatch):
    """The same build over an S3 prefix (moto server on 127.0.0.1, read through s3fs)."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port())
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="vectors")
        store = ArtifactStore("s3://vectors/artifacts", endpoint)
        write_shards(store)
        shards = store.list(embeddings_dir(MODEL), ".parquet")
        index, ids = build_ivf_by_shards(store, shards, IndexParams("ivf-flat", nlist=16, nprobe=16),
                                         batch_rows=BATCH)
        assert ids == load_embeddings(store, MODEL)[0]
        assert recall_by_shards(index, ids, store, shards, k=5, n_queries=50) == 1.0
    finally:
        server.stop()

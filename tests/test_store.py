"""The DuckDB metrics database (vsearch_pipeline.core.store)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from vsearch_pipeline.core.store import METRIC_KINDS, MetricsDB, normalize_tag

RUN = {"run_id": "run-1", "asset": "vector_index", "partition": None}


@pytest.fixture
def db(tmp_path: Path) -> MetricsDB:
    return MetricsDB(str(tmp_path / "nested" / "metrics.duckdb"), lock_timeout_s=5)


def _rows(db: MetricsDB, sql: str) -> list[tuple]:
    with db.connect(read_only=True) as con:
        return con.execute(sql).fetchall()


def test_connect_creates_the_file_and_every_table(db: MetricsDB) -> None:
    with db.connect() as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert Path(db.path).is_file()
    expected = {f"{kind}_metrics" for kind in METRIC_KINDS} | {"perceptual_hashes", "near_duplicate_groups"}
    assert expected <= tables


def test_metric_table_columns(db: MetricsDB) -> None:
    with db.connect() as con:
        columns = [r[0] for r in con.execute("DESCRIBE index_metrics").fetchall()]
    assert columns == ["run_id", "asset", "partition", "recorded_at", "model", "index_type",
                       "index_version", "params", "mode", "metric", "value"]


def test_a_file_from_an_older_version_gains_the_new_columns(tmp_path) -> None:
    import duckdb

    path = str(tmp_path / "old.duckdb")
    with duckdb.connect(path) as con:
        con.execute("CREATE TABLE index_metrics (run_id VARCHAR, asset VARCHAR, partition VARCHAR, "
                    "recorded_at TIMESTAMP, model VARCHAR, index_type VARCHAR, "
                    "index_version VARCHAR, params VARCHAR, metric VARCHAR, value DOUBLE)")
        con.execute("INSERT INTO index_metrics (run_id, metric, value) VALUES ('old', 'x', 1)")
    old = MetricsDB(path)
    old.record_metrics("index", RUN, {"mode": "incremental"}, {"vectors": 3})
    with old.connect(read_only=True) as con:
        rows = con.execute("SELECT run_id, mode, metric FROM index_metrics ORDER BY run_id").fetchall()
    assert rows == [("old", None, "x"), (RUN["run_id"], "incremental", "vectors")]


def test_record_metrics_writes_one_row_per_figure(db: MetricsDB) -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    db.record_metrics(
        "index",
        RUN,
        {"model": "efficientnet-lite0", "index_type": "hnsw", "index_version": "abc123",
         "params": {"M": 32, "efSearch": 128}},
        {"recall@10": 0.97, "build_seconds": 1.5, "vectors": 3000},
    )
    rows = _rows(db, "SELECT run_id, asset, partition, model, index_type, index_version, params, "
                     "metric, value, recorded_at FROM index_metrics ORDER BY metric")
    assert [r[:9] for r in rows] == [
        ("run-1", "vector_index", None, "efficientnet-lite0", "hnsw", "abc123",
         '{"M": 32, "efSearch": 128}', name, value)
        for name, value in [("build_seconds", 1.5), ("recall@10", 0.97), ("vectors", 3000.0)]
    ]
    assert isinstance(rows[0][8], float)
    recorded = {r[9] for r in rows}
    assert len(recorded) == 1  # one timestamp for the whole call
    assert before - dt.timedelta(seconds=5) <= recorded.pop() <= dt.datetime.now(dt.UTC).replace(tzinfo=None)


def test_missing_key_columns_are_null_and_calls_append(db: MetricsDB) -> None:
    db.record_metrics("subset", {**RUN, "partition": "2024-01"}, {"fraction": 0.1}, {"chosen": 10})
    db.record_metrics("subset", {**RUN, "run_id": "run-2"}, {"seed": "7"}, {"chosen": 12})
    rows = _rows(db, "SELECT run_id, partition, fraction, seed, metric, value FROM subset_metrics "
                     "ORDER BY run_id")
    assert rows == [("run-1", "2024-01", "0.1", None, "chosen", 10.0),
                    ("run-2", None, None, "7", "chosen", 12.0)]


def test_unknown_key_column_raises_and_writes_nothing(db: MetricsDB) -> None:
    with pytest.raises(ValueError, match=r"index_metrics has no columns \['grounding_set'\]"):
        db.record_metrics("index", RUN, {"model": "m", "grounding_set": "g"}, {"recall@10": 1.0})
    with db.connect() as con:
        assert con.execute("SELECT count(*) FROM index_metrics").fetchone() == (0,)


def test_failing_transaction_rolls_back(db: MetricsDB) -> None:
    db.record_metrics("hash", RUN, {"hamming_threshold": "6"}, {"pairs": 3})
    with pytest.raises(RuntimeError, match="boom"), db.transaction() as con:
        con.execute("INSERT INTO near_duplicate_groups VALUES ('run-1', 'a', 0, true)")
        con.execute("DELETE FROM hash_metrics")
        raise RuntimeError("boom")
    assert _rows(db, "SELECT count(*) FROM near_duplicate_groups") == [(0,)]
    assert _rows(db, "SELECT metric, value FROM hash_metrics") == [("pairs", 3.0)]


def test_failing_statement_rolls_back_the_whole_transaction(db: MetricsDB) -> None:
    with pytest.raises(duckdb.Error), db.transaction() as con:
        con.execute("INSERT INTO perceptual_hashes VALUES ('a', 'p1', 1)")
        con.execute("INSERT INTO perceptual_hashes VALUES ('a', 'p1', 2)")  # primary key clash
    assert _rows(db, "SELECT count(*) FROM perceptual_hashes") == [(0,)]


def test_successful_transaction_commits(db: MetricsDB) -> None:
    with db.transaction() as con:
        con.executemany("INSERT INTO perceptual_hashes VALUES (?, ?, ?)",
                        [("a", "p1", 1), ("b", "p1", 2**64 - 1)])
    assert _rows(db, "SELECT id, phash FROM perceptual_hashes ORDER BY id") == [("a", 1), ("b", 2**64 - 1)]


def test_read_only_connection_queries_and_cannot_write(db: MetricsDB) -> None:
    db.record_metrics("retrieval", RUN, {"model": "m", "grounding_set": "caltech"},
                      {"map@10": 0.5, "recall@10": 0.75})
    with db.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT metric, value FROM retrieval_metrics WHERE grounding_set = ? ORDER BY metric",
            ["caltech"],
        ).fetchall()
        assert rows == [("map@10", 0.5), ("recall@10", 0.75)]
        with pytest.raises(duckdb.Error):
            con.execute("DELETE FROM retrieval_metrics")
    assert len(_rows(db, "SELECT * FROM retrieval_metrics")) == 2


def test_unknown_kind_raises(db: MetricsDB) -> None:
    with pytest.raises(KeyError):
        db.record_metrics("nonsense", RUN, {}, {"x": 1.0})


def test_record_metrics_with_no_figures_is_a_no_op(db: MetricsDB) -> None:
    db.record_metrics("manifest", RUN, {}, {})
    assert _rows(db, "SELECT count(*) FROM manifest_metrics") == [(0,)]


def test_queued_metrics_are_filed_once_even_when_filed_twice(tmp_path) -> None:
    """Per-partition steps (maybe on other machines) queue their figures in artifact storage;
    the collection step files them into DuckDB, and a record filed twice counts once."""
    from vsearch_pipeline.core.metrics_queue import QUEUE, file_queued_metrics, queue_metrics
    from vsearch_pipeline.core.storage import ArtifactStore

    store = ArtifactStore(str(tmp_path / "artifacts"))
    db = MetricsDB(str(tmp_path / "m.duckdb"))
    run = {"run_id": "r1", "asset": "embeddings", "partition": "b00001"}
    path = queue_metrics(store, "embedding", run, {"model": "m"}, {"images": 5, "seconds": 1.5})
    copy = store.read_bytes(path)
    assert file_queued_metrics(store, db) == 1 and store.list(QUEUE) == []
    store.write_bytes(path, copy)  # the same record again (a step filed it concurrently)
    assert file_queued_metrics(store, db) == 1
    assert _rows(db, "SELECT partition, model, metric, value FROM embedding_metrics "
                     "ORDER BY metric") == [("b00001", "m", "images", 5.0),
                                            ("b00001", "m", "seconds", 1.5)]


@pytest.mark.parametrize("tag", ["", "   ", "x" * 101, "a\x00b", "tab\there", "del\x7f",
                                 "two\u2028lines", "para\u2029graph", "evil\u202etxt.exe",
                                 "\u2066isolated\u2069",
                                 # only characters that print nothing
                                 "\u200b", "\u200b\u200c\u200d", "\ufeff", "\u2060 \u2060",
                                 "\u00ad", "\u3164", "\u115f\u1160", "\u2800", "\u0301",
                                 "\ufe0f", "\u00a0\u3000", " \u200b \u3164 "])
def test_tags_refuse_what_does_not_print_as_itself(tag: str) -> None:
    with pytest.raises(ValueError, match="a tag is 1 to 100 printable characters"):
        normalize_tag(tag)


@pytest.mark.parametrize("tag", ["drinks", "  padded  ", "café au lait", "東京", "x" * 100,
                                 "family 👨\u200d👩\u200d👧", "x'); DROP TABLE tags; --", "❤\ufe0f"])
def test_tags_keep_ordinary_text(tag: str) -> None:
    assert normalize_tag(tag) == tag.strip()


@pytest.mark.parametrize(("typed", "stored"), [
    ("cafe\u0301", "caf\u00e9"),  # a combining accent composes (NFC)
    ("  caf\u00e9\t\n", "caf\u00e9"),
    ("\u200bcat\u200b", "cat"), ("\ufeffcat", "cat"), ("cat\u2060 \u200d", "cat"),
    ("\u3000wide space\u00a0", "wide space"),
    ("x" * 100 + "   ", "x" * 100),  # the length is the stored form's
    ("e\u0301" * 100, "\u00e9" * 100),  # 200 code points typed, 100 stored
])
def test_tags_are_stored_in_one_normal_form(typed: str, stored: str) -> None:
    assert normalize_tag(typed) == stored
    assert normalize_tag(stored) == stored  # normalising is idempotent

"""The service's grouped writes to curation.duckdb: every acknowledged tag, click and rating is
stored, writes arriving together share transactions, and a failed transaction reaches the callers
whose changes were in it while the logged result lists wait for the next one."""

import datetime as dt
import threading

import duckdb
import pytest

from serving.search_log import SearchLog
from vsearch_pipeline.core.store import CurationDB, insert_click, tag_images


@pytest.fixture
def log(tmp_path):
    log = SearchLog(CurationDB(str(tmp_path / "curation.duckdb")), flush_interval_s=0.05)
    log.start()
    yield log
    log.close()


def _count(log: SearchLog, table: str) -> int:
    with duckdb.connect(log.db.path, read_only=True) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _searches(log: SearchLog, n: int) -> list[str]:
    results = [{"rank": r, "id": f"{r:016x}", "score": 1.0 - r / 10} for r in range(1, 4)]
    return [log.served("similar", f"image:{i}", results, 3, "v1", 1.0) for i in range(n)]


def test_concurrent_writes_are_all_stored_in_fewer_transactions(log, monkeypatch):
    transactions = []
    opened = log.db.transaction

    def counted():
        transactions.append(dt.datetime.now())
        return opened()

    monkeypatch.setattr(log.db, "transaction", counted)
    query_ids = _searches(log, 50)
    answers, threads = [], []
    for n in range(16):
        def write(n=n):
            answers.append(log.write(lambda con: tag_images(con, [f"{n:016x}"], f"tag-{n}")))
            log.write(lambda con: insert_click(con, query_ids[n], "0000000000000001", 1))
        threads.append(threading.Thread(target=write))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"32 writes and 50 result lists in {len(transactions)} transactions")
    assert answers == [1] * 16
    assert (_count(log, "tags"), _count(log, "clicks"), _count(log, "queries")) == (16, 16, 50)
    assert len(transactions) < 32


def test_a_failed_transaction_fails_its_writes_and_keeps_the_result_lists(tmp_path):
    log = SearchLog(CurationDB(str(tmp_path / "curation.duckdb")))  # no writer: writes flush inline
    _searches(log, 5)

    def broken(con):
        con.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(duckdb.CatalogException):
        log.write(broken)
    assert log.write(lambda con: tag_images(con, ["00000000000000aa"], "after")) == 1
    assert (_count(log, "queries"), _count(log, "tags")) == (5, 1)  # kept, then stored
    log.close()

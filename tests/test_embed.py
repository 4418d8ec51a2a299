"""The decode-ahead queue of the embedding step keeps memory bounded and order intact."""

import threading
from concurrent.futures import ThreadPoolExecutor

from vsearch_pipeline.core.embed import bounded_map


def test_bounded_map_keeps_order_and_never_runs_far_ahead():
    started = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        return item * item

    consumed = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for value in bounded_map(pool, work, range(100), ahead=5):
            with lock:
                # Never more than `ahead` items submitted beyond what was consumed.
                assert len(started) <= len(consumed) + 5
            consumed.append(value)
    assert consumed == [i * i for i in range(100)]


def test_bounded_map_handles_fewer_items_than_ahead():
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(bounded_map(pool, str, [1, 2], ahead=10)) == ["1", "2"]

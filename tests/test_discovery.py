"""The sensor's cursor and the index's build plan, as plain functions."""

from vsearch_pipeline.core.discovery import SourceCursor, chunked, new_objects, split_images
from vsearch_pipeline.core.index_plan import FULL, INCREMENTAL, plan_build
from vsearch_pipeline.core.sources import SourceObject


def obj(name: str, modified: float, version: str = "v1") -> SourceObject:
    return SourceObject(f"s3://b/{name}", name, 10, version, modified)


def test_every_file_is_taken_once_even_when_many_share_a_timestamp():
    cursor = SourceCursor()
    first = [obj(f"{i:04d}.jpg", 100.0) for i in range(1000)]
    new, cursor = new_objects(first, cursor, lookback_s=0)
    assert len(new) == 1000 and cursor.watermark == 100.0
    later = [*first, obj("late-same-second.jpg", 100.0), obj("next.jpg", 101.0)]
    new, cursor = new_objects(later, SourceCursor.from_json(cursor.to_json()), lookback_s=0)
    assert [o.path for o in new] == ["late-same-second.jpg", "next.jpg"]
    again, cursor = new_objects(later, cursor, lookback_s=0)
    assert again == []
    assert set(cursor.recent) == {"s3://b/next.jpg"}  # the cursor stays small


def test_a_late_file_with_an_older_stamp_is_caught_within_the_lookback():
    new, cursor = new_objects([obj("a.jpg", 1000.0)], SourceCursor(), lookback_s=60)
    late = [obj("a.jpg", 1000.0), obj("multipart.jpg", 970.0), obj("too-late.jpg", 900.0)]
    new, cursor = new_objects(late, cursor, lookback_s=60)
    assert [o.path for o in new] == ["multipart.jpg"]


def test_an_overwritten_file_is_new_again_and_a_forgotten_one_is_retried():
    _, cursor = new_objects([obj("a.jpg", 10.0), obj("b.jpg", 10.0)], SourceCursor(), 30)
    new, cursor = new_objects([obj("a.jpg", 20.0, "v2"), obj("b.jpg", 10.0)], cursor, 30)
    assert [(o.path, o.version) for o in new] == [("a.jpg", "v2")]
    new, _ = new_objects([obj("a.jpg", 20.0, "v2"), obj("b.jpg", 10.0)],
                         cursor.forget(["s3://b/b.jpg"]), 30)
    assert [o.path for o in new] == ["b.jpg"]


def test_images_are_told_apart_by_content_not_name():
    heads = {"s3://b/photo.txt": b"\xff\xd8\xff\xe0rest", "s3://b/page.jpg": b"<html>",
             "s3://b/empty.jpg": b"", "s3://b/p.png": b"\x89PNG\r\n\x1a\nxxxx"}

    def read_head(uri: str, size: int) -> bytes:
        if uri == "s3://b/gone.jpg":
            raise FileNotFoundError(uri)
        return heads[uri][:size]

    objects = [obj(n, 1.0) for n in ("photo.txt", "page.jpg", "empty.jpg", "p.png", "gone.jpg")]
    images, skipped = split_images(objects, read_head)
    assert [o.path for o in images] == ["photo.txt", "p.png"]
    assert {o.path: why.split(" ")[0] for o, why in skipped} == {
        "page.jpg": "not", "empty.jpg": "empty", "gone.jpg": "could"}
    assert [len(c) for c in chunked(list(range(25)), 10)] == [10, 10, 5]


def test_the_plan_adds_until_the_collection_outgrows_its_training():
    params = {"index_type": "ivf-pq", "nlist": None}
    previous = {"version": "v1", "model_version": "m1", "requested_params": params,
                "shards": ["s1"], "count": 1000, "trained_count": 1000}
    assert plan_build(None, params, "m1", 10, 0.25, False).mode == FULL
    assert plan_build(previous, params, "m1", 100, 0.25, False).mode == INCREMENTAL
    grown = plan_build(previous, params, "m1", 300, 0.25, False)
    assert grown.mode == FULL and "grew 30%" in grown.reason
    assert plan_build(previous, params, "m2", 1, 0.25, False).mode == FULL
    assert plan_build(previous, {**params, "nlist": 64}, "m1", 1, 0.25, False).mode == FULL
    assert plan_build(previous, params, "m1", 1, 0.25, True).reason.startswith("full rebuild requested")


def test_cluster_drift_is_absolute_for_shares_and_relative_for_counts():
    from vsearch_pipeline.core.drift import drifted

    previous = {"n_clusters": 100, "noise_share": 0.20, "silhouette": 0.10, "gone": 1.0}
    steady = {"n_clusters": 105, "noise_share": 0.25, "silhouette": float("nan")}
    assert not any(r["drifted"] for r in drifted(previous, steady, 0.1))
    assert [r["metric"] for r in drifted(previous, steady, 0.1)] == ["n_clusters", "noise_share"]
    jump = {"n_clusters": 40, "noise_share": 0.45, "silhouette": 0.12}
    assert {r["metric"] for r in drifted(previous, jump, 0.1) if r["drifted"]} == {
        "n_clusters", "noise_share"}
    assert drifted({}, jump, 0.1) == []

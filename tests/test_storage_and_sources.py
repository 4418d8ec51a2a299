"""Local ArtifactStore writes and reads, and listing of a local source folder."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from vsearch_pipeline.core import storage as storage_module
from vsearch_pipeline.core.sources import SourceObject, list_source, read_object
from vsearch_pipeline.core.storage import ArtifactStore, storage_options


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- ArtifactStore


def test_bytes_round_trip_creates_folders(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "home"))
    uri = store.write_bytes("a/b/c.bin", b"\x00\x01payload")
    assert uri == str(tmp_path / "home" / "a" / "b" / "c.bin")
    assert (tmp_path / "home" / "a" / "b" / "c.bin").read_bytes() == b"\x00\x01payload"
    assert store.read_bytes("a/b/c.bin") == b"\x00\x01payload"
    assert store.exists("a/b/c.bin") and not store.exists("a/b/missing.bin")
    assert store.uri("x.json") == store.path("x.json") == str(tmp_path / "home" / "x.json")


def test_empty_bytes_round_trip(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b""


def test_json_round_trip(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    value = {"b": [1, 2.5, None], "a": {"nested": "é"}, "flag": True}
    store.write_json("meta/run.json", value)
    assert store.read_json("meta/run.json") == value
    text = (tmp_path / "meta" / "run.json").read_text()
    assert text.index('"a"') < text.index('"b"') < text.index('"flag"')  # sorted keys


def test_parquet_round_trip_and_column_selection(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    table = pa.table({"id": ["a", "b", "c"], "n": pa.array([1, 2, 3], pa.int64()),
                      "x": pa.array([0.5, None, 1.5], pa.float32())})
    store.write_parquet("t/data.parquet", table)
    assert store.read_parquet("t/data.parquet").equals(table)
    only = store.read_parquet("t/data.parquet", columns=["n"])
    assert only.column_names == ["n"] and only.column("n").to_pylist() == [1, 2, 3]


def test_overwrite_replaces_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("d/f.bin", b"old")
    store.write_bytes("d/f.bin", b"new and longer")
    store.write_json("d/g.json", [1])
    assert store.read_bytes("d/f.bin") == b"new and longer"
    assert _all_files(tmp_path) == ["d/f.bin", "d/g.json"]


def test_failing_write_keeps_the_old_file(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("d/f.bin", b"old")

    class Unwritable:  # not bytes-like: file.write raises TypeError after the temp file exists
        pass

    with pytest.raises(TypeError):
        store.write_bytes("d/f.bin", Unwritable())  # type: ignore[arg-type]
    assert store.read_bytes("d/f.bin") == b"old"
    assert _all_files(tmp_path) == ["d/f.bin"]


def test_failing_rename_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("d/f.bin", b"old")
    calls = []

    def broken_replace(src: str, dst: str) -> None:
        calls.append((src, dst))
        assert Path(src).read_bytes() == b"new"  # the full content was written first
        raise OSError("disk went away")

    monkeypatch.setattr(storage_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk went away"):
        store.write_bytes("d/f.bin", b"new")
    assert len(calls) == 1 and calls[0][1] == str(tmp_path / "d" / "f.bin")
    assert calls[0][0].startswith(str(tmp_path / "d" / ".f.bin.part-"))  # hidden from listings
    assert store.read_bytes("d/f.bin") == b"old"
    assert _all_files(tmp_path) == ["d/f.bin"]


def test_list_is_sorted_and_filters_by_suffix(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    for name in ["b.parquet", "a.parquet", "c.json", "a.parquet.bak", "10.parquet"]:
        store.write_bytes(f"shards/{name}", b"x")
    store.write_bytes("shards/sub/deep.parquet", b"x")  # not directly under the folder
    assert store.list("shards", ".parquet") == [
        "shards/10.parquet", "shards/a.parquet", "shards/b.parquet",
    ]
    assert store.list("shards", ".json") == ["shards/c.json"]
    assert store.list("missing", ".parquet") == []


def test_list_returns_files_only(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("shards/a.parquet", b"x")
    store.write_bytes("shards/sub/deep.parquet", b"x")
    assert store.list("shards") == ["shards/a.parquet"]


def test_storage_options_only_for_s3_with_endpoint() -> None:
    assert storage_options("s3://bucket/x", "http://localhost:9000") == {
        "endpoint_url": "http://localhost:9000"
    }
    assert storage_options("s3://bucket/x", None) == {}
    assert storage_options("/local/x", "http://localhost:9000") == {}


# ----------------------------------------------------------------------------- sources


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    files = {
        "b.jpg": b"bb",
        "a.jpg": b"a",
        "sub/c.jpg": b"ccc",
        "sub/deeper/d.png": b"dddd",
        "Z/upper.jpg": b"z",
        ".hidden.jpg": b"h",
        ".cache/e.jpg": b"e",
        "sub/.thumbs/f.jpg": b"f",
        "sub/.DS_Store": b"x",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty_dir").mkdir()
    return root


def test_list_source_relative_sorted_without_hidden(source: Path) -> None:
    objects = list_source(str(source))
    assert all(isinstance(o, SourceObject) for o in objects)
    assert [o.path for o in objects] == ["Z/upper.jpg", "a.jpg", "b.jpg", "sub/c.jpg", "sub/deeper/d.png"]
    assert [o.size for o in objects] == [1, 1, 2, 3, 4]
    for o in objects:
        assert o.uri == str(source / o.path)
        assert read_object(o.uri) == (source / o.path).read_bytes()


def test_list_source_accepts_a_trailing_slash(source: Path) -> None:
    assert [o.path for o in list_source(str(source) + "/")] == [o.path for o in list_source(str(source))]


def test_list_source_under_a_hidden_folder(tmp_path: Path) -> None:
    # Only the part below the source root counts as hidden or not.
    root = tmp_path / ".cache" / "photos"
    (root / "x").mkdir(parents=True)
    (root / "x" / "1.jpg").write_bytes(b"1")
    assert [o.path for o in list_source(str(root))] == ["x/1.jpg"]


def test_list_source_empty_folder(tmp_path: Path) -> None:
    assert list_source(str(tmp_path)) == []


def test_missing_source_raises(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_source(missing)


def test_version_changes_when_a_file_is_overwritten(source: Path) -> None:
    before = {o.path: o.version for o in list_source(str(source))}
    target = source / "sub" / "c.jpg"
    stat = target.stat()
    target.write_bytes(b"a different, longer content")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the size alone differs
    after = {o.path: o.version for o in list_source(str(source))}
    assert after["sub/c.jpg"] != before["sub/c.jpg"]
    assert {k: v for k, v in after.items() if k != "sub/c.jpg"} == {
        k: v for k, v in before.items() if k != "sub/c.jpg"
    }
    assert list_source(str(source)) == list_source(str(source))  # stable when nothing changes


def test_embeddings_of_several_shards_keep_each_id_once(tmp_path: Path) -> None:
    """A later shard that holds only images an earlier one has adds nothing (and does not fail);
    the predicted labels come back with the first shard's vector."""
    import numpy as np

    from vsearch_pipeline.core.artifacts import load_embeddings, load_labels
    from vsearch_pipeline.core.embed import embeddings_table
    from vsearch_pipeline.core.layout import embeddings_path

    store = ArtifactStore(str(tmp_path))
    first = np.eye(3, dtype=np.float32)
    store.write_parquet(embeddings_path("m", "b00001"), embeddings_table(
        ["a", "b", "c"], first, "m", "v1", [[("cat", 0.9)], [], [("dog", 0.5), ("cat", 0.2)]]))
    store.write_parquet(embeddings_path("m", "b00002"), embeddings_table(
        ["b", "a"], np.ones((2, 3), np.float32), "m", "v1"))
    store.write_parquet(embeddings_path("m", "b00003"), embeddings_table(
        ["d", "a"], np.full((2, 3), 2, np.float32), "m", "v1"))
    ids, vectors, version = load_embeddings(store, "m")
    assert ids == ["a", "b", "c", "d"] and version == "v1"
    np.testing.assert_array_equal(vectors[:3], first)
    np.testing.assert_array_equal(vectors[3], [2, 2, 2])
    labels = load_labels(store, "m")
    assert labels["a"] == (["cat"], [pytest.approx(0.9)]) and "b" not in labels
    assert labels["c"][0] == ["dog", "cat"]

"""The raw image manifest over real files (dedup_cases) and files made in tmp_path."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from vsearch_pipeline.core.manifest import (
    MANIFEST_SCHEMA,
    build_manifest,
    content_hash,
    image_id,
    manifest_row,
    status_counts,
)
from vsearch_pipeline.core.sources import SourceObject, list_source, read_object


@pytest.fixture(scope="module")
def dedup_manifest(cases: Path) -> tuple[list[SourceObject], pa.Table]:
    objects = list_source(str(cases))
    return objects, build_manifest(objects, read_object, workers=2)


@pytest.fixture(scope="module")
def by_path(dedup_manifest) -> dict[str, dict]:
    return {row["path"]: row for row in dedup_manifest[1].to_pylist()}


def test_one_row_per_file_in_listing_order(dedup_manifest, cases: Path) -> None:
    objects, manifest = dedup_manifest
    assert manifest.schema == MANIFEST_SCHEMA
    assert len(objects) == 34 == len(manifest)
    assert manifest.column("path").to_pylist() == [o.path for o in objects]
    assert manifest.column("uri").to_pylist() == [o.uri for o in objects]
    assert manifest.column("version").to_pylist() == [o.version for o in objects]
    on_disk = sorted(p.relative_to(cases).as_posix() for p in cases.rglob("*") if p.is_file())
    assert sorted(manifest.column("path").to_pylist()) == on_disk


def test_ok_rows_have_size_and_format(by_path) -> None:
    ok = {p: r for p, r in by_path.items() if r["status"] == "ok"}
    assert len(ok) == 32
    for row in ok.values():
        assert row["width"] > 0 and row["height"] > 0 and row["format"]
        assert row["reason"] is None
    assert (ok["base_images/ukbench00120.jpg"]["width"], ok["base_images/ukbench00120.jpg"]["height"],
            ok["base_images/ukbench00120.jpg"]["format"]) == (640, 480, "JPEG")
    assert (ok["mixed_images/ukbench00120_resize.jpg"]["width"],
            ok["mixed_images/ukbench00120_resize.jpg"]["height"]) == (300, 300)
    assert ok["formats_images/Iggy.1024.ppm"]["format"] == "PPM"
    assert ok["formats_images/ukbench09380.webp"]["format"] == "WEBP"
    assert ok["formats_images/copyleft.tiff"]["format"] == "TIFF"
    assert ok["formats_images/giphy.gif"]["format"] == "GIF"
    assert ok["alpha_channel_image.png"]["format"] == "PNG"
    # The .bmp, .png and .svg copies are JPEG bytes under another name.
    for ext in ("bmp", "png", "svg"):
        assert ok[f"formats_images/ukbench09380.{ext}"]["format"] == "JPEG"


def test_random_bytes_file_is_not_an_image(by_path) -> None:
    for path in ("mixed_images/ukbench09268_corrupt.jpg", "mixed_nested_images/ukbench09268_corrupt.jpg"):
        row = by_path[path]
        assert row["status"] == "not_image"
        assert row["reason"] and "not an image" in row["reason"]
        assert row["width"] is None and row["height"] is None and row["format"] is None
        assert row["id"] and row["content_hash"]  # it was read, so it still has an id
        assert row["bytes"] == 189647


def test_status_counts(dedup_manifest) -> None:
    assert status_counts(dedup_manifest[1]) == {"not_image": 2, "ok": 32}


def test_renamed_and_copied_files_share_an_id(by_path) -> None:
    same = [
        ("mixed_images/ukbench00120.jpg", "mixed_nested_images/lvl1/ukbench00120.jpg"),
        ("mixed_images/ukbench00120.jpg", "base_images/ukbench00120.jpg"),
        ("mixed_images/ukbench00120_resize.jpg", "mixed_nested_images/lvl1/lvl2b/ukbench00120_resize.jpg"),
        ("formats_images/ukbench09380.jpeg", "formats_images/ukbench09380.svg"),
    ]
    for a, b in same:
        assert by_path[a]["id"] == by_path[b]["id"]
        assert by_path[a]["content_hash"] == by_path[b]["content_hash"]
    # Edited copies are different bytes, so different ids.
    original, flipped = "mixed_images/ukbench00120.jpg", "mixed_images/ukbench00120_hflip.jpg"
    assert by_path[original]["id"] != by_path[flipped]["id"]
    # 34 files, 22 distinct contents.
    assert len({row["id"] for row in by_path.values()}) == 22


def test_id_is_the_first_16_hex_of_sha256(by_path, cases: Path) -> None:
    for path, row in by_path.items():
        digest = hashlib.sha256((cases / path).read_bytes()).hexdigest()
        assert row["content_hash"] == digest
        assert row["id"] == digest[:16]
        assert row["bytes"] == (cases / path).stat().st_size
    assert image_id(content_hash(b"abc")) == hashlib.sha256(b"abc").hexdigest()[:16]


def _object(path: Path, root: Path) -> SourceObject:
    return SourceObject(str(path), path.relative_to(root).as_posix(), path.stat().st_size, "v1")


def test_empty_and_truncated_files(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "good.jpg").write_bytes(jpeg)
    objects = [_object(tmp_path / n, tmp_path) for n in ("empty.jpg", "truncated.jpg", "good.jpg")]
    rows = {r["path"]: r for r in build_manifest(objects, read_object).to_pylist()}

    empty = rows["empty.jpg"]
    assert empty["status"] == "empty" and "empty" in empty["reason"]
    assert empty["bytes"] == 0 and empty["id"] == hashlib.sha256(b"").hexdigest()[:16]

    truncated = rows["truncated.jpg"]
    assert truncated["status"] == "corrupt" and truncated["reason"]
    assert truncated["width"] is None and truncated["bytes"] == len(jpeg) // 2

    good = rows["good.jpg"]
    assert (good["status"], good["width"], good["height"], good["format"]) == ("ok", 64, 48, "JPEG")
    assert good["version"] == "v1"


def test_unreadable_file_is_a_row_not_an_error(tmp_path: Path) -> None:
    obj = SourceObject(str(tmp_path / "gone.jpg"), "gone.jpg", 123, "v")
    row = manifest_row(obj, read_object, max_pixels=10**8)
    assert row["status"] == "unreadable"
    assert row["reason"].startswith("could not read the file")
    assert row["id"] is None and row["bytes"] == 123


def test_too_large_by_max_pixels(tmp_path: Path) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    obj = _object(tmp_path / "big.png", tmp_path)
    row = build_manifest([obj], read_object, max_pixels=5000).to_pylist()[0]
    assert row["status"] == "too_large" and "10000" in row["reason"]


def test_progress_is_reported_for_every_file(tmp_path: Path) -> None:
    objects = []
    for i in range(5):
        (tmp_path / f"{i}.bin").write_bytes(bytes([i]) * 10)
        objects.append(_object(tmp_path / f"{i}.bin", tmp_path))
    calls: list[tuple[int, int]] = []
    table = build_manifest(objects, read_object, workers=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(1, 6)]
    assert table.column("path").to_pylist() == [f"{i}.bin" for i in range(5)]
    assert set(table.column("status").to_pylist()) == {"not_image"}


def test_empty_manifest() -> None:
    table = build_manifest([], read_object)
    assert len(table) == 0 and table.schema == MANIFEST_SCHEMA
    assert status_counts(table) == {}

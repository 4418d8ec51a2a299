"""Image quality figures: measured in the manifest's one decode, thresholds that hold on photos
they were not chosen on."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import ExifTags, Image, ImageEnhance, ImageFilter

from vsearch_pipeline.core.decode import inspect_image
from vsearch_pipeline.core.image_quality import QualityThresholds, jpeg_quality, measure_quality
from vsearch_pipeline.core.manifest import MANIFEST_SCHEMA, complete_manifest


def _jpeg(im: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", **options)
    return out.getvalue()


def _quality(data: bytes):
    inspected = inspect_image(data)
    return measure_quality(inspected.opened, inspected.rgb)


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> list[Path]:
    """300 Caltech-101 photos drawn with a seed, beyond any class."""
    files = sorted((shared_data / "caltech101").rglob("*.jpg"))
    return random.Random(3).sample(files, 300)


def test_jpeg_quality_is_read_back_from_the_tables(photos: list[Path]) -> None:
    im = Image.open(photos[0]).convert("RGB")
    for quality in (10, 30, 50, 75, 90, 98):
        estimate = jpeg_quality(Image.open(io.BytesIO(_jpeg(im, quality=quality))))
        assert abs(estimate - quality) <= 2, (quality, estimate)
    png = io.BytesIO()
    im.save(png, "PNG")
    assert _quality(png.getvalue()).jpeg_quality is None


def test_thresholds_fitted_on_one_half_hold_on_the_other(photos: list[Path]) -> None:
    """Blur, darken and brighten the photos: a threshold chosen on the first half (the value
    that flags 1% of the unedited ones) flags the edited ones of the second half, and few of
    its unedited ones; the default thresholds agree with what the first half gives."""
    rows = []
    for path in photos:
        im = Image.open(path).convert("RGB")
        radius = 1.5 * max(1.0, max(im.size) / 512)
        rows.append({"original": _quality(path.read_bytes()),
                     "blurred": _quality(_jpeg(im.filter(ImageFilter.GaussianBlur(radius)),
                                               quality=90)),
                     "dark": _quality(_jpeg(ImageEnhance.Brightness(im).enhance(0.2))),
                     "bright": _quality(_jpeg(ImageEnhance.Brightness(im).enhance(4.0)))})
    fit, check = rows[:150], rows[150:]
    blurry_below = float(np.percentile([r["original"].sharpness for r in fit], 1))
    share = lambda rows, kind, test: float(np.mean([test(r[kind]) for r in rows]))  # noqa: E731
    assert share(check, "original", lambda q: q.sharpness < blurry_below) <= 0.03
    assert share(check, "blurred", lambda q: q.sharpness < blurry_below) >= 0.9
    defaults = QualityThresholds()
    assert 0.5 * blurry_below <= defaults.blurry_below <= 2 * blurry_below
    flags = lambda q, size: defaults.flags(q.row() | {"width": size[0], "height": size[1]})  # noqa: E731
    size = (300, 200)
    assert share(check, "blurred", lambda q: "blurry" in flags(q, size)) >= 0.9
    assert share(check, "original", lambda q: "blurry" in flags(q, size)) <= 0.03
    assert share(check, "dark", lambda q: "dark" in flags(q, size)) >= 0.8
    assert share(check, "original", lambda q: "dark" in flags(q, size)) <= 0.03
    assert share(check, "bright", lambda q: "bright" in flags(q, size)) >= 0.5
    assert share(check, "original", lambda q: "bright" in flags(q, size)) <= 0.05
    assert defaults.flags({"sharpness": 500.0, "brightness": 0.5, "width": 40, "height": 300}
                          ) == ["tiny"]


def test_exif_date_and_camera_are_read(photos: list[Path]) -> None:
    im = Image.open(photos[1]).convert("RGB")
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "EOS 5D"
    exif[ExifTags.Base.DateTime] = "2019:06:01 10:00:00"
    exif.get_ifd(0x8769)[ExifTags.Base.DateTimeOriginal] = "2019:05:31 09:30:00"
    found = _quality(_jpeg(im, exif=exif, quality=80))
    assert found.camera == "Canon EOS 5D"
    assert found.taken_at == "2019:05:31 09:30:00"
    assert found.jpeg_quality == 80
    plain = _quality(_jpeg(im))
    assert plain.camera is None and plain.taken_at is None


def test_grey_and_colourful_pictures() -> None:
    grey = Image.new("RGB", (200, 200), (120, 120, 120))
    vivid = Image.new("RGB", (200, 200), (255, 0, 0))
    vivid.paste((0, 0, 255), (0, 0, 100, 200))
    assert _quality(_jpeg(grey)).colourfulness < 2
    assert _quality(_jpeg(vivid)).colourfulness > 80
    assert _quality(_jpeg(grey)).sharpness < 5  # nothing in it has an edge


def test_manifest_rows_carry_the_figures_and_old_manifests_get_nulls(tmp_path: Path) -> None:
    from vsearch_pipeline.core.manifest import build_manifest
    from vsearch_pipeline.core.sources import SourceObject

    good = tmp_path / "a.jpg"
    good.write_bytes(_jpeg(Image.new("RGB", (40, 30), (250, 250, 250)), quality=60))
    broken = tmp_path / "b.jpg"
    broken.write_bytes(good.read_bytes()[:100])
    entries = [SourceObject(uri=str(p), path=p.name, version="1", size=p.stat().st_size)
               for p in (good, broken)]
    table = build_manifest(entries, lambda uri: Path(uri).read_bytes())
    first, second = table.to_pylist()
    assert first["status"] == "ok" and first["jpeg_quality"] == 60
    assert first["brightness"] > 0.9
    assert QualityThresholds().flags(first) == ["blurry", "bright", "tiny"]  # a flat picture
    assert second["status"] == "corrupt" and second["sharpness"] is None
    old = table.select([f.name for f in MANIFEST_SCHEMA][:11])
    completed = complete_manifest(old)
    assert completed.schema == MANIFEST_SCHEMA
    assert completed.column("sharpness").null_count == 2
    assert completed.column("id").to_pylist() == table.column("id").to_pylist()
    assert isinstance(completed, pa.Table)

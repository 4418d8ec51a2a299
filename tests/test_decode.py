"""Tests for vsearch_pipeline.core.decode: real shared files plus images generated with Pillow."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import pickle
import struct
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from vsearch_pipeline.core.decode import (
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    SNIFF_BYTES,
    SUPPORTED_FORMATS,
    ImageError,
    ImageInfo,
    decode_rgb,
    probe_image,
    sniff_image_format,
)

# Expected Pillow format of every file in formats_images, by content. The .bmp, .png and .svg
# copies of ukbench09380 are byte-identical JPEGs under another extension, so the decoder
# (rightly) reports JPEG for them; test_misnamed_fixtures_are_jpeg_bytes pins that down.
FORMAT_FIXTURES = {
    "Iggy.1024.ppm": "PPM",
    "baboon.pgm": "PPM",
    "marbles.pbm": "PPM",
    "copyleft.tiff": "TIFF",
    "giphy.gif": "GIF",
    "ukbench09380.jpeg": "JPEG",
    "ukbench09380.webp": "WEBP",
    "ukbench09380.bmp": "JPEG",
    "ukbench09380.png": "JPEG",
    "ukbench09380.svg": "JPEG",
}
MISNAMED_JPEGS = ("ukbench09380.bmp", "ukbench09380.png", "ukbench09380.svg")

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ----------------------------------------------------------------------------- helpers


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def _error(func: Callable[..., object], data: bytes, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError) as info:
        func(data, **kwargs)
    return info.value


def _rgb_array(data: bytes, **kwargs: object) -> np.ndarray:
    im = decode_rgb(data, **kwargs)
    assert im.mode == "RGB"
    return np.asarray(im)


def _assert_close(pixel: np.ndarray, expected: tuple[int, int, int], tol: int = 10) -> None:
    diff = np.abs(np.asarray(pixel, dtype=int) - np.asarray(expected))
    assert diff.max() <= tol, f"{tuple(pixel)} is not close to {expected}"


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1-bit PNG written by Pillow whose IHDR was then edited to claim width x height."""
    data = bytearray(_save(Image.new("1", (8, 8)), "PNG"))
    assert data[12:16] == b"IHDR"  # 8-byte signature, 4-byte length, chunk type
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC of type + 13 bytes
    return bytes(data)


def _rgb16_tiff(pixels: list[tuple[int, int, int]]) -> bytes:
    """Uncompressed big-endian TIFF, one row of 16-bit RGB pixels (Pillow cannot write one)."""
    strip = b"".join(struct.pack(">3H", *p) for p in pixels)
    tags = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, len(pixels)),  # ImageWidth
        (257, 4, 1, 1),  # ImageLength
        (258, 3, 3, None),  # BitsPerSample -> 16,16,16 stored after the IFD
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # PhotometricInterpretation: RGB
        (273, 4, 1, None),  # StripOffsets -> the strip after the IFD
        (277, 3, 1, 3),  # SamplesPerPixel
        (278, 4, 1, 1),  # RowsPerStrip
        (279, 4, 1, len(strip)),  # StripByteCounts
        (284, 3, 1, 1),  # PlanarConfiguration: chunky
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    bits_offset = 8 + ifd_size
    strip_offset = bits_offset + 6
    entries = b""
    for tag, typ, count, value in tags:
        if tag == 258:
            value = bits_offset
        elif tag == 273:
            value = strip_offset
        # A SHORT value is left-justified in the 4-byte field; offsets and LONGs fill it.
        short = typ == 3 and count == 1
        packed = struct.pack(">HH", value, 0) if short else struct.pack(">I", value)
        entries += struct.pack(">HHI", tag, typ, count) + packed
    ifd = struct.pack(">H", len(tags)) + entries + struct.pack(">I", 0)
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">3H", 16, 16, 16) + strip


def _jpeg_with_orientation(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return _save(im, "JPEG", exif=exif, quality=95)


def _two_halves(size: tuple[int, int], left: tuple, right: tuple) -> Image.Image:
    im = Image.new("RGB", size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


# ----------------------------------------------------------------------------- shared files


def test_formats_fixture_list_is_complete(cases: Path) -> None:
    names = {p.name for p in (cases / "formats_images").iterdir() if p.is_file()}
    assert names == set(FORMAT_FIXTURES)


@pytest.mark.parametrize("name", sorted(FORMAT_FIXTURES))
def test_format_fixture_decodes_to_rgb(cases: Path, name: str) -> None:
    data = (cases / "formats_images" / name).read_bytes()
    info = probe_image(data)
    assert info.format == FORMAT_FIXTURES[name]
    assert info.format in SUPPORTED_FORMATS
    im = decode_rgb(data)
    assert im.mode == "RGB"
    assert im.size == (info.width, info.height)
    assert np.asarray(im).dtype == np.uint8


def test_misnamed_fixtures_are_jpeg_bytes(cases: Path) -> None:
    # The brief expected .bmp -> BMP, .png -> PNG and the .svg to be refused; the files are in
    # fact copies of ukbench09380.jpeg, and the format must come from the bytes, not the name.
    reference = (cases / "formats_images" / "ukbench09380.jpeg").read_bytes()
    for name in MISNAMED_JPEGS:
        data = (cases / "formats_images" / name).read_bytes()
        assert data == reference
        assert probe_image(data).format == "JPEG"


def test_pnm_fixture_modes_all_become_rgb(cases: Path) -> None:
    # PBM is 1-bit and PGM 8-bit grey in Pillow; both must come back as grey RGB.
    for name, mode in (("marbles.pbm", "1"), ("baboon.pgm", "L")):
        data = (cases / "formats_images" / name).read_bytes()
        assert Image.open(io.BytesIO(data)).mode == mode
        rgb = _rgb_array(data)
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        if mode == "1":
            assert set(np.unique(rgb)) <= {0, 255}


def test_corrupt_fixture_is_rejected(cases: Path) -> None:
    # ukbench09268_corrupt.jpg is not a truncated JPEG: it has the length of ukbench09268.jpg
    # but its bytes are noise, with no JPEG signature, so nothing can identify it.
    path = cases / "mixed_images" / "ukbench09268_corrupt.jpg"
    data = path.read_bytes()
    original = (cases / "mixed_images" / "ukbench09268.jpg").read_bytes()
    assert len(data) == len(original) and not data.startswith(b"\xff\xd8")
    for func in (probe_image, decode_rgb):
        err = _error(func, data)
        assert err.status == "not_image"
        assert "no image format could be identified" in err.reason


def test_truncated_real_jpeg_is_corrupt(cases: Path) -> None:
    original = (cases / "mixed_images" / "ukbench09268.jpg").read_bytes()
    for cut in (len(original) // 2, len(original) - 16, 5000):
        for func in (probe_image, decode_rgb):
            err = _error(func, original[:cut])
            assert err.status == "corrupt"
            assert "truncated" in err.reason.lower()


def test_real_exif_rotated_fixture(cases: Path) -> None:
    data = (cases / "mixed_images" / "ukbench09268.jpg").read_bytes()
    raw = Image.open(io.BytesIO(data))
    assert raw.size == (640, 480)
    assert raw.getexif()[ExifTags.Base.Orientation] == 6
    assert probe_image(data) == ImageInfo(width=480, height=640, format="JPEG")
    assert decode_rgb(data).size == (480, 640)


def test_alpha_fixture_decodes_to_rgb(cases: Path) -> None:
    data = (cases / "alpha_channel_image.png").read_bytes()
    source = np.asarray(Image.open(io.BytesIO(data)))
    assert source.shape[2] == 4
    rgb = _rgb_array(data)
    assert rgb.shape == source.shape[:2] + (3,)
    opaque = source[..., 3] == 255
    assert (rgb[opaque] == source[..., :3][opaque]).all()


def test_gray_fixture_has_three_equal_channels(cases: Path) -> None:
    data = (cases / "ukbench00120_gray.jpg").read_bytes()
    assert Image.open(io.BytesIO(data)).mode == "L"
    rgb = _rgb_array(data)
    assert rgb.shape == (480, 640, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert rgb.std() > 10  # real picture, not a flat fill


def test_animated_gif_fixture_uses_first_frame(cases: Path) -> None:
    data = (cases / "formats_images" / "giphy.gif").read_bytes()
    with Image.open(io.BytesIO(data)) as src:
        assert src.n_frames > 1
        first = np.asarray(src.convert("RGBA"))
    rgb = _rgb_array(data)
    opaque = first[..., 3] == 255
    assert opaque.any()
    assert (rgb[opaque] == first[..., :3][opaque]).all()


# ----------------------------------------------------------------------------- not images


@pytest.mark.parametrize("func", [probe_image, decode_rgb])
def test_empty_bytes(func: Callable[..., object]) -> None:
    err = _error(func, b"")
    assert err.status == "empty"
    assert str(err) == err.reason and err.reason


@pytest.mark.parametrize(
    "data",
    [
        b"just some text\n",
        b"<!DOCTYPE html>\n<html><head><title>x</title></head><body>hi</body></html>",
        b'{"image": "no"}',
        b"\x00" * 512,
        np.random.default_rng(0).bytes(4096),
    ],
)
def test_non_images_are_not_image(data: bytes) -> None:
    for func in (probe_image, decode_rgb):
        assert _error(func, data).status == "not_image"


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\n<!-- made by hand -->\n'
        b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5"/></svg>',
        b'  <!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd">\n<SVG></SVG>',
    ],
)
def test_svg_is_unsupported(data: bytes) -> None:
    err = _error(probe_image, data)
    assert err.status == "unsupported_format"
    assert "SVG" in err.reason


def test_xml_that_is_not_svg_is_not_image() -> None:
    assert _error(probe_image, b'<?xml version="1.0"?><rss></rss>').status == "not_image"


def test_pdf_is_unsupported() -> None:
    err = _error(decode_rgb, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n")
    assert err.status == "unsupported_format"
    assert "PDF" in err.reason


@pytest.mark.parametrize(("head", "named"), [
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "HEIC"),
    (b"\xff\x0a\xfa\x7f\x01\x90\x08", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00\x00\x14ftypjxl ", "JPEG XL"),
])
def test_formats_without_a_decoder_are_named(head: bytes, named: str) -> None:
    """A phone's HEIC photo is an image this build cannot read, not 'not an image'."""
    err = _error(probe_image, head + bytes(200))
    assert err.status == "unsupported_format" and named in err.reason


def test_avif_is_told_apart_by_its_bytes() -> None:
    data = _save(Image.new("RGB", (40, 30), RED), "AVIF")
    assert sniff_image_format(data[:SNIFF_BYTES]) == "AVIF"
    assert sniff_image_format(b"\x00\x00\x00\x18ftypheic" + bytes(20)) is None


def test_format_pillow_opens_but_pipeline_refuses() -> None:
    data = _save(Image.new("RGB", (32, 32), RED), "ICO")
    assert Image.open(io.BytesIO(data)).format == "ICO"
    for func in (probe_image, decode_rgb):
        err = _error(func, data)
        assert err.status == "unsupported_format"
        assert "ICO" in err.reason


# ----------------------------------------------------------------------------- corrupt


def _small_png() -> bytes:
    return _save(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow, on the TIFF case
@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff",  # JPEG signature only
        b"\x89PNG\r\n\x1a\n",  # PNG signature only
        b"GIF89a\x10\x00",
        b"RIFF\x00\x01\x00\x00WEBPVP8 ",
        b"II*\x00\x08\x00\x00\x00",
    ],
)
def test_known_signature_without_image_is_corrupt(data: bytes) -> None:
    err = _error(probe_image, data)
    assert err.status == "corrupt"


def test_truncated_png_is_corrupt_with_pillow_message() -> None:
    data = _small_png()
    err = _error(decode_rgb, data[: len(data) * 2 // 3])
    assert err.status == "corrupt"
    assert "truncated" in err.reason.lower()


def test_damaged_png_checksum_is_corrupt() -> None:
    data = bytearray(_small_png())
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF  # flip bits inside the compressed data; CRC no longer matches
    assert _error(probe_image, bytes(data)).status == "corrupt"


def test_no_global_pillow_state_is_changed() -> None:
    filters = list(warnings.filters)
    png = _small_png()
    for data in (png[: len(png) // 2], _png_claiming(5000, 5000), png):
        with contextlib.suppress(ImageError):
            decode_rgb(data, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert warnings.filters == filters


# ----------------------------------------------------------------------------- size limit


def _fail_load(self: Image.Image) -> None:
    raise AssertionError("pixels were decoded for an image that should have been refused")


def test_decompression_bomb_refused_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png_claiming(100_000, 100_000)
    assert len(data) < 200
    monkeypatch.setattr(ImageFile.ImageFile, "load", _fail_load)
    for func in (probe_image, decode_rgb):
        err = _error(func, data)
        assert err.status == "too_large"
        assert "10000000000" in err.reason  # the pixel count


def test_bomb_between_pillow_warning_and_error_refused_by_header_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 10000 x 10000 = 1e8 pixels: over DEFAULT_MAX_PIXELS, under 2x, so Pillow only warns.
    data = _png_claiming(10_000, 10_000)
    monkeypatch.setattr(ImageFile.ImageFile, "load", _fail_load)
    with pytest.warns(Image.DecompressionBombWarning):
        err = _error(probe_image, data)
    assert err.status == "too_large"
    assert "10000x10000" in err.reason
    assert "100000000" in err.reason and str(DEFAULT_MAX_PIXELS) in err.reason


def test_bomb_warning_escalated_to_error_is_too_large() -> None:
    data = _png_claiming(10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        err = _error(decode_rgb, data)
    assert err.status == "too_large"


def test_raising_max_pixels_does_not_lift_pillows_own_limit() -> None:
    err = _error(probe_image, _png_claiming(100_000, 100_000), max_pixels=10**12)
    assert err.status == "too_large"


def test_max_pixels_boundary() -> None:
    data = _small_png()  # 64 x 64 = 4096 pixels
    assert probe_image(data, max_pixels=4096) == ImageInfo(64, 64, "PNG")
    assert decode_rgb(data, max_pixels=4096).size == (64, 64)
    for func in (probe_image, decode_rgb):
        err = _error(func, data, max_pixels=4095)
        assert err.status == "too_large"
        assert "4096" in err.reason and "4095" in err.reason


@pytest.mark.parametrize("size", [(1, 100), (100, 1), (1, 1), (3, 300), (200, 2)])
def test_strips_up_to_the_aspect_limit_are_used(size: tuple[int, int]) -> None:
    data = _save(Image.new("RGB", size, (200, 30, 30)), "PNG")
    assert probe_image(data) == ImageInfo(*size, "PNG")
    assert decode_rgb(data).size == size


@pytest.mark.parametrize("size", [(1, 101), (101, 1), (1, 100_000), (100_000, 1), (3, 1000)])
def test_strips_past_the_aspect_limit_are_refused_from_the_header(
    size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 475-byte 1 x 100,000 PNG asked a resize by its shorter side for 6.4 G pixels."""
    data = _png_claiming(*size)
    monkeypatch.setattr(ImageFile.ImageFile, "load", _fail_load)
    for func in (probe_image, decode_rgb):
        err = _error(func, data)
        assert err.status == "bad_aspect"
        assert f"{size[0]}x{size[1]}" in err.reason and f"{MAX_ASPECT_RATIO}:1" in err.reason


def test_limit_is_per_call_across_threads() -> None:
    data = _small_png()
    limits = [4095, 4096] * 50

    def outcome(limit: int) -> str:
        try:
            decode_rgb(data, max_pixels=limit)
        except ImageError as err:
            return err.status
        return "ok"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(outcome, limits))
    assert results == ["too_large" if limit == 4095 else "ok" for limit in limits]


@pytest.mark.parametrize("kwargs", [{"max_pixels": 0}, {"min_size": 0}, {"min_size": -3}])
def test_invalid_arguments_are_programming_errors(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        decode_rgb(_small_png(), **kwargs)


# ----------------------------------------------------------------------------- formats, modes


@pytest.mark.parametrize("fmt", ["AVIF", "BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP"])
def test_generated_supported_formats(fmt: str) -> None:
    im = _two_halves((32, 16), RED, BLUE)
    params = {"quality": 95} if fmt in {"JPEG", "WEBP", "AVIF"} else {}
    data = _save(im, fmt, **params)
    assert probe_image(data) == ImageInfo(32, 16, fmt)
    rgb = _rgb_array(data)
    _assert_close(rgb[8, 4], RED, tol=30)
    _assert_close(rgb[8, 28], BLUE, tol=30)


def test_mpo_is_supported() -> None:
    first = Image.new("RGB", (64, 32), RED)
    data = _save(first, "MPO", save_all=True, append_images=[Image.new("RGB", (64, 32), BLUE)])
    assert probe_image(data) == ImageInfo(64, 32, "MPO")
    _assert_close(_rgb_array(data)[5, 5], RED)


def test_cmyk_jpeg() -> None:
    data = _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    _assert_close(_rgb_array(data)[8, 8], RED)
    _assert_close(_rgb_array(data, min_size=4)[1, 1], RED)


def test_16bit_grey_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = _save(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    rgb = _rgb_array(data)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_16bit_big_endian_tiff() -> None:
    values = np.array([[0, 32768, 65535]], dtype=">u2")
    data = _save(Image.frombytes("I;16B", (3, 1), values.tobytes()), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    assert _rgb_array(data)[0, :, 0].tolist() == [0, 128, 255]


def test_16bit_pgm() -> None:
    values = np.array([[0, 32768, 65535]], dtype=">u2")
    data = b"P5\n3 1\n65535\n" + values.tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert probe_image(data).format == "PPM"
    assert _rgb_array(data)[0, :, 0].tolist() == [0, 128, 255]


def test_32bit_integer_tiff_is_read_as_16bit_and_clipped() -> None:
    values = np.array([[-5, 0, 32768, 65535, 70000]], dtype=np.int32)
    data = _save(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert _rgb_array(data)[0, :, 0].tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # normalised floats
        ([0.0, 100.4, 300.0], [0, 100, 255]),  # 0..255 floats, clipped like Pillow
        ([float("nan"), 2.0, -7.0], [0, 2, 0]),
    ],
)
def test_float_tiff(values: list[float], expected: list[int]) -> None:
    data = _save(Image.fromarray(np.array([values], dtype=np.float32)), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert _rgb_array(data)[0, :, 0].tolist() == expected


def test_16bit_rgb_tiff() -> None:
    data = _rgb16_tiff([(65535, 32768, 0), (0, 0, 65535)])
    assert probe_image(data) == ImageInfo(2, 1, "TIFF")
    assert _rgb_array(data)[0].tolist() == [[255, 128, 0], [0, 0, 255]]


def test_palette_png_with_transparency_goes_on_white() -> None:
    im = Image.new("P", (2, 1), 0)
    im.putpalette([0, 0, 0, 255, 0, 0])  # index 0 black (transparent), index 1 red
    im.putpixel((1, 0), 1)
    data = _save(im, "PNG", transparency=0)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    assert _rgb_array(data)[0].tolist() == [list(WHITE), list(RED)]


def test_palette_png_without_transparency() -> None:
    im = Image.new("RGB", (4, 4), GREEN).convert("P", palette=Image.Palette.ADAPTIVE)
    data = _save(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    _assert_close(_rgb_array(data)[1, 1], GREEN, tol=0)


def test_la_image_alpha_composited_on_white() -> None:
    grey = Image.new("L", (3, 1), 0)
    alpha = Image.frombytes("L", (3, 1), bytes([0, 255, 128]))
    data = _save(Image.merge("LA", [grey, alpha]), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    rgb = _rgb_array(data)
    assert rgb[0, 0].tolist() == list(WHITE)  # fully transparent
    assert rgb[0, 1].tolist() == [0, 0, 0]  # opaque black
    _assert_close(rgb[0, 2], (127, 127, 127), tol=1)  # half black over white


def test_rgba_half_transparent_red() -> None:
    data = _save(Image.new("RGBA", (4, 4), (255, 0, 0, 128)), "PNG")
    _assert_close(_rgb_array(data)[2, 2], (255, 127, 127), tol=1)


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert probe_image(data) == ImageInfo(16, 16, "GIF")
    rgb = _rgb_array(data)
    assert (rgb == RED).all()


# ----------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_sizes(orientation: int) -> None:
    data = _jpeg_with_orientation(Image.new("RGB", (40, 20), RED), orientation)
    expected = (20, 40) if orientation >= 5 else (40, 20)
    info = probe_image(data)
    assert (info.width, info.height) == expected
    assert decode_rgb(data).size == expected


def test_exif_orientation_6_rotates_pixels_clockwise() -> None:
    data = _jpeg_with_orientation(_two_halves((40, 20), RED, BLUE), 6)
    rgb = _rgb_array(data)
    assert rgb.shape == (40, 20, 3)
    _assert_close(rgb[5, 10], RED)  # the left half is now on top
    _assert_close(rgb[34, 10], BLUE)
    # The orientation tag is consumed, so applying it again would not rotate a second time.
    assert ExifTags.Base.Orientation not in decode_rgb(data).getexif()


def test_broken_exif_block_does_not_reject_the_image() -> None:
    data = _save(Image.new("RGB", (40, 20), RED), "JPEG", exif=b"Exif\x00\x00garbage")
    assert probe_image(data) == ImageInfo(40, 20, "JPEG")
    assert decode_rgb(data).size == (40, 20)


# ----------------------------------------------------------------------------- draft mode


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return _save(_two_halves((2000, 1000), RED, BLUE), "JPEG", quality=90)


def test_min_size_uses_jpeg_draft(big_jpeg: bytes) -> None:
    assert decode_rgb(big_jpeg).size == (2000, 1000)
    im = decode_rgb(big_jpeg, min_size=224)
    assert im.mode == "RGB"
    assert 224 <= min(im.size) < 1000
    assert im.size[0] == 2 * im.size[1]
    rgb = np.asarray(im)
    _assert_close(rgb[im.size[1] // 2, im.size[0] // 4], RED)


@pytest.mark.parametrize("min_size", [1, 100, 125, 126, 499, 500, 999, 1000, 5000])
def test_min_size_never_goes_below_request(big_jpeg: bytes, min_size: int) -> None:
    short = min(decode_rgb(big_jpeg, min_size=min_size).size)
    assert short >= min(min_size, 1000)


def test_min_size_with_rotation_keeps_shorter_side(big_jpeg: bytes) -> None:
    data = _jpeg_with_orientation(Image.open(io.BytesIO(big_jpeg)), 6)
    im = decode_rgb(data, min_size=224)
    assert im.size[1] == 2 * im.size[0]  # portrait after rotation
    assert 224 <= min(im.size) < 1000
    assert probe_image(data) == ImageInfo(1000, 2000, "JPEG")  # probe is never reduced


def test_min_size_ignored_for_other_formats() -> None:
    data = _save(Image.new("RGB", (600, 300), GREEN), "PNG")
    assert decode_rgb(data, min_size=32).size == (600, 300)


# ----------------------------------------------------------------------------- API types


def test_image_error_contract() -> None:
    err = ImageError("corrupt", "the file is damaged")
    assert str(err) == "the file is damaged"
    assert (err.status, err.reason) == ("corrupt", "the file is damaged")
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.status, clone.reason, str(clone)) == (err.status, err.reason, err.reason)
    with pytest.raises(ValueError):
        ImageError("bad_status", "x")


def test_image_info_is_frozen() -> None:
    info = ImageInfo(1, 2, "PNG")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.width = 3  # type: ignore[misc]


def test_constants() -> None:
    assert DEFAULT_MAX_PIXELS == 89_478_485
    expected = {"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "AVIF"}
    assert isinstance(SUPPORTED_FORMATS, frozenset) and expected == SUPPORTED_FORMATS

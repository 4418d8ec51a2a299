"""Safe decoding of untrusted image bytes.

The pipeline reads thousands of user files, so every way a file can be unusable ends as an
:class:`ImageError` with a short machine-readable ``status`` and a readable ``reason``, never as
an arbitrary exception from deep inside Pillow. Decompression bombs are refused from the size in
the header, before a single pixel is decoded.

Thread safety: nothing global is changed. ``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES`` and the warning filters are left alone and the pixel limit is
checked explicitly on every call. Pillow still applies its own global limit inside
``Image.open`` (an error above ``2 * Image.MAX_IMAGE_PIXELS``, a ``DecompressionBombWarning``
above ``Image.MAX_IMAGE_PIXELS``), so a ``max_pixels`` above Pillow's limit cannot lift Pillow's.

``MemoryError`` is deliberately not turned into an ``ImageError``: running out of memory says
something about the worker, not about the file, and must not get a good file dropped.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS: int = 89_478_485  # Pillow's own default bomb limit
# The longer side at most this many times the shorter. Every view resizes by one side (the
# shorter to 256 for the centre crop, each side to 224 when squashed), so the pixels a resize
# allocates grow with the ratio: a 1 x 100,000 strip of 475 bytes would ask for 6.4 G pixels.
# 100:1 keeps every panorama and banner and bounds any resize to a few M pixels.
MAX_ASPECT_RATIO: int = 100
# Pillow format names; Pillow reports PGM and PBM files as "PPM".
SUPPORTED_FORMATS: frozenset[str] = frozenset(
    {"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "AVIF"}
)

_STATUSES = frozenset(
    {"empty", "not_image", "unsupported_format", "corrupt", "too_large", "bad_aspect"}
)
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # formats with DCT scaling (Image.draft)
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that turn by 90 degrees
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SNIFF_BYTES = 1024
_WHITE = (255, 255, 255)
# Signatures specific enough that a file carrying one, yet unreadable, is a damaged image.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ImageError(Exception):
    """Why a file could not be used.

    ``status`` is one of "empty", "not_image", "unsupported_format", "corrupt", "too_large",
    "bad_aspect";
    ``reason`` is a readable sentence and ``str(err) == reason``.
    """

    status: str
    reason: str

    def __init__(self, status: str, reason: str) -> None:
        if status not in _STATUSES:
            raise ValueError(f"unknown image error status {status!r}")
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageError], tuple[str, str]]:
        # Keeps the error picklable (worker processes) despite the two-argument constructor.
        return type(self), (self.status, self.reason)


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`probe_image` found; width and height are after EXIF orientation."""

    width: int
    height: int
    format: str  # Pillow format name, e.g. "JPEG"


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Identify and fully decode once (so a truncated file is caught), raise ImageError otherwise.

    JPEGs are decoded with DCT scaling to 1/8: the whole compressed stream is still read and
    entropy-decoded, so truncation and broken markers are caught, at a fraction of the cost.
    """
    return inspect_image(data, max_pixels, longest_side=1).info


@dataclass(frozen=True)
class Inspected:
    """A file decoded once: what it is, the file as Pillow opened it (its JPEG tables and EXIF)
    and its pixels as RGB (EXIF orientation not applied: nothing measured on them turns)."""

    info: ImageInfo
    opened: Image.Image
    rgb: Image.Image


def inspect_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, longest_side: int = 512
                  ) -> Inspected:
    """`probe_image` with the pixels kept: a JPEG is decoded with the strongest DCT scaling that
    keeps its longer side >= `longest_side` (what the manifest measures quality on)."""
    im = _open_checked(data, max_pixels)
    width, height = im.size  # header size, before any draft reduction
    with _pillow_errors(max_pixels):
        if im.format in _DRAFT_FORMATS:
            shrink = min(1.0, longest_side / max(width, height))
            im.draft(None, (max(1, int(width * shrink)), max(1, int(height * shrink))))
        im.load()
        if _orientation(im) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        rgb = _to_rgb(im)
    return Inspected(ImageInfo(width=width, height=height, format=str(im.format)), im, rgb)


def decode_rgb(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None
) -> Image.Image:
    """RGB image ready for a model or a hash.

    First frame only, EXIF orientation applied, alpha composited onto white, 8 bits per channel.
    With ``min_size`` a JPEG is decoded with DCT scaling (``Image.draft``) at the strongest
    reduction (1/2, 1/4 or 1/8) that keeps the shorter side ``>= min_size``; other formats
    ignore it.
    """
    if min_size is not None and min_size < 1:
        raise ValueError(f"min_size must be >= 1, got {min_size}")
    im = _open_checked(data, max_pixels)
    with _pillow_errors(max_pixels):
        if min_size is not None and im.format in _DRAFT_FORMATS:
            im.draft("RGB", (min_size, min_size))
        im.load()
        # exif_transpose always returns a new image, detached from the file object.
        return _to_rgb(ImageOps.exif_transpose(im))


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open from the header only and vet format and size; no pixel is decoded yet."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    with _pillow_errors(max_pixels):
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise _unidentified(data) from None
    fmt = im.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise ImageError(
            "unsupported_format",
            f"{fmt} ({im.format_description or 'unknown'}) images are not supported; "
            f"supported formats: {', '.join(sorted(SUPPORTED_FORMATS))}",
        )
    _check_size(*im.size, max_pixels=max_pixels)
    return im


def _check_size(width: int, height: int, *, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError("corrupt", f"the image header declares an empty size {width}x{height}")
    if not aspect_ratio_allowed(width, height):
        raise ImageError(
            "bad_aspect",
            f"the image is {width}x{height}, a strip of {aspect_ratio_text(width, height)}, over "
            f"the limit of {MAX_ASPECT_RATIO}:1 (resizing it would allocate without bound); "
            "refused before decoding",
        )
    if width * height > max_pixels:
        raise ImageError(
            "too_large",
            f"the image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels (possible decompression bomb); refused before decoding",
        )


def aspect_ratio_allowed(width: int, height: int) -> bool:
    """Whether a width x height picture (or crop box) is within MAX_ASPECT_RATIO."""
    return max(width, height) <= MAX_ASPECT_RATIO * min(width, height)


def aspect_ratio_text(width: int, height: int) -> str:
    """'1000:1' for a 1x1000 strip, '2.5:1' for 500x200."""
    return f"{round(max(width, height) / min(width, height), 1):,g}:1"


@contextmanager
def _pillow_errors(max_pixels: int) -> Iterator[None]:
    """Turn whatever Pillow raises on bad data into an ImageError.

    Pillow's plugins raise many types on malformed input (OSError, SyntaxError, ValueError,
    EOFError, struct.error, IndexError, ...), so everything but MemoryError is caught.
    """
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's own global check, or its warning escalated to an error by a filter.
        declared = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{declared.group(1)} pixels" if declared else "too many pixels"
        raise ImageError(
            "too_large",
            f"the image declares {size}, over the limit of {max_pixels} pixels (possible "
            "decompression bomb); refused before decoding",
        ) from err
    except Exception as err:
        detail = str(err) or type(err).__name__
        raise ImageError("corrupt", f"corrupt or truncated image data: {detail}") from err


def _unidentified(data: bytes) -> ImageError:
    """Explain bytes that no Pillow plugin accepted."""
    head = data[:_SNIFF_BYTES]
    known = sniff_unsupported_format(head)
    if known:
        return ImageError("unsupported_format", f"{known} files are not supported")
    damaged = sniff_image_format(head)
    if damaged:
        return ImageError(
            "corrupt",
            f"the file starts like a {damaged} image but Pillow cannot read it "
            "(truncated or damaged header)",
        )
    return ImageError("not_image", "not an image: no image format could be identified")


SNIFF_BYTES = 32  # enough leading bytes for sniff_image_format


# ISO base media files (HEIF family) name their kind in the `ftyp` box: bytes 4-8, then a brand
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


def _ftyp_brand(head: bytes) -> bytes | None:
    return head[8:12] if head[4:8] == b"ftyp" else None


def sniff_image_format(head: bytes) -> str | None:
    """The raster format the leading bytes announce (JPEG, PNG, GIF, TIFF, WEBP, BMP, AVIF), or
    None.

    Decides by content, not by name: what the sensor, the downloader and uploads use to tell an
    image from anything else before reading it whole.
    """
    found = next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)
    if found is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if found is None and head[:2] == b"BM" and len(head) >= 14:
        return "BMP"
    if found is None and _ftyp_brand(head) in _AVIF_BRANDS:
        return "AVIF"
    return found


def sniff_unsupported_format(head: bytes) -> str | None:
    """Name formats Pillow cannot open but that users do hand in as images."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (
        text.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in text
    ):
        return "SVG (vector graphics)"
    if b"%PDF" in head:
        return "PDF (document)"
    if _ftyp_brand(head) in _HEIC_BRANDS:
        return "HEIC/HEIF (High Efficiency Image File; no decoder is installed)"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "JPEG XL (no decoder is installed)"
    return None


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1..8); 1 when absent or unreadable, as ImageOps.exif_transpose does."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB with 8 bits per channel."""
    if im.mode == "F" or im.mode.startswith("I"):  # I, I;16, I;16B, I;16L, I;16N
        return Image.fromarray(_high_depth_to_uint8(im)).convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:  # incl. P/L/RGB + tRNS key
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", im.size, _WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if im.mode == "RGB":
        return im
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, ...


def _high_depth_to_uint8(im: Image.Image) -> np.ndarray:
    """Grey levels of an I/I;16*/F image as uint8.

    Integers are read as 16-bit grey and rescaled 0..65535 -> 0..255 with rounding (not clipped
    at 255, which would turn nearly everything white); values outside 0..65535 in 32-bit "I"
    images are clipped. Floats are taken as 0..255 like Pillow does, unless every value lies in
    0..1, the usual convention for normalised float images.
    """
    values = np.asarray(im)
    if im.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    wide = np.clip(values, 0, 65535).astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)

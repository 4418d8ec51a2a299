"""How good a file is as a picture: sharpness, exposure, colour, size, compression and EXIF.

Measured on the pixels the manifest decodes anyway (core.decode.inspect_image), so a file is
read and decoded once for its row and its quality together. The figures are comparable across
files of different sizes because they are taken on the grey picture brought to at most
`MEASURE_SIDE` pixels on its longer side (never enlarged: an enlarged picture looks blurred,
and a small one is already called "tiny" by its size).

The flags ("blurry", "dark", "bright", "tiny") are thresholds over the stored figures
(`QualityThresholds`, the settings section `quality`), so changing a threshold needs no new
decode: the figures are what is kept, the flags are read from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import ExifTags, Image, ImageStat

from vsearch_pipeline.core.names import text_safe

MEASURE_SIDE = 512
# The IJG (libjpeg) base luminance quantization table, in natural order: encoders scale it by
# the quality setting, so the ratio of a file's table to it gives the quality back.
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
_EXIF_IFD = 0x8769
_LAPLACIAN_OFFSETS = ((-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass(frozen=True)
class Quality:
    """The figures of one picture; None where the file has no such thing (no EXIF, not JPEG)."""

    sharpness: float  # variance of the 4-neighbour Laplacian of grey levels 0..255
    brightness: float  # mean grey level, 0 (black) .. 1 (white)
    contrast: float  # standard deviation of the grey levels, 0 .. 0.5
    colourfulness: float  # Hasler & Suesstrunk's M: 0 for grey pictures, ~100 for vivid ones
    jpeg_quality: int | None  # the encoder's quality setting (1..100) estimated from its tables
    taken_at: str | None  # EXIF DateTimeOriginal (else DateTime), as the camera wrote it
    camera: str | None  # EXIF Make and Model

    def row(self) -> dict:
        return asdict(self)


EMPTY_ROW = {name: None for name in Quality.__dataclass_fields__}  # a file that did not decode


def measure_quality(loaded: Image.Image, rgb: Image.Image) -> Quality:
    """The figures of a decoded picture: `loaded` is the file as Pillow opened it (for its JPEG
    tables and EXIF), `rgb` its pixels as 8-bit RGB (see core.decode.inspect_image)."""
    small = rgb
    if max(rgb.size) > MEASURE_SIDE:
        small = rgb.copy()
        small.thumbnail((MEASURE_SIDE, MEASURE_SIDE))
    grey_image = small.convert("L")
    stats = ImageStat.Stat(grey_image)
    # colour spread and mean are statistics: a quarter of the pixels gives them
    colour = np.asarray(small.reduce(2) if min(small.size) >= 4 else small, dtype=np.float32)
    return Quality(
        sharpness=round(laplacian_variance(np.asarray(grey_image, dtype=np.float32)), 2),
        brightness=round(stats.mean[0] / 255, 4),
        contrast=round(stats.stddev[0] / 255, 4),
        colourfulness=round(colourfulness(colour), 2),
        jpeg_quality=jpeg_quality(loaded),
        taken_at=_exif_text(loaded, "taken_at"),
        camera=_exif_text(loaded, "camera"),
    )


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the discrete Laplacian (edges -> high, blur -> low), inside the border."""
    if min(grey.shape) < 3:
        return 0.0
    centre = grey[1:-1, 1:-1]
    laplacian = -4.0 * centre
    for dy, dx in _LAPLACIAN_OFFSETS:
        laplacian += grey[1 + dy:grey.shape[0] - 1 + dy, 1 + dx:grey.shape[1] - 1 + dx]
    return float(laplacian.var())


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003): spread and mean of the opponent channels rg and yb."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    spread = np.hypot(rg.std(), yb.std())
    mean = np.hypot(rg.mean(), yb.mean())
    return float(spread + 0.3 * mean)


def jpeg_quality(loaded: Image.Image) -> int | None:
    """The IJG quality setting that gives the file's luminance table (None: not a JPEG).

    libjpeg scales its base table by S = 5000/Q below quality 50 and by S = 200 - 2Q above, so
    the median ratio of the file's table to the base table gives S and S gives Q. Encoders with
    tables of their own (some cameras) get the IJG quality their tables are closest to."""
    tables = getattr(loaded, "quantization", None)
    if not tables or 0 not in tables:
        return None
    table = np.asarray(tables[0], dtype=np.float64)
    if table.shape != (64,):
        return None
    # entries clipped at 1 (high quality) or 255 (low) no longer carry the scale
    usable = (table > 1) & (table < 255)
    ratios = 100.0 * table[usable] / _IJG_LUMINANCE[usable] if usable.any() else (
        100.0 * table / _IJG_LUMINANCE)
    scale = float(np.median(ratios))
    quality = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2
    return int(np.clip(round(quality), 1, 100))


def _exif_text(loaded: Image.Image, which: str) -> str | None:
    try:
        exif = loaded.getexif()
        if which == "camera":
            parts = [str(exif.get(t, "")).strip("\x00 ") for t in (ExifTags.Base.Make,
                                                                    ExifTags.Base.Model)]
            value = " ".join(p for p in parts if p)
        else:
            value = exif.get_ifd(_EXIF_IFD).get(ExifTags.Base.DateTimeOriginal) or exif.get(
                ExifTags.Base.DateTime)
            value = str(value).strip("\x00 ") if value else ""
    except Exception:  # EXIF is the file's own text: a broken block is no value, not an error
        return None
    return text_safe(value)[:100] or None


@dataclass(frozen=True)
class QualityThresholds:
    """Where a figure makes a picture "blurry", "dark", "bright" or "tiny" (settings: insight).

    Measured on 1,200 Caltech-101 photos (docs/operations.md, "Image quality"): 1% of them have
    a sharpness under 100, and 98% of the same photos blurred by a Gaussian of 1.5 px (at 512
    px) are under it; 1% have a brightness under 0.15 and 2% over 0.9 (mostly objects on white).
    Tiny is the shorter side under 64 px, where a 224-px model input enlarges the file more
    than three times."""

    blurry_below: float = 100.0
    dark_below: float = 0.15
    bright_above: float = 0.9
    tiny_below: int = 64

    def flags(self, row: dict) -> list[str]:
        """The flags of a manifest row (figures None: a file that did not decode: no flags)."""
        found = []
        if row.get("sharpness") is not None and row["sharpness"] < self.blurry_below:
            found.append("blurry")
        if row.get("brightness") is not None and row["brightness"] < self.dark_below:
            found.append("dark")
        if row.get("brightness") is not None and row["brightness"] > self.bright_above:
            found.append("bright")
        if row.get("width") and min(row["width"], row["height"]) < self.tiny_below:
            found.append("tiny")
        return found

    def sql(self) -> dict[str, str]:
        """Each flag as a DuckDB condition over the manifest's columns."""
        return {"blurry": f"sharpness < {self.blurry_below}",
                "dark": f"brightness < {self.dark_below}",
                "bright": f"brightness > {self.bright_above}",
                "tiny": f"least(width, height) < {self.tiny_below}"}


QUALITY_FLAGS = ("blurry", "dark", "bright", "tiny")

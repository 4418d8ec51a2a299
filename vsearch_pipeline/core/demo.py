"""The embedded demo corpus: scikit-image's bundled photographs and generated near-duplicate edits.

Nothing is downloaded. Each photo gets five light edits (crop of the borders, resize, strong
JPEG re-encode, mirror, small rotation) and three hard ones (`HARD_EDITS`: a quarter of the photo
cut out, a small grey copy, a mirror turned 15 degrees), which a search has to work to find. The
grounding set written beside them, `demo`, groups each photo with all its edits and names each
member's case (`original` or the edit), so that the evaluation reports every case as a slice
(`demo/quarter`, ...) and shows where search and near-duplicate detection still fail instead of
a row of 1.0. One truncated JPEG is added so that the manifest shows how a broken file is reported.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vsearch_pipeline.core.grounding import format_grounding
from vsearch_pipeline.core.layout import DEMO_GROUNDING_FILE, DEMO_IMAGES_DIR

PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
    "motorcycle",
)


def demo_photo(name: str) -> Image.Image:
    from skimage import data

    pixels = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return Image.fromarray(np.asarray(pixels)).convert("RGB")


def _crop(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((w // 10, h // 10, w - w // 10, h - h // 10))


def _resize(img: Image.Image) -> Image.Image:
    return img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)


def _rotate(img: Image.Image) -> Image.Image:
    return _crop(img.rotate(5, resample=Image.Resampling.BICUBIC))


def _quarter(img: Image.Image) -> Image.Image:
    """Half the width and half the height, off centre: a partial duplicate."""
    w, h = img.size
    return img.crop((w // 10, h // 5, w // 10 + w // 2, h // 5 + h // 2))


def _small_grey(img: Image.Image) -> Image.Image:
    scale = max(1 / 3, 64 / min(img.size))
    small = img.resize((round(img.width * scale), round(img.height * scale)),
                       Image.Resampling.LANCZOS)
    return ImageOps.grayscale(small).convert("RGB")


def _mirror_turned(img: Image.Image) -> Image.Image:
    w, h = img.size
    turned = ImageOps.mirror(img).rotate(15, resample=Image.Resampling.BICUBIC)
    return turned.crop((w // 6, h // 6, w - w // 6, h - h // 6))


Edit = tuple[Callable[[Image.Image], Image.Image], int]  # the change, and the JPEG quality

LIGHT_EDITS: dict[str, Edit] = {
    "crop": (_crop, 90),
    "resize": (_resize, 90),
    "jpeg30": (lambda img: img, 30),
    "flip": (ImageOps.mirror, 90),
    "rotate5": (_rotate, 90),
}
HARD_EDITS: dict[str, Edit] = {
    "quarter": (_quarter, 90),
    "small_grey": (_small_grey, 75),
    "mirror_turned15": (_mirror_turned, 85),
}
EDITS: dict[str, Edit] = {**LIGHT_EDITS, **HARD_EDITS}


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Write unless the file already holds these bytes: a second demo run finds nothing new."""
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_demo_corpus(folder: Path) -> tuple[Path, Path]:
    """Write the corpus under folder/images and its grounding set; return both paths."""
    images = folder / DEMO_IMAGES_DIR
    rows = []
    for name in PHOTOS:
        photo = demo_photo(name)
        _write(images / name / "original.png", _png(photo))
        rows.append((name, f"{name}/original.png", "original"))
        for edit, (apply, quality) in EDITS.items():
            _write(images / name / f"{edit}.jpg", _jpeg(apply(photo), quality))
            rows.append((name, f"{name}/{edit}.jpg", edit))
    broken = _jpeg(demo_photo("coffee"), 90)
    _write(images / "broken" / "truncated.jpg", broken[: len(broken) // 3])
    grounding = folder / DEMO_GROUNDING_FILE
    grounding.write_text(format_grounding(rows))
    return images, grounding

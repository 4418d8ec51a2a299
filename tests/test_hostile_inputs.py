"""Hostile and odd files in the pipeline: a corpus generated here from Pillow, numpy and real
photos (truncated and corrupt JPEG/PNG, empty files, text and HTML named .jpg, a decompression
bomb, a 20,000-pixel-wide image, 16-bit and CMYK TIFF, palette PNG with transparency, animated
GIF, EXIF-rotated photos, SVG, symlinks that work, dangle and loop, a file and a folder without
read permission, names with spaces, unicode, quotes, a newline and a leading dash) is run through
the real `vsearch materialize` in a subprocess. Every file ends in the manifest as usable or with
its reason, the run succeeds, the usable ones are embedded, hashed and searchable, and the
process's peak memory stays under a stated bound.

Permissions: the tests run as root, who reads anything. So the materialization runs under
`setpriv --bounding-set=-dac_override,-dac_read_search` (util-linux): still uid 0, owner of every
file it writes, but without the capabilities that let root ignore a file's mode, so a file with
mode 000 is as unreadable to it as to anyone else.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import free_port, wait_until_served
from PIL import Image, ImageOps

from vsearch_pipeline.core.model_spec import DEFAULT_KEY

pytestmark = pytest.mark.slow

VSEARCH = str(Path(sys.executable).parent / "vsearch")
PEAK_RSS_BOUND_MB = 4096  # the whole materialization: Python, Dagster, torch, ONNX Runtime, decoding
ADDRESS_SPACE_LIMIT = 12 * 2**30  # of each process run under test: torch's libraries map ~5 GB
WIDE = (20_000, 1_500)  # 30 M pixels: under max_pixels, so it must be used, not refused
BOMB_SIDE = 30_000  # 900 M pixels declared in a 100 kB PNG
CLASSES = ("Faces_easy", "Leopards", "Motorbikes", "airplanes", "watch")
PER_CLASS = 4
DROP_READ_CAPS = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@dataclass(frozen=True)
class Planted:
    """One generated file: its kind and the manifest status it must end with."""

    path: str  # relative to the corpus root
    kind: str
    statuses: tuple[str, ...]  # acceptable statuses ("ok" or the reason's status)


def _photos(shared: Path) -> list[Path]:
    return [p for name in CLASSES
            for p in sorted((shared / "caltech101" / name).glob("*.jpg"))[:PER_CLASS + 36]]


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=92, **kwargs)
    return out.getvalue()


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int) -> bytes:
    """A valid 1-bit PNG of side x side pixels, all black: ~100 kB on disk, 900 M pixels decoded."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def raw_png(pixels: np.ndarray, colour_type: int, bit_depth: int) -> bytes:
    """A PNG written by hand from `pixels` (rows x columns [x channels] of samples), for the
    colour types and bit depths Pillow does not write itself (16-bit RGB and RGBA, 2- and 4-bit
    grey). Samples are packed big-endian at `bit_depth` bits, each row after its filter byte."""
    rows, columns = pixels.shape[:2]
    flat = pixels.reshape(rows, -1).astype(np.uint16)
    if bit_depth == 16:
        packed = flat.astype(">u2").view(np.uint8).reshape(rows, -1)
    elif bit_depth == 8:
        packed = flat.astype(np.uint8)
    else:
        bits = np.unpackbits(flat.astype(np.uint8)[..., None], axis=-1)[..., 8 - bit_depth:]
        packed = np.packbits(bits.reshape(rows, -1), axis=-1)
    body = b"".join(b"\x00" + row.tobytes() for row in packed)
    header = struct.pack(">IIBBBBB", columns, rows, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(body, 9)) + _png_chunk(b"IEND", b""))


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))  # (x0, y0, dx, dy) of the seven passes of an interlaced PNG


def interlaced_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG written Adam7-interlaced (Pillow reads these but cannot write them):
    each pass is the sub-image at its offset and step, rows after their filter byte."""
    rows, columns = rgb.shape[:2]
    body = b""
    for x0, y0, dx, dy in ADAM7:
        part = rgb[y0::dy, x0::dx].astype(np.uint8)
        body += b"".join(b"\x00" + row.tobytes() for row in part) if part.size else b""
    header = struct.pack(">IIBBBBB", columns, rows, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(body, 9)) + _png_chunk(b"IEND", b""))


def every_png_kind(photo: Callable[[], Image.Image]) -> dict[str, bytes]:
    """Photos in every PNG colour type at every bit depth the format allows (PNG spec 11.2.2),
    and interlaced; a photo of its own for each, so that each file must find itself."""
    alpha = np.tile(np.linspace(0, 255, 96, dtype=np.uint16), (64, 1))

    def grey() -> np.ndarray:
        return np.asarray(photo().resize((96, 64)).convert("L"), dtype=np.uint16)

    def rgb() -> np.ndarray:
        return np.asarray(photo().resize((96, 64)), dtype=np.uint16)

    files = {f"grey{depth}.png": raw_png(grey() >> (8 - depth), 0, depth) for depth in (1, 2, 4)}
    files["grey8.png"] = raw_png(grey(), 0, 8)
    files["grey16.png"] = raw_png(grey() * 257, 0, 16)
    files["rgb8.png"] = raw_png(rgb(), 2, 8)
    files["rgb16.png"] = raw_png(rgb() * 257, 2, 16)
    files["grey_alpha8.png"] = raw_png(np.dstack([grey(), alpha]), 4, 8)
    files["grey_alpha16.png"] = raw_png(np.dstack([grey(), alpha]) * 257, 4, 16)
    files["rgba8.png"] = raw_png(np.dstack([rgb(), alpha]), 6, 8)
    files["rgba16.png"] = raw_png(np.dstack([rgb(), alpha]) * 257, 6, 16)
    for bits in (1, 2, 4, 8):
        palette = photo().resize((96, 64)).convert("P", palette=Image.Palette.ADAPTIVE,
                                                   colors=2 ** bits)
        files[f"palette{bits}.png"] = _encode(palette, "PNG", bits=bits)
    files["interlaced_rgb8.png"] = interlaced_png(np.asarray(photo().resize((97, 61))))
    return files


def ycck_jpeg(photo: Image.Image) -> bytes:
    """A CMYK JPEG whose Adobe APP14 marker says its samples are YCCK (transform 2), as
    Photoshop writes them: decoders must convert, not take the channels as CMYK."""
    data = bytearray(_encode(photo.convert("CMYK"), "JPEG", quality=90))
    adobe = data.find(b"Adobe")
    assert data[adobe - 4:adobe - 2] == b"\xff\xee"  # Pillow marks CMYK JPEGs with APP14
    data[adobe + 11] = 2  # after "Adobe": version, flags0 and flags1 (2 bytes each), transform
    return bytes(data)


CJPEG_KINDS = {"arithmetic": ["-arithmetic"],  # what Pillow cannot write, by cjpeg's options
               "arithmetic_progressive": ["-arithmetic", "-progressive"],
               "restart_every_row": ["-restart", "1"], "grey": ["-grayscale"],
               "smoothed_optimized": ["-smooth", "50", "-optimize"]}


def cjpeg(photo: Image.Image, options: list[str], work: Path) -> bytes | None:
    """`photo` as a JPEG written by libjpeg-turbo's cjpeg with `options`; None where cjpeg is
    not installed (.ci/run installs it)."""
    if shutil.which("cjpeg") is None:
        return None
    work.mkdir(parents=True, exist_ok=True)
    photo.save(work / "in.ppm")
    subprocess.run(["cjpeg", *options, "-outfile", str(work / "out.jpg"), str(work / "in.ppm")],
                   check=True)
    return (work / "out.jpg").read_bytes()


def odd_tags_tiff(photo: Image.Image) -> bytes:
    """A 16-bit grey, deflate-compressed TIFF carrying private, undefined and oversized tags."""
    from PIL.TiffImagePlugin import ImageFileDirectory_v2

    grey16 = np.asarray(photo.convert("L").resize((120, 90)), dtype=np.uint16) * 257
    tags = ImageFileDirectory_v2()
    tags[65000] = "a private tag"  # from the private range
    tags[270] = "description " * 2000  # ImageDescription, 24 kB
    tags.tagtype[65001] = 7  # UNDEFINED bytes
    tags[65001] = bytes(range(256)) * 4
    return _encode(Image.fromarray(grey16), "TIFF", tiffinfo=tags, compression="tiff_adobe_deflate")


def text_bomb_png(photo: Image.Image) -> bytes:
    """A small PNG with a zTXt chunk that inflates to 64 MB of text (Pillow caps text chunks)."""
    png = _encode(photo.resize((64, 48)), "PNG")
    text = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b" " * (64 << 20), 9))
    end = png.rindex(b"IEND") - 4
    return png[:end] + text + png[end:]


def strip(width: int, height: int) -> bytes:
    """A width x height picture of one colour: a 1 x 100,000 one is 475 bytes."""
    return _encode(Image.new("RGB", (width, height), (180, 40, 40)), "PNG")


def wide_image() -> Image.Image:
    """A smooth 20,000-pixel-wide picture (gradients compress well, noise would not)."""
    x = np.linspace(0, 255, WIDE[0], dtype=np.float32)
    y = np.linspace(0, 255, WIDE[1], dtype=np.float32)[:, None]
    rgb = np.stack([np.broadcast_to(x, (WIDE[1], WIDE[0])), np.broadcast_to(y, (WIDE[1], WIDE[0])),
                    (x[None, :] + y) / 2], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def exif_rotated(upright: Image.Image) -> bytes:
    """A JPEG whose pixels lie on their side, with EXIF orientation 6 saying how to stand it up."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = _jpeg(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert shown.size == upright.size  # the file really does stand up as `upright`
    return data


def _corrupt_middle(data: bytes, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    middle = len(data) // 2
    garbage = rng.integers(0, 256, 512, dtype=np.uint8).tobytes()
    return data[:middle] + garbage + data[middle + 512:]


def build_hostile_corpus(shared: Path, root: Path) -> list[Planted]:
    """Write the corpus under `root`; return what was planted and the statuses it may get."""
    photos = iter(_photos(shared))
    planted: list[Planted] = []

    def put(path: str, data: bytes, kind: str, *statuses: str) -> Path:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        planted.append(Planted(path, kind, statuses))
        return target

    def photo() -> Image.Image:
        return Image.open(next(photos)).convert("RGB")

    for name in CLASSES:  # normal photos, grouped by class
        for i in range(PER_CLASS):
            source = next(photos)
            put(f"normal/{name}/{i:02d}.jpg", source.read_bytes(), "normal photo", "ok")

    whole_jpeg, whole_png = _jpeg(photo()), _encode(photo(), "PNG")
    put("broken/truncated.jpg", whole_jpeg[: len(whole_jpeg) // 2], "truncated JPEG", "corrupt")
    put("broken/truncated.png", whole_png[: len(whole_png) // 2], "truncated PNG", "corrupt")
    put("broken/header_only.jpg", whole_jpeg[:200], "truncated JPEG", "corrupt")
    # Garbage inside JPEG entropy data often still decodes (to a smeared picture); either is fine,
    # as long as the file is used only when it decodes.
    put("broken/garbage_inside.jpg", _corrupt_middle(whole_jpeg, 1), "corrupt-middle JPEG",
        "ok", "corrupt")
    put("broken/garbage_inside.png", _corrupt_middle(whole_png, 2), "corrupt-middle PNG", "corrupt")
    put("broken/empty.jpg", b"", "zero-byte file", "empty")
    put("broken/empty.png", b"", "zero-byte file", "empty")
    put("broken/notes.jpg", b"these are my holiday notes, not a picture\n" * 20,
        "text named .jpg", "not_image")
    put("broken/page.jpg", b"<!DOCTYPE html><html><body><img src='x.jpg'></body></html>\n",
        "HTML named .jpg", "not_image")
    put("broken/drawing.svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
        b'width="100" height="100"><circle cx="50" cy="50" r="40" fill="red"/></svg>\n',
        "SVG", "unsupported_format")
    put("broken/bomb.png", bomb_png(BOMB_SIDE), "decompression bomb", "too_large")

    put("odd/wide.png", _encode(wide_image(), "PNG"), "20,000-pixel-wide image", "ok")
    put("odd/wide.jpg", _jpeg(wide_image()), "20,000-pixel-wide image", "ok")
    grey16 = (np.linspace(0, 65535, 300 * 200).reshape(200, 300)).astype(np.uint16)
    put("odd/grey16.tif", _encode(Image.fromarray(grey16), "TIFF"), "16-bit TIFF", "ok")
    put("odd/cmyk.tif", _encode(photo().convert("CMYK"), "TIFF"), "CMYK TIFF", "ok")
    put("odd/cmyk.jpg", _encode(photo().convert("CMYK"), "JPEG"), "CMYK JPEG", "ok")
    palette = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    put("odd/palette_transparent.png", _encode(palette, "PNG", transparency=0),
        "palette PNG with transparency", "ok")
    frames = [photo().resize((160, 120)) for _ in range(3)]
    put("odd/animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                    duration=100, loop=0), "animated GIF", "ok")

    for name, data in every_png_kind(photo).items():
        put(f"png_kinds/{name}", data, "PNG colour type and bit depth", "ok")
    put("jpeg_kinds/progressive.jpg", _jpeg(photo(), progressive=True), "progressive JPEG", "ok")
    put("jpeg_kinds/ycck.jpg", ycck_jpeg(photo()), "YCCK JPEG (Adobe transform 2)", "ok")
    put("jpeg_kinds/subsampled_420_q5.jpg", _encode(photo(), "JPEG", subsampling=2, quality=5),
        "JPEG at quality 5", "ok")
    for name, options in CJPEG_KINDS.items():
        data = cjpeg(photo(), options, root.parent / "cjpeg")
        if data is not None:
            put(f"jpeg_kinds/{name}.jpg", data, f"cjpeg {' '.join(options)}", "ok")
    put("formats/photo.avif", _encode(photo(), "AVIF", quality=60), "AVIF", "ok")
    put("formats/lossless_alpha.webp", _encode(photo().convert("RGBA"), "WEBP", lossless=True),
        "lossless WebP with alpha", "ok")
    put("formats/multipage.tif", _encode(photo(), "TIFF", save_all=True, compression="tiff_lzw",
                                         append_images=[photo()]), "two-page LZW TIFF", "ok")
    put("formats/float.tif", _encode(Image.fromarray(np.linspace(0, 1, 96 * 64, dtype=np.float32)
                                                     .reshape(64, 96)), "TIFF"),
        "32-bit float TIFF", "ok")
    put("formats/one_bit.bmp", _encode(photo().convert("1"), "BMP"), "1-bit BMP", "ok")
    put("formats/heic_header.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
        + bytes(400), "HEIC (no decoder here)", "unsupported_format")
    put("formats/jxl_codestream.jxl", b"\xff\x0a\xfa\x7f\x01\x90\x08" + bytes(400),
        "JPEG XL (no decoder here)", "unsupported_format")
    put("odd/odd_tags16.tif", odd_tags_tiff(photo()), "16-bit TIFF with odd tags", "ok")
    webp_frames = [photo().resize((120, 90)) for _ in range(3)]
    put("odd/animated.webp", _encode(webp_frames[0], "WEBP", save_all=True,
                                     append_images=webp_frames[1:], duration=80),
        "animated WebP", "ok")
    put("odd/text_bomb.png", text_bomb_png(photo()), "PNG with a 64 MB zTXt chunk", "ok",
        "corrupt")
    put("odd/pixel.png", strip(1, 1), "1-pixel image", "ok")
    put("odd/pixel.gif", _encode(Image.new("P", (1, 1)), "GIF"), "1-pixel GIF", "ok")
    put("odd/strip_1x100.png", strip(1, 100), "1 x 100 strip (at the aspect limit)", "ok")
    put("odd/strip_100x1.jpg", _jpeg(Image.new("RGB", (100, 1), (40, 40, 180))),
        "100 x 1 JPEG strip", "ok")
    for width, height in ((1, 100_000), (100_000, 1), (1, 10_000), (2, 500)):
        put(f"broken/strip_{width}x{height}.png", strip(width, height),
            f"{width} x {height} strip", "bad_aspect")
    put("broken/image.tga", _encode(photo(), "TGA"), "TGA (Pillow opens, not supported)",
        "unsupported_format")

    upright = photo()
    put("exif/upright.jpg", _jpeg(upright), "EXIF reference (upright)", "ok")
    put("exif/rotated_exif6.jpg", exif_rotated(upright), "EXIF-rotated photo", "ok")
    put("exif/sideways_no_exif.jpg", _jpeg(upright.transpose(Image.Transpose.ROTATE_90)),
        "EXIF reference (sideways)", "ok")

    for name in ("my holiday photo.jpg", "café_日本_фото.jpg", "it's \"quoted\".jpg",
                 "new\nline.jpg", "-rf.jpg", "100% #1?.jpg"):
        put(f"names/{name}", _jpeg(photo()), "odd file name", "ok")

    target = root / "normal" / CLASSES[0] / "00.jpg"
    links = root / "links"
    links.mkdir()
    (links / "to_photo.jpg").symlink_to(target)
    planted.append(Planted("links/to_photo.jpg", "symlink to an image", ("ok",)))
    (links / "dangling.jpg").symlink_to(root / "no" / "such.jpg")
    planted.append(Planted("links/dangling.jpg", "dangling symlink", ("unreadable",)))
    (links / "loop_a.jpg").symlink_to(links / "loop_b.jpg")
    (links / "loop_b.jpg").symlink_to(links / "loop_a.jpg")
    planted += [Planted(f"links/loop_{x}.jpg", "symlink loop", ("unreadable",)) for x in "ab"]
    (links / "folder_loop").symlink_to(root, target_is_directory=True)  # a folder holding itself

    os.mkfifo(root / "broken" / "pipe.jpg")  # reading it would wait for a writer forever
    planted.append(Planted("broken/pipe.jpg", "named pipe named .jpg", ("unreadable",)))
    put("locked/no_read.jpg", _jpeg(photo()), "file without read permission",
        "unreadable").chmod(0)
    (root / "locked_folder").mkdir()
    (root / "locked_folder" / "inside.jpg").write_bytes(_jpeg(photo()))
    (root / "locked_folder").chmod(0)  # its files cannot be listed: the folder is the entry
    planted.append(Planted("locked_folder", "folder without read permission", ("unreadable",)))
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skipped.jpg").write_bytes(_jpeg(photo()))  # hidden: not collected
    return planted


# Runs argv[2:] under an address-space limit and writes its peak resident memory (MB) to
# argv[1]. A child's ru_maxrss starts at the high-water mark of the process that spawned it
# (Linux records the old memory map's peak at exec, and a vfork child's old map is its parent's),
# so a child spawned by pytest straight away would report pytest's own peak; spawned by this
# small process, it reports its own. The limit makes a regression (a 1 x 100,000 strip once took
# the run to 17.7 GB) fail the run instead of exhausting the machine.
PEAK_MEMORY_OF = f"""
import os, resource, subprocess, sys
limit = {ADDRESS_SPACE_LIMIT}
child = subprocess.Popen(sys.argv[2:],
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
_, status, usage = os.wait4(child.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss / 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _materialize(corpus: Path, home: Path) -> dict:
    """`vsearch materialize` in a child process (without the capabilities that let root read a
    mode-000 file); its exit status, output and peak resident memory."""
    env = {**os.environ, "VSEARCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    command = [VSEARCH, "materialize", "--home", str(home), "--source", str(corpus)]
    if os.geteuid() == 0:
        command = DROP_READ_CAPS + command
    out, err, peak = (home.parent / name for name in ("stdout.txt", "stderr.txt", "peak_mb.txt"))
    with out.open("wb") as stdout, err.open("wb") as stderr:
        done = subprocess.run([sys.executable, "-c", PEAK_MEMORY_OF, str(peak), *command],
                              stdout=stdout, stderr=stderr, env=env, cwd=home.parent)
    return {"returncode": done.returncode, "stdout": out.read_text(), "stderr": err.read_text(),
            "peak_rss_mb": float(peak.read_text())}


def test_the_measured_peak_is_the_childs_own_not_pytests(tmp_path):
    """A child that holds 300 MB reports about that, though pytest has just held a gigabyte more
    than it ever had: spawned straight from pytest it would report pytest's peak."""
    ballast = np.ones(2**27)  # 1 GiB, written, so resident
    ballast.sum()
    del ballast
    peak = tmp_path / "peak.txt"
    hold = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    subprocess.run([sys.executable, "-c", PEAK_MEMORY_OF, str(peak), sys.executable, "-c", hold],
                   check=True)
    assert 300 < float(peak.read_text()) < 600


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root needs setpriv (util-linux) to make a file unreadable")
    root = tmp_path_factory.mktemp("hostile")
    corpus, home = root / "corpus", root / "home"
    planted = build_hostile_corpus(shared_data, corpus)
    run = _materialize(corpus, home)
    manifest = pq.read_table(home / "artifacts" / "manifest" / "b00001.parquet").to_pylist()
    yield {"corpus": corpus, "home": home, "planted": planted, "run": run,
           "manifest": {r["path"]: r for r in manifest}}
    for locked in (corpus / "locked_folder", corpus / "locked" / "no_read.jpg"):
        locked.chmod(0o700)  # so that the temporary folder can be cleaned up by anyone


def _usable(hostile: dict) -> dict[str, str]:
    """path -> id of every file the manifest calls usable."""
    return {p: r["id"] for p, r in hostile["manifest"].items() if r["status"] == "ok"}


def test_the_run_succeeds_and_no_step_fails(hostile):
    run = hostile["run"]
    assert run["returncode"] == 0, run["stderr"][-4000:]
    from dagster import DagsterInstance, DagsterRunStatus

    instance = DagsterInstance.from_config(str(hostile["home"] / "dagster"))
    runs = instance.get_run_records()
    assert len(runs) == 2  # process_batch b00001, then refresh_collection
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs)
    failures = [e for r in runs for e in instance.all_logs(r.dagster_run.run_id)
                if e.is_dagster_event and e.dagster_event.is_step_failure]
    assert not failures
    assert "Traceback" not in run["stderr"]


def test_every_file_ends_in_the_manifest_as_usable_or_with_its_reason(hostile):
    manifest, planted = hostile["manifest"], hostile["planted"]
    print(f"\n{'file':<36} {'kind':<32} {'status':<18} reason")
    for p in planted:
        row = manifest.get(p.path, {})
        print(f"{p.path!r:<36} {p.kind:<32} {row.get('status', 'MISSING'):<18} "
              f"{(row.get('reason') or '')[:90]}")
    assert {p.path for p in planted} == set(manifest)  # nothing missing, nothing extra
    wrong = {p.path: manifest[p.path]["status"] for p in planted
             if manifest[p.path]["status"] not in p.statuses}
    assert not wrong
    for row in manifest.values():
        assert (row["status"] == "ok") == (row["reason"] is None)
        assert row["status"] == "ok" or len(row["reason"]) > 10
    kinds = Counter(p.kind for p in planted)
    statuses = Counter(r["status"] for r in manifest.values())
    hostile_files = len(planted) - kinds["normal photo"]
    print(f"files: {len(planted)} ({hostile_files} hostile or odd, {kinds['normal photo']} normal "
          f"photos); by kind: {dict(kinds)}")
    print(f"manifest statuses: {dict(sorted(statuses.items()))}")
    assert statuses["ok"] >= kinds["normal photo"] + 10
    assert set(statuses) >= {"ok", "corrupt", "empty", "not_image", "unsupported_format",
                             "too_large", "unreadable"}


def test_odd_but_valid_images_are_measured_right(hostile):
    manifest = hostile["manifest"]
    assert (manifest["odd/wide.png"]["width"], manifest["odd/wide.png"]["height"]) == WIDE
    assert manifest["odd/wide.jpg"]["format"] == "JPEG"
    assert manifest["odd/grey16.tif"]["format"] == "TIFF"
    assert manifest["odd/animated.gif"]["format"] == "GIF"
    rotated, upright = manifest["exif/rotated_exif6.jpg"], manifest["exif/upright.jpg"]
    assert (rotated["width"], rotated["height"]) == (upright["width"], upright["height"])
    assert manifest["links/to_photo.jpg"]["id"] == manifest[f"normal/{CLASSES[0]}/00.jpg"]["id"]
    assert "decompression bomb" in manifest["broken/bomb.png"]["reason"]
    assert "Permission denied" in manifest["locked/no_read.jpg"]["reason"]
    assert "could not be listed" in manifest["locked_folder"]["reason"]
    assert "named pipe" in manifest["broken/pipe.jpg"]["reason"]
    assert not any(path.startswith(".hidden") for path in manifest)


def _embedded(home: Path) -> dict[str, np.ndarray]:
    shard = pq.read_table(home / "artifacts" / "embeddings" / DEFAULT_KEY / "b00001.parquet")
    return {i: np.asarray(v, dtype=np.float32)
            for i, v in zip(shard.column("id").to_pylist(), shard.column("vector").to_pylist(),
                            strict=True)}


def test_usable_images_are_embedded_hashed_and_indexed(hostile):
    usable = set(_usable(hostile).values())
    vectors = _embedded(hostile["home"])
    assert set(vectors) == usable
    assert all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-3 for v in vectors.values())
    hashes = pq.read_table(hostile["home"] / "artifacts" / "hashes" / "b00001.parquet")
    assert set(hashes.column("id").to_pylist()) == usable
    assert None not in hashes.column("phash").to_pylist()
    index = next((hostile["home"] / "artifacts" / "index" / DEFAULT_KEY).iterdir())
    assert set(pq.read_table(index / "ids.parquet").column("id").to_pylist()) == usable
    print(f"\nusable: {len(usable)} distinct images, all embedded, hashed and indexed")


def test_every_usable_file_finds_itself_first(hostile):
    from vsearch_pipeline.core.catalog import latest_index
    from vsearch_pipeline.core.storage import ArtifactStore
    from vsearch_pipeline.search import Searcher

    store = ArtifactStore(str(hostile["home"] / "artifacts"))
    searcher = Searcher.from_build(store, latest_index(store, DEFAULT_KEY))
    misses = {}
    for path, image_id in _usable(hostile).items():
        results = searcher.by_image((hostile["corpus"] / path).read_bytes(), 5)
        # found: first, or tied with the first (the 1-pixel image and the 1 x 100 strip of the
        # same colour are the same picture once squashed to the network's square)
        tied = [r["id"] for r in results if r["score"] >= results[0]["score"] - 1e-4]
        if image_id not in tied and results[0]["score"] < 0.999:
            misses[path] = results[0]
    assert not misses
    print(f"\nsearch by upload: {len(_usable(hostile))} usable files, each found itself first")


def test_exif_rotated_photo_is_embedded_upright(hostile):
    ids = _usable(hostile)
    vectors = _embedded(hostile["home"])
    rotated = vectors[ids["exif/rotated_exif6.jpg"]]
    upright = float(rotated @ vectors[ids["exif/upright.jpg"]])
    sideways = float(rotated @ vectors[ids["exif/sideways_no_exif.jpg"]])
    print(f"\nEXIF-rotated vs upright: cosine {upright:.4f}; vs the same pixels without EXIF: "
          f"{sideways:.4f}")
    assert upright > 0.97 and upright > sideways + 0.05


def test_peak_memory_of_the_run_stays_bounded(hostile):
    peak = hostile["run"]["peak_rss_mb"]
    print(f"\npeak resident memory of `vsearch materialize` over the hostile corpus: {peak:.0f} MB "
          f"(bound {PEAK_RSS_BOUND_MB} MB; the {BOMB_SIDE:,} x {BOMB_SIDE:,} bomb decoded to RGB "
          f"would take {3 * BOMB_SIDE ** 2 / 1e9:.1f} GB)")
    assert peak < PEAK_RSS_BOUND_MB


@pytest.mark.usefixtures("s3_credentials")
def test_the_same_files_from_an_s3_bucket_get_the_same_statuses(hostile, s3_endpoint, tmp_path):
    """The regular files of the corpus (S3 has no links, pipes or permissions per object) as
    objects of a bucket on a real S3 server, keys with spaces, quotes, unicode, '%', '#' and '?'
    included (not the newline, which moto refuses): the same status for every file as from the
    folder."""
    import boto3

    from vsearch_pipeline.runner import run_pipeline
    from vsearch_pipeline.settings import load_settings

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="hostile")
    regular = [p.path for p in hostile["planted"] if p.statuses != ("unreadable",)
               and not p.path.startswith("links/") and "\n" not in p.path]
    for path in regular:
        client.put_object(Bucket="hostile", Key=f"corpus/{path}",
                          Body=(hostile["corpus"] / path).read_bytes())
    home = tmp_path / "home"
    settings = load_settings(home, {"source": {"uri": "s3://hostile/corpus",
                                               "endpoint_url": s3_endpoint}})
    assert run_pipeline(home, settings, say=print)["success"]
    rows = pq.read_table(home / "artifacts" / "manifest" / "b00001.parquet").to_pylist()
    from_s3 = {r["path"]: (r["status"], r["id"]) for r in rows}
    from_folder = {p: (hostile["manifest"][p]["status"], hostile["manifest"][p]["id"])
                   for p in regular}
    assert from_s3 == from_folder
    statuses = Counter(status for status, _ in from_s3.values())
    print(f"\nfrom S3: {len(regular)} objects, statuses {dict(sorted(statuses.items()))}")
    assert set(_embedded(home)) == {i for status, i in from_s3.values() if status == "ok"}


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def _peak_rss_mb(pid: int) -> float:
    """The high-water mark of a running process's resident memory (its own: VmHWM is per
    memory map, unlike a child's ru_maxrss)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def test_the_service_answers_every_file_without_a_500_in_bounded_memory(hostile, tmp_path):
    """Every regular file of the corpus uploaded to `/search` of a real `vsearch serve` on the
    corpus's home, and every indexed image's thumbnail, the service under the address-space
    limit: usable files are searched, the rest refused with a 4xx and their reason (a strip past
    100:1 from its header, 422), never a 500; the service's peak memory stays bounded. A 1 x
    100,000 PNG once took the service past 4 GB in 6 s."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen(
        [VSEARCH, "serve", "--home", str(hostile["home"]), "--port", str(port)], stdout=log,
        stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        preexec_fn=_limit_address_space)
    regular = [p for p in hostile["planted"] if p.statuses != ("unreadable",)
               and not p.path.startswith("links/")]
    codes: dict[str, tuple[str, int, str]] = {}
    try:
        wait_until_served(base, lambda: server.poll() is None)
        with httpx.Client(base_url=base, timeout=120) as http:
            for planted in regular:
                data = (hostile["corpus"] / planted.path).read_bytes()
                answer = http.post("/search", data={"k": "3"},
                                   files={"file": ("upload", data, "application/octet-stream")})
                status = hostile["manifest"][planted.path]["status"]
                codes[planted.path] = (status, answer.status_code, answer.text[:160])
            thumbnails = {size: [http.get(f"/images/{image_id}/thumbnail",
                                          params={"size": size}).status_code
                                 for image_id in set(_usable(hostile).values())]
                          for size in (16, 1024)}
            assert http.get("/health").status_code == 200
        peak = _peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    for path, (status, code, body) in sorted(codes.items()):
        print(f"{path!r:<40} {status:<18} {code} {body[:90]}")
    print(f"service peak resident memory: {peak:.0f} MB")
    assert all(code == 200 for status, code, _ in codes.values() if status == "ok")
    assert all(400 <= code < 500 for status, code, _ in codes.values() if status != "ok")
    for path in ("broken/drawing.svg", "formats/heic_header.heic", "formats/jxl_codestream.jxl"):
        assert codes[path][1] == 415 and "(unsupported_format)" in codes[path][2]
    strips = [(code, body) for status, code, body in codes.values() if status == "bad_aspect"]
    assert len(strips) == 4 and all(code == 422 and "100:1" in body for code, body in strips)
    assert all(code == 200 for codes_at in thumbnails.values() for code in codes_at)
    assert peak < PEAK_RSS_BOUND_MB


def test_the_command_line_search_refuses_what_is_not_usable_in_one_line(hostile):
    """`vsearch search FILE` with a strip: one line with the reason, no traceback, a failing
    exit status."""
    done = subprocess.run([VSEARCH, "search", str(hostile["corpus"] / "broken/strip_1x100000.png"),
                           "--home", str(hostile["home"])], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          preexec_fn=_limit_address_space)
    assert done.returncode == 1
    assert "is not a usable image (bad_aspect)" in done.stderr
    assert "Traceback" not in done.stderr

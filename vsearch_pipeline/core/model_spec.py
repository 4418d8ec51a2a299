"""Model names and what identifies a model's vectors, without importing torch (cheap to load)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

DEFAULT_MODEL = "efficientnet-lite0"
PRECISIONS = ("fp32", "bf16")
DEVICES = ("cpu", "cuda")
OPEN_CLIP_PREFIX = "open_clip:"
# What of the image the network sees, and how its feature map becomes one vector. `centre_crop`
# resizes the shorter side to 256 and keeps the centre 224 x 224 square, throwing the sides away
# (average pooling); the other views squash the whole image to 224 x 224 and differ only in the
# pooling of the one feature map that pass gives: `whole` averages it, `regions` (the default model's
# default) GeM-pools it over nine regions at three scales (R-MAC), `centre_region` averages its
# centre. The default model's near-duplicate vectors are `centre_region`, pooled from the same pass
# as the search vectors: one network pass per image gives both (docs/search-quality.md has the
# figures). Views other than `centre_crop` need the default model (its feature map is pooled here).
VIEWS = ("centre_crop", "whole", "regions", "centre_region")
SQUASHED_VIEWS = ("whole", "regions", "centre_region")  # one squashing resize, pooled three ways
LEGACY_VIEW = "centre_crop"  # what vectors without a recorded view were made with


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a model's vectors: two specs with the same key give the same vectors."""

    name: str
    pretrained: str | None = None
    view: str | None = None  # None: the model's default view (`default_view`)
    # The network run in int8 (static quantization, vsearch_pipeline.core.lite0); None: the
    # model's default (`default_int8`). Int8 vectors are other vectors: they have their own key.
    int8: bool | None = None

    def __post_init__(self) -> None:
        if self.view is None:
            object.__setattr__(self, "view", default_view(self.name))
        if self.int8 is None:
            object.__setattr__(self, "int8", default_int8(self.name))

    @property
    def key(self) -> str:
        """A file-name-safe identity, used to keep each model's embeddings apart. The legacy
        centre-crop view keeps the keys that vectors were stored under before views existed."""
        parts = [self.name.replace(OPEN_CLIP_PREFIX, "open_clip-")]
        if self.pretrained:
            parts.append(pretrained_label(self.pretrained))
        if self.view != LEGACY_VIEW:
            parts.append(self.view)
        if self.int8:
            parts.append("int8")
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))

    @property
    def copy_spec(self) -> ModelSpec:
        """The same model seeing the copy view: the vectors near-duplicate detection reads."""
        return replace(self, view=copy_view(self.name, self.view))


def default_view(name: str) -> str:
    """`regions` for the default model; open_clip models keep the centre crop they were trained
    with (the other views pool a convolutional feature map)."""
    return "regions" if name == DEFAULT_MODEL else LEGACY_VIEW


def copy_view(name: str, view: str) -> str:
    """The view near-duplicate detection reads: for a squashed view of the default model the
    centre of the same feature map (no second pass), else the centre crop."""
    return "centre_region" if name == DEFAULT_MODEL and view in SQUASHED_VIEWS else LEGACY_VIEW


def default_int8(name: str) -> bool:
    """The default model runs in int8 by default: EfficientNet-Lite was designed for it (ReLU6,
    no squeeze-excitation), and it keeps the retrieval figures of fp32 at twice the speed."""
    return name == DEFAULT_MODEL


def pretrained_label(pretrained: str) -> str:
    if os.path.isfile(pretrained):
        return f"ckpt-{file_sha256(pretrained)[:12]}"
    return pretrained


def file_sha256(path: str) -> str:
    """SHA-256 of a file, remembered while its size and modification time stay the same."""
    stat = os.stat(path)
    return _sha256_of(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def validate_settings(spec: ModelSpec, device: str, precision: str) -> None:
    """Fail before any work with a message that names the setting and the allowed values."""
    if spec.name != DEFAULT_MODEL and not spec.name.startswith(OPEN_CLIP_PREFIX):
        raise ValueError(
            f"model.name {spec.name!r} is unknown: use {DEFAULT_MODEL!r} or "
            f"'{OPEN_CLIP_PREFIX}<architecture>' (for example 'open_clip:ViT-B-32')"
        )
    if spec.name.startswith(OPEN_CLIP_PREFIX):
        arch = spec.name.removeprefix(OPEN_CLIP_PREFIX)
        if arch not in open_clip_architectures():
            raise ValueError(f"model.name: open_clip has no architecture {arch!r}")
        if not spec.pretrained:
            raise ValueError(
                "model.pretrained is required for open_clip models: an open_clip tag, "
                "a checkpoint file path, or 'random'"
            )
    if spec.view not in VIEWS:
        raise ValueError(f"model.view must be one of {VIEWS}, got {spec.view!r}")
    if spec.view not in ("centre_crop", "whole") and spec.name != DEFAULT_MODEL:
        raise ValueError(f"model.view {spec.view!r} pools a convolutional feature map: use it with "
                         f"{DEFAULT_MODEL!r}, or view 'whole' or 'centre_crop' with {spec.name!r}")
    if spec.int8 and spec.name != DEFAULT_MODEL:
        raise ValueError(f"model.int8 runs only {DEFAULT_MODEL!r}; set it to false for {spec.name!r}")
    if device not in DEVICES:
        raise ValueError(f"model.device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not _cuda_available():
        raise ValueError("model.device is 'cuda' but no CUDA device is available")
    if precision not in PRECISIONS:
        raise ValueError(f"model.precision must be one of {PRECISIONS}, got {precision!r}")
    if spec.int8 and (device != "cpu" or precision != "fp32"):
        raise ValueError("model.int8 runs on the CPU, with precision 'fp32' for the layers left in "
                         "float; set model.int8 to false for another device or precision")


def open_clip_architectures() -> list[str]:
    """What `open_clip.list_models()` returns, read from open_clip's packaged configs without
    importing it: the import takes torch and every model module (over 20 s measured on 2 cores),
    and this runs on every settings load. list_models() is the names of the model_configs/*.json
    files that describe a CLIP model (embed_dim, vision_cfg and text_cfg); where open_clip is laid
    out otherwise, it is asked itself."""
    found = importlib.util.find_spec("open_clip")
    folder = Path(found.origin).parent / "model_configs" if found and found.origin else None
    if folder is None or not folder.is_dir():
        import open_clip

        return open_clip.list_models()
    names = []
    for path in sorted(folder.glob("*.json")):
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
            names.append(path.stem)
    return names


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


DEFAULT_KEY = ModelSpec(DEFAULT_MODEL).key  # where the default model's vectors live

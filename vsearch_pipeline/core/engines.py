"""Inference engines for the image encoder: eager PyTorch, or the same network exported to ONNX.

Eager PyTorch runs the default model (EfficientNet-Lite0) one image at a time at about 30-45
images/s on two CPU cores and gains little from batching or bf16; the same graph in ONNX Runtime
gives identical vectors about twice as fast, and its int8 graph (`ModelSpec.int8`, the default)
twice as fast again (see ``python -m benchmarks embed``). The graphs are cached under
``$VSEARCH_CACHE`` (default ``~/.cache/vsearch``, `vsearch_pipeline.core.lite0.graph_path`), so a
machine pays for the export and the quantization once, not once per run.

Names: ``torch`` (eager, any model, fp32 or bf16 autocast), ``onnx`` (ONNX Runtime, fp32 or the
int8 graph), ``openvino`` (OpenVINO, fp32 or bf16 where the CPU has it), and ``auto``: ``onnx``
for the default model on the CPU in fp32, ``torch`` otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

ENGINES = ("auto", "torch", "onnx", "openvino")
EXPORTED_ENGINES = ("onnx", "openvino")
CACHE_ENV = "VSEARCH_CACHE"
ONNX_OPSET = 17

# A batch of pixels (n, 3, h, w) float32 in; features (n, dim) and class logits (n, classes) out.
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def validate_engine(engine: str, model_name: str, device: str, precision: str) -> None:
    """Fail before any work with a message that names the setting and what would work."""
    from vsearch_pipeline.core.model_spec import DEFAULT_MODEL

    if engine not in ENGINES:
        raise ValueError(f"model.engine must be one of {ENGINES}, got {engine!r}")
    if engine not in EXPORTED_ENGINES:
        return
    if model_name != DEFAULT_MODEL:
        raise ValueError(f"model.engine {engine!r} runs only {DEFAULT_MODEL!r}; use 'torch' (or 'auto') "
                         f"for {model_name!r}")
    if device != "cpu":
        raise ValueError(f"model.engine {engine!r} runs on the CPU only; use 'torch' for device {device!r}")
    if engine == "onnx" and precision != "fp32":
        raise ValueError("model.engine 'onnx' runs in fp32 only; use 'openvino' or 'torch' for bf16")


def validate_int8(engine: str, int8: bool) -> None:
    if int8 and engine not in ("auto", "onnx"):
        raise ValueError(f"model.int8 runs with engine 'onnx' (or 'auto'), not {engine!r}; set "
                         "model.int8 to false to run the model in float")


def resolve_engine(engine: str, model_name: str, device: str, precision: str) -> str:
    """The engine that `auto` stands for with these settings (others stand for themselves)."""
    from vsearch_pipeline.core.model_spec import DEFAULT_MODEL

    validate_engine(engine, model_name, device, precision)
    if engine != "auto":
        return engine
    fast = model_name == DEFAULT_MODEL and device == "cpu" and precision == "fp32"
    return "onnx" if fast else "torch"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vsearch")


def onnx_runner(path: Path, threads: int | None = None) -> Runner:
    """The graph at `path` run by ONNX Runtime on the CPU (`onnx_session`)."""
    return session_runner(onnx_session(path, threads))


def onnx_session(path: Path, threads: int | None = None):
    """An ONNX Runtime session on the CPU, all graph optimisations on, no spinning threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    # Threads that spin between runs fight PyTorch's (preprocessing) threads for the cores:
    # measured on 2 cores, one image went from 79 ms to 17 ms, a batch of 32 from 542 to 261 ms.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_runner(session) -> Runner:
    """A runner over an ONNX Runtime session whose graph takes `pixels` and gives two outputs."""

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first, second = session.run(None, {"pixels": np.ascontiguousarray(pixels, np.float32)})
        return first, second

    return run


def openvino_runner(path: Path, precision: str, threads: int | None = None) -> Runner:
    """The ONNX file compiled by OpenVINO for the CPU; bf16 uses the CPU's bf16 units where it
    has them (AVX512-BF16, AMX) and falls back to fp32 where it has not."""
    try:
        import openvino as ov
    except ImportError as err:  # optional: not a core dependency
        raise ValueError("model.engine 'openvino' needs the openvino package: pip install openvino") from err

    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = request.infer({0: np.ascontiguousarray(pixels, np.float32)})
        return np.asarray(outputs[compiled.output(0)]), np.asarray(outputs[compiled.output(1)])

    return run


def engine_version(engine: str) -> str:
    """The engine and its library version, for the model version recorded with each vector."""
    if engine == "onnx":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    if engine == "openvino":
        import openvino

        return f"openvino {openvino.__version__}"
    import torch

    return f"torch {torch.__version__}"

"""The import rules of docs/architecture.md: the core imports no framework, the service no
Dagster, and each entry point loads only what its command needs."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.startup import back_edges

REPO = Path(__file__).resolve().parents[1]


def test_no_layer_imports_what_it_must_not():
    assert back_edges(REPO) == []


def test_the_checker_sees_a_lazy_import_of_a_framework(tmp_path: Path):
    core = tmp_path / "vsearch_pipeline" / "core"
    core.mkdir(parents=True)
    (core / "leaky.py").write_text("def run():\n    from dagster import asset\n")
    assert back_edges(tmp_path) == ["vsearch_pipeline/core/leaky.py imports dagster"]


@pytest.mark.parametrize(("module", "heavy"), [
    ("vsearch_pipeline.cli", ("dagster", "torch", "fastapi", "faiss", "pydantic", "numpy")),
    ("vsearch_pipeline.settings", ("dagster", "torch", "faiss", "open_clip")),
    ("serving.app", ("dagster", "torch", "open_clip", "sentence_transformers", "cv2")),
    ("vsearch_pipeline.search", ("dagster", "torch", "sentence_transformers", "onnxruntime")),
    ("vsearch_pipeline.core.models", ("torch", "torchvision", "open_clip")),
    ("vsearch_pipeline.core.lite0", ("torch", "torchvision", "onnx")),
])
def test_entry_points_load_only_what_their_command_needs(module: str, heavy: tuple[str, ...]):
    code = f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=REPO)
    assert done.stdout.strip() == "[]", f"importing {module} loads {done.stdout.strip()}"

"""How fast each entry point starts: `vsearch --help`, `vsearch search` by id and by image, and
`vsearch serve` until it answers `/similar`, from a warm disk cache; and the import graph's rules.

Each command is started as a new process, the way a person starts it, and timed from the spawn
to its exit (or, for `serve`, to the first `/similar` answer). For comparison, in the same run:
the floor any Python command pays (`python -c pass`) and what importing torch and dagster alone
costs here; and, when `VSEARCH_BENCH_BASELINE` names another checkout of vsearch (for example
the previous release, `git worktree add /tmp/before <commit>`), every figure for that checkout
too, run with the same Python.

Homes: the demo home is built in a temporary folder (`vsearch demo`) unless
`VSEARCH_BENCH_DEMO_HOME` names one; a Caltech-101 home is measured when
`VSEARCH_BENCH_CALTECH_HOME` names one (build it with `vsearch materialize --source
../shared/data/caltech101`). `--quick` times each command once instead of three times.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_CLI = "import sys; from vsearch_pipeline.cli import main; sys.argv[0] = 'vsearch'; main()"
SERVE_DEADLINE_S = 300
# Which layer may not import which library (docs/architecture.md): checked on the source text.
FORBIDDEN = {"vsearch_pipeline/core": ("dagster", "fastapi", "pydantic_settings", "starlette",
                                       "uvicorn", "serving"),
             "serving": ("dagster", "vsearch_pipeline.assets", "vsearch_pipeline.resources",
                         "vsearch_pipeline.definitions", "vsearch_pipeline.runner")}


def command(checkout: Path, *args: str) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    return [sys.executable, "-c", RUN_CLI, *args], env


def seconds(argv: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def median_seconds(argv: list[str], env: dict, cwd: Path, repeats: int) -> float:
    return round(statistics.median(seconds(argv, env, cwd) for _ in range(repeats)), 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_seconds(checkout: Path, home: Path, image_id: str) -> float:
    """From spawning `vsearch serve` to its first 200 from /similar/{id}."""
    port = free_port()
    argv, env = command(checkout, "serve", "--home", str(home), "--port", str(port))
    start = time.perf_counter()
    server = subprocess.Popen(argv, env=env, cwd=checkout, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/similar/{image_id}?k=5"
        while time.perf_counter() - start < SERVE_DEADLINE_S:
            if server.poll() is not None:
                raise RuntimeError(f"vsearch serve exited with {server.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        return round(time.perf_counter() - start, 2)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"vsearch serve did not answer within {SERVE_DEADLINE_S} s")
    finally:
        server.terminate()
        server.wait(timeout=30)


def an_image(checkout: Path, home: Path) -> tuple[str, Path]:
    """An id of the home's index and a file to search with (the first result of a search)."""
    argv, env = command(checkout, "search", "--home", str(home), "--json", "-k", "1",
                        "--text", "a photo")
    try:
        out = subprocess.run(argv, env=env, cwd=checkout, capture_output=True, text=True,
                             check=True).stdout
        row = json.loads(out)["results"][0]
    except (subprocess.CalledProcessError, IndexError, KeyError):
        raise SystemExit(f"cannot search the home {home}: build it first") from None
    return row["id"], Path(row["uri"])


def show(label: str, value: float) -> None:
    print(f"  {label:<36} {value:>7.2f} s", flush=True)


def entry_points(checkout: Path, homes: dict[str, Path], repeats: int) -> dict:
    figures: dict = {}
    argv, env = command(checkout, "--help")
    figures["help_s"] = median_seconds(argv, env, checkout, repeats)
    show("vsearch --help", figures["help_s"])
    for name, home in homes.items():
        image_id, image_file = an_image(checkout, home)
        for label, query in (("search_id", image_id), ("search_image", str(image_file))):
            argv, env = command(checkout, "search", "--home", str(home), query)
            figures[f"{name}_{label}_s"] = median_seconds(argv, env, checkout, repeats)
            show(f"vsearch search {label[7:]} ({name})", figures[f"{name}_{label}_s"])
        figures[f"{name}_serve_s"] = round(statistics.median(
            serve_seconds(checkout, home, image_id) for _ in range(repeats)), 2)
        show(f"vsearch serve to /similar ({name})", figures[f"{name}_serve_s"])
    return figures


def floors(repeats: int) -> dict:
    """What any Python command, and importing the two heaviest libraries, cost here."""
    figures = {}
    for name, code in (("python_s", "pass"), ("import_torch_s", "import torch"),
                       ("import_dagster_s", "import dagster"), ("import_fastapi_s", "import fastapi")):
        figures[name] = median_seconds([sys.executable, "-c", code], dict(os.environ), REPO, repeats)
        show(f"python -c {code!r}", figures[name])
    return figures


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def back_edges(checkout: Path) -> list[str]:
    """Imports that break the layering: a core module importing a framework, or a service
    module importing the pipeline's Dagster side."""
    found = []
    for folder, forbidden in FORBIDDEN.items():
        for path in sorted((checkout / folder).rglob("*.py")):
            for name in sorted(imported_names(path)):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    found.append(f"{path.relative_to(checkout)} imports {name}")
    return found


def loaded_modules(checkout: Path, module: str) -> dict:
    """Which heavy libraries importing `module` loads, and how long it takes."""
    code = (f"import sys, time; t = time.perf_counter(); import {module}; "
            "print(round(time.perf_counter() - t, 2), "
            "[m for m in ('dagster', 'torch', 'open_clip', 'fastapi', 'faiss', 'onnxruntime') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(checkout)}, check=True)
    took, libraries = out.stdout.strip().split(" ", 1)
    return {"seconds": float(took), "loads": ast.literal_eval(libraries)}


def import_graph(checkout: Path) -> dict:
    edges = back_edges(checkout)
    print(f"  back-edges: {len(edges)}", flush=True)
    for edge in edges:
        print(f"    {edge}", flush=True)
    entry = {}
    for module in ("vsearch_pipeline.cli", "vsearch_pipeline.settings", "serving.app",
                   "vsearch_pipeline.search", "vsearch_pipeline.core.layout"):
        entry[module] = loaded_modules(checkout, module)
        print(f"  import {module:<28} {entry[module]['seconds']:>6.2f} s, loads "
              f"{', '.join(entry[module]['loads']) or 'none of the heavy ones'}", flush=True)
    return {"back_edges": edges, "entry_imports": entry}


def demo_home(checkout: Path, scratch: Path) -> Path:
    given = os.environ.get("VSEARCH_BENCH_DEMO_HOME")
    if given:
        return Path(given).resolve()
    home = scratch / "demo-home"
    print(f"building the demo home in {home} (vsearch demo)...", flush=True)
    argv, env = command(checkout, "demo", "--home", str(home))
    subprocess.run(argv, env=env, cwd=checkout, capture_output=True, check=True)
    return home


def run(quick: bool = False) -> dict:
    repeats = 1 if quick else 3
    checkouts = {"this": REPO}
    if os.environ.get("VSEARCH_BENCH_BASELINE"):
        checkouts["baseline"] = Path(os.environ["VSEARCH_BENCH_BASELINE"]).resolve()
    with tempfile.TemporaryDirectory(prefix="vsearch-startup-") as scratch:
        homes = {"demo": demo_home(REPO, Path(scratch))}
        if os.environ.get("VSEARCH_BENCH_CALTECH_HOME"):
            homes["caltech"] = Path(os.environ["VSEARCH_BENCH_CALTECH_HOME"]).resolve()
        print("floors:", flush=True)
        figures: dict = {"floors": floors(repeats), "repeats": repeats}
        for name, checkout in checkouts.items():
            print(f"{name} ({checkout}):", flush=True)
            figures[name] = {**entry_points(checkout, homes, repeats), **import_graph(checkout)}
    if "baseline" in figures:
        figures["speedup"] = {key: round(figures["baseline"][key] / value, 1)
                              for key, value in figures["this"].items()
                              if key.endswith("_s") and value and key in figures["baseline"]}
        print("speed-up over the baseline:", flush=True)
        for key, ratio in figures["speedup"].items():
            print(f"  {key:<28} {ratio:>6.1f}x", flush=True)
    return figures

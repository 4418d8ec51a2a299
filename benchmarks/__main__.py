"""python -m benchmarks NAME [--quick] [--json FILE]

Each benchmark measures vsearch against the plain way of doing the same work, in the same run,
on the same data, prints every figure as it goes, and returns them (with the ratios) for the
JSON file. `--quick` shrinks the work to finish in under two minutes (CI smoke runs); it asserts
no speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
from pathlib import Path

NAMES = ("embed", "dedup", "ann", "cluster", "pipeline", "small", "serve", "collection", "quality",
         "startup", "folding")


def machine() -> dict:
    """What the figures were measured on."""
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    parser.add_argument("--json", type=Path, help="write every figure and ratio to this file")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"benchmarks.{args.name}")
    print(f"# benchmark {args.name}{' (quick)' if args.quick else ''}: {machine()}", flush=True)
    figures = module.run(quick=args.quick)
    if args.json:
        args.json.write_text(json.dumps({"benchmark": args.name, "quick": args.quick,
                                         "machine": machine(), "figures": figures},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

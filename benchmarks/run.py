"""Run the benchmarks: `python -m benchmarks.run [--quick] [suite ...]`.

Each module ``benchmarks/bench_<suite>.py`` defines ``run(quick: bool) -> list[Result]``.
Every ratio printed is measured against a baseline in the same run, on the same data.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))


def suites() -> list[str]:
    names = (m.name for m in pkgutil.iter_modules([str(HERE)]))
    return sorted(n.removeprefix("bench_") for n in names if n.startswith("bench_"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suites", nargs="*", help=f"default: all of {suites()}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter timings (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    chosen = args.suites or suites()
    print(f"kseq benchmarks on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, KERAS_BACKEND={os.environ.get('KERAS_BACKEND', 'tensorflow')}")
    results = []
    for suite in chosen:
        module = importlib.import_module(f"benchmarks.bench_{suite}")
        for result in module.run(quick=args.quick):
            print(result.row(), flush=True)
            results.append(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the release checks install, read from setup.cfg so that its floors and pins are written once.

    python .ci/requirements.py floors [X.Y]   constraints pinning each install_requires floor for Python X.Y
    python .ci/requirements.py portable       what the portable suite needs beside kseq (pytest, hypothesis, JAX)
    python .ci/requirements.py next           kseq's requirements with keras swapped for the keras-next extra,
                                              plus the portable suite's (kseq itself goes in with --no-deps)
    python .ci/requirements.py check-next     fails unless keras is the keras-next nightly and keras is absent

noxfile.py imports this file; the Makefile runs it (with the main .venv's Python: it needs `packaging`).
"""

from __future__ import annotations

import configparser
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
PORTABLE = ("pytest", "hypothesis", "jax", "Pillow")  # the test extra's entries the portable suite needs (Pillow: test_files)


def _lines(value: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in value.splitlines())
    return [line for line in lines if line]


def _config() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    return config


def install_requires() -> list[Requirement]:
    return [Requirement(line) for line in _lines(_config()["options"]["install_requires"])]


def extra(name: str) -> list[Requirement]:
    return [Requirement(line) for line in _lines(_config()["options.extras_require"][name])]


def floors(python: str) -> list[str]:
    """``name==floor`` for every install_requires entry that applies on Python ``python`` (its marker)."""
    pins = {}
    for req in install_requires():
        if req.marker is not None and not req.marker.evaluate({"python_version": python}):
            continue
        (spec,) = [s for s in req.specifier if s.operator == ">="]  # each requirement declares exactly one floor
        pins[req.name] = f"{req.name}=={spec.version}"
    return sorted(pins.values())


def portable() -> list[str]:
    return [str(req) for req in extra("test") if req.name in PORTABLE]


def next_requirements() -> list[str]:
    own = [str(req) for req in install_requires() if req.name != "keras"]
    return own + [str(req) for req in extra("keras-next")] + portable()


def check_next() -> str:
    (pin,) = extra("keras-next")
    (spec,) = pin.specifier
    try:
        stray = metadata.version("keras")
    except metadata.PackageNotFoundError:
        stray = None
    if stray is not None:
        sys.exit(f"keras {stray} is installed beside {pin}: both install the `keras` package. Expected {pin} only.")
    import keras  # the nightly: this script is then run by the keras-next venv's Python

    if keras.__version__ != spec.version:
        sys.exit(f"Expected keras.__version__ == {spec.version!r} ({pin}); received {keras.__version__!r}.")
    return f"keras {keras.__version__} ({pin.name})"


def main(argv: list[str]) -> None:
    command, *rest = argv
    if command == "floors":
        lines = floors(rest[0] if rest else f"{sys.version_info[0]}.{sys.version_info[1]}")
    elif command == "portable":
        lines = portable()
    elif command == "next":
        lines = next_requirements()
    elif command == "check-next":
        lines = [check_next()]
    else:
        sys.exit(f"Expected floors, portable, next or check-next; received {command!r}.")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

"""The release checks `.ci/run` runs after `make test`: what setup.cfg promises, installed as users install it.

    make matrix        nox -s portable: the portable suite (pytest -m portable) on JAX, on Python 3.11, 3.12 and
                       3.13, once with the newest releases and once with setup.cfg's floors pinned exactly
    make wheel-check   nox -s wheel: build the sdist and the wheel, twine check, the wheel in a clean venv with JAX
                       only (import, kseq inspect, kseq demo, a two-input fit), tests from the unpacked sdist

Everything comes from PyPI (this machine's local wheel folders and pip.conf are set aside), each session in a fresh
venv under .nox/; pip's cache is shared. A pytest run that collects no tests (exit status 5) fails its session.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).resolve().parent / ".ci"))
import requirements  # (.ci/requirements.py: setup.cfg's floors and extras)

PYTHONS = ["3.11", "3.12", "3.13"]  # python_requires >= 3.11: Keras 3.13+ needs it (setup.cfg)
PORTABLE = ["pytest", "-q", "-p", "no:cacheprovider", "-m", "portable", "tests"]

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["portable", "wheel"]

# PyPI only: this machine's pip.conf adds local indexes and wheel folders (and a torch cap) that users do not have.
os.environ["PIP_CONFIG_FILE"] = os.devnull
os.environ.pop("PIP_FIND_LINKS", None)
os.environ.pop("PIP_CONSTRAINT", None)
os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")


def _pyenv() -> None:
    """Put pyenv's python3.11 ... python3.13 on PATH (the newest patch release of each it holds), its own bin
    folders first, and let its shims answer them too (PYENV_VERSION), where pyenv holds them."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not versions.is_dir():
        return
    found = []
    for minor in PYTHONS:
        held = [p for p in versions.glob(f"{minor}.*") if p.name[len(minor) + 1 :].isdigit()]
        if held:
            found.append(max(held, key=lambda p: int(p.name[len(minor) + 1 :])))
    os.environ["PATH"] = os.pathsep.join([*(str(p / "bin") for p in found), os.environ.get("PATH", "")])
    os.environ.setdefault("PYENV_VERSION", ":".join(p.name for p in found))


_pyenv()


def _versions(session: nox.Session) -> str:
    script = (
        "import sys, importlib.metadata as m; print('Python', sys.version.split()[0], *(f'{n} {m.version(n)}' "
        "for n in ('keras', 'numpy', 'h5py', 'pandas', 'jax')))"
    )
    return str(session.run("python", "-c", script, silent=True)).strip()


@nox.session(python=PYTHONS)
@nox.parametrize("deps", ["newest", "floors"])
def portable(session: nox.Session, deps: str) -> None:
    """The portable suite on JAX, with the newest releases or with every install_requires floor pinned."""
    constraints: list[str] = []
    pins = requirements.floors(str(session.python))
    if deps == "floors":
        path = Path(session.create_tmp()) / "floors.txt"
        path.write_text("\n".join(pins) + "\n")
        constraints = ["-c", str(path)]
    session.install(*constraints, ".", *requirements.portable())
    versions = _versions(session)
    session.log(versions)
    if deps == "floors":  # the pins took: each floor is what is installed, not a later release
        for pin in pins:
            name, floor = pin.split("==")
            installed = versions.split(f" {name} ", 1)[1].split()[0]
            if installed.split(".")[: len(floor.split("."))] != floor.split(".") or not _is_release(installed, floor):
                session.error(f"Expected {name} {floor} (the floor), received {installed}.")
    session.run(*PORTABLE, env={"KERAS_BACKEND": "jax"})


def _is_release(installed: str, floor: str) -> bool:
    """``3.15.0`` is the floor ``3.15``; ``3.15.1`` is not."""
    rest = installed.split(".")[len(floor.split(".")) :]
    return all(part == "0" for part in rest)


WHEEL_FILES = {"kseq/__init__.py", "kseq/py.typed", "kseq/data/digits.npz", "kseq/data/DIGITS.md"}
SDIST_FILES = {"setup.cfg", "setup.py", "README.md", "CHANGELOG.md", "MANIFEST.in", "kseq/py.typed",
               "kseq/data/digits.npz", "tests/conftest.py", "tests/test_cli.py", "docs/migration.md", "mkdocs.yml"}
# From the unpacked sdist, against the wheel built from it: the CLI, every module's docstring examples, what the
# package carries (a quick subset, about a minute; the matrix runs the whole portable suite).
SDIST_TESTS = ["tests/test_cli.py", "tests/test_api.py", "tests/test_packaging.py"]

FIT = """
import keras, numpy as np
from kseq import MultiInputDataset

rng = np.random.default_rng(0)
a, b = rng.normal(size=(256, 3)).astype("float32"), rng.normal(size=(256, 5)).astype("float32")
y = (a.sum(1) - b.sum(1)).astype("float32")[:, None]
ds = MultiInputDataset({"a": a, "b": b, "y": y}, inputs=["a", "b"], targets="y", batch_size=32, seed=0)
ia, ib = keras.Input((3,), name="a"), keras.Input((5,), name="b")
model = keras.Model({"a": ia, "b": ib}, keras.layers.Dense(1)(keras.layers.Concatenate()([ia, ib])))
model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
loss = model.fit(ds, epochs=5, verbose=0).history["loss"]
assert loss[-1] < 0.2 * loss[0], loss
print(f"two-input fit on {keras.backend.backend()}: loss {loss[0]:.3f} -> {loss[-1]:.3f}")
"""


@nox.session(python="3.12")
def wheel(session: nox.Session) -> None:
    """The sdist and the wheel as users get them (python -m build builds the wheel from the sdist)."""
    session.install("build>=1.2", "twine>=5")
    tmp = Path(session.create_tmp()).resolve()
    for old in ("dist", "clean", "work", "sdist"):
        shutil.rmtree(tmp / old, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", str(tmp / "dist"), ".")
    (sdist,) = (tmp / "dist").glob("kseq-*.tar.gz")
    (whl,) = (tmp / "dist").glob("kseq-*.whl")
    session.run("twine", "check", "--strict", str(sdist), str(whl))

    names = set(zipfile.ZipFile(whl).namelist())
    missing = WHEEL_FILES - names
    strays = sorted(n for n in names if n.startswith(("tests/", "docs/", "benchmarks/")) or "/tests/" in n)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    if missing or strays or "kseq = kseq.cli:main" not in zipfile.ZipFile(whl).read(entry).decode():
        session.error(f"Wheel {whl.name}: missing {sorted(missing)}, should not carry {strays}, or no kseq script.")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "sdist", filter="data")
    (root,) = (tmp / "sdist").iterdir()
    missing = {f for f in SDIST_FILES if not (root / f).is_file()}
    if missing:
        session.error(f"Sdist {sdist.name}: missing {sorted(missing)}.")
    session.log(f"{whl.name}: {len(names)} files; {sdist.name}: {sum(1 for _ in root.rglob('*'))} files")

    # A clean venv: the wheel and one backend, nothing else (no scikit-learn, no TensorFlow, no torch).
    clean = tmp / "clean"
    session.run("python", "-m", "venv", str(clean))
    py, env = str(clean / "bin" / "python"), {"KERAS_BACKEND": "jax"}
    session.run(py, "-m", "pip", "install", "-q", str(whl), "jax[cpu]", external=True)
    work = tmp / "work"
    work.mkdir()
    with session.chdir(work):  # outside the repository: kseq comes from the installed wheel
        session.run(py, "-c", "import importlib.util as u, kseq; print(kseq.__version__, kseq.__file__); "
                    "assert 'site-packages' in kseq.__file__; "
                    "assert not any(u.find_spec(m) for m in ('sklearn', 'tensorflow', 'torch', 'tests'))",
                    external=True)
        session.run(py, "-c", "import numpy as np; np.save('x.npy', np.arange(12.0).reshape(6, 2))", external=True)
        session.run(str(clean / "bin" / "kseq"), "pack", "x.h5", "x.npy", "--quiet", external=True)
        out = str(session.run(py, "-m", "kseq", "inspect", "x.h5", external=True, silent=True))
        if "x      (6, 2)  float64  contiguous" not in out:
            session.error(f"python -m kseq inspect x.h5 printed:\n{out}")
        out = str(session.run(py, "-m", "kseq", "--help", external=True, silent=True))
        if "``" in out or not out.startswith("usage: python -m kseq"):
            session.error(f"python -m kseq --help printed reStructuredText or another name:\n{out}")
        out = str(session.run(py, "-m", "kseq", "demo", external=True, silent=True, env=env))
        session.log(out)
        if float(out.split()[-1]) < 0.8:  # the last epoch's test accuracy (0.9+ in every run seen)
            session.error("python -m kseq demo: the last epoch's test accuracy is below 0.8.")
        session.run(py, "-c", FIT, external=True, env=env)

    # The unpacked sdist's tests, against the wheel built from that sdist.
    session.run(py, "-m", "pip", "install", "-q", *(r for r in requirements.portable() if not r.startswith("jax")),
                external=True)
    with session.chdir(root):
        session.run(str(clean / "bin" / "pytest"), *PORTABLE[1:-1], *SDIST_TESTS, external=True, env=env)

"""What an installed kseq carries and says: the demo's data, plain-text help, the version and its changelog entry.

The wheel itself, installed into a clean venv, is checked by `make wheel-check` (noxfile.py).
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kseq
from kseq import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.portable
def test_the_demo_data_needs_no_scikit_learn(monkeypatch):
    """Issue 24 item 10: installed from the wheel, `kseq demo` failed with No module named 'sklearn'."""
    for name in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, name, None)  # `import sklearn` now raises ImportError, as where it is absent
    data = cli._digits()
    assert {k: v.shape for k, v in data.items()} == {"pixels": (1797, 8, 8, 1), "profile": (1797, 16),
                                                      "digit": (1797,)}
    assert np.bincount(data["digit"]).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert data["pixels"].min() == 0.0
    assert data["pixels"].max() == 1.0


def test_the_shipped_digits_are_scikit_learns():
    """The copy in kseq/data is scikit-learn's load_digits(), every pixel and label (kseq/data/DIGITS.md)."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    data = cli._digits()
    np.testing.assert_array_equal(data["digit"], digits.target)
    np.testing.assert_array_equal(data["pixels"][..., 0], (digits.images / 16.0).astype("float32"))


@pytest.mark.portable
def test_help_is_plain_text():
    """`python -m kseq --help` printed the docstring's reStructuredText (double backticks)."""
    out = subprocess.run([sys.executable, "-m", "kseq", "--help"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert out.startswith("usage: python -m kseq ")
    assert "``" not in out
    assert "kseq (or python -m kseq): the command line (demo, pack, inspect, profile)." in out


@pytest.mark.portable
def test_the_console_script_names_itself_kseq(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kseq ")


@pytest.mark.portable
def test_the_changelog_describes_this_version():
    """Bumping __version__ without saying what changed, or what to do, fails here."""
    changelog = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## (\S+)", changelog, flags=re.MULTILINE)
    assert versions[0] == kseq.__version__
    entry = changelog.split(f"## {kseq.__version__}\n", 1)[1].split("\n## ", 1)[0]
    assert "ds.for_model(model)" in entry  # what 0.1.0 scripts that trained on ds after check must do
    assert "removed in 0.4.0" in entry

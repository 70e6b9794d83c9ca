import doctest
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys

import pytest

import kseq

MODULES = sorted(m.name for m in pkgutil.walk_packages(kseq.__path__, "kseq.") if m.name != "kseq.__main__")


def test_all_is_complete():
    """Every public class and function at the top level is listed in __all__, and every name exists."""
    public = {n for n, v in vars(kseq).items() if not n.startswith("_") and isinstance(v, type | type(len))}
    public |= {n for n, v in vars(kseq).items() if callable(v) and not n.startswith("_")}
    assert public <= set(kseq.__all__)
    assert all(hasattr(kseq, n) for n in kseq.__all__)


# Modules that define no public class or function, so have nothing for an example to show.
NOTHING_PUBLIC = {
    "kseq.datasets": "re-exports the dataset classes of its submodules",
    "kseq.samplers": "re-exports the samplers of its submodules",
    "kseq.workers": "re-exports the loader, config and context of its submodules",
    "kseq.sources._hdf5_read": "private read paths behind HDF5Source (whose examples run them)",
    "kseq.data": "holds the demo's data files (digits.npz), no code",
}
def public_defined(module):
    """The public classes and functions a module defines itself (not those it imports)."""
    return {
        n: v for n, v in vars(module).items()
        if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v)) and v.__module__ == module.__name__
    }


@pytest.mark.portable
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    """Every example runs, and a module with public classes or functions has examples that do run:
    `failed == 0` alone passes a module without a single example."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if name in NOTHING_PUBLIC:
        assert public_defined(module) == {}, f"{name} now defines public names: drop it from NOTHING_PUBLIC"
    else:
        assert result.attempted > 0, f"{name} has public {sorted(public_defined(module))} and no example"


@pytest.mark.portable
@pytest.mark.parametrize("name", MODULES)
def test_every_public_class_has_an_example(name):
    """House style: every public class has a runnable `Example:` in its own docstring."""
    module = importlib.import_module(name)
    found = {t.name: t for t in doctest.DocTestFinder().find(module)}
    classes = [f"{name}.{n}" for n, v in public_defined(module).items() if inspect.isclass(v)]
    missing = [c for c in classes if not (c in found and found[c].examples)]
    assert missing == []


def test_dir_lists_every_public_name():
    """The lazily resolved Keras-layer names are in dir(kseq) before anything reads them."""
    assert set(kseq.__all__) <= set(dir(kseq))


def test_lazy_names_are_the_defining_modules_objects():
    """kseq.Dataset and the other Keras-layer names are the very objects of the modules that define them."""
    from kseq.callbacks import ResetStates
    from kseq.datasets import Dataset
    from kseq.validation import check

    assert (kseq.Dataset, kseq.ResetStates, kseq.check) == (Dataset, ResetStates, check)
    assert kseq.legacy is importlib.import_module("kseq.legacy")
    assert set(kseq._LAZY) <= set(kseq.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Datset'"):
        kseq.Datset  # noqa: B018 - the read is the test


def test_no_framework_is_imported_at_module_level():
    """kseq talks to Keras and numpy only: importing it adds no framework to what `import keras` loads."""
    code = (
        "import sys; frameworks = ('tensorflow', 'jax', 'torch'); import keras; "
        "before = {m for m in frameworks if m in sys.modules}; import kseq; "
        "print(sorted({m for m in frameworks if m in sys.modules} - before))"
    )
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_trains_to_high_accuracy():
    """`python -m kseq demo` (what `make demo` runs) trains the two-input model and prints its table."""
    out = subprocess.run(
        [sys.executable, "-m", "kseq", "demo", "--epochs", "4"], capture_output=True, text=True, check=True, timeout=300
    )
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1][4]) > 0.85  # test accuracy on held-out digits


class TestRenamedNames:
    """Each old public name still works, is the new object, and warns with DeprecationWarning when read."""

    def test_hdf5_describe_is_field_layouts(self):
        import kseq.sources.hdf5 as hdf5

        with pytest.warns(DeprecationWarning, match=r"hdf5\.describe is deprecated: use .*field_layouts"):
            assert hdf5.describe is hdf5.field_layouts

    def test_importing_the_old_name_warns_too(self):
        with pytest.warns(DeprecationWarning, match="field_layouts"):
            from kseq.sources.hdf5 import describe  # noqa: F401 - the import is the test

    def test_field_layout_path_is_dataset_and_reader_is_direct(self, tmp_path):
        import h5py
        import numpy as np

        from kseq.sources.hdf5 import field_layouts

        with h5py.File(tmp_path / "f.h5", "w") as f:
            f.create_dataset("g/x", data=np.zeros((4, 2)))
            f.create_dataset("y", data=np.zeros(40), chunks=(8,), compression="gzip")
        x, y = field_layouts(tmp_path / "f.h5")
        with pytest.warns(DeprecationWarning, match=r"FieldLayout\.path is deprecated: use FieldLayout\.dataset"):
            assert x.path == x.dataset == "g/x"
        with pytest.warns(DeprecationWarning, match=r"FieldLayout\.reader is deprecated: use FieldLayout\.direct"):
            assert (x.reader, y.reader) == ("direct", "blocks")
        assert (x.direct, y.direct) == (True, False)

    def test_unknown_names_are_still_attribute_errors(self):
        import kseq.sources.hdf5 as hdf5

        with pytest.raises(AttributeError, match="has no attribute 'descrbe'"):
            hdf5.descrbe  # noqa: B018 - the read is the test

    def test_batching_pack_is_as_batch_and_describe_is_summarize(self):
        import kseq.batching as batching

        with pytest.warns(DeprecationWarning, match=r"batching\.pack is deprecated: use kseq\.batching\.as_batch"):
            assert batching.pack is batching.as_batch
        with pytest.warns(DeprecationWarning, match=r"batching\.describe is deprecated: use kseq\.batching\.summarize"):
            assert batching.describe is batching.summarize

    def test_batching_old_names_warn_on_import_not_on_module_import(self):
        code = "import kseq.batching, kseq.sources.hdf5"  # the modules themselves import without a warning
        subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], check=True)
        with pytest.warns(DeprecationWarning, match="as_batch"):
            from kseq.batching import pack  # noqa: F401 - the import is the test

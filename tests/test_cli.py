import importlib.util
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from kseq import cli
from kseq.cli import main
from kseq.sources.hdf5 import HDF5Source


@pytest.fixture
def inputs(tmp_path, rng):
    images = rng.random((120, 8, 8)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "label.npy", np.arange(120))
    np.savez(tmp_path / "extra.npz", a=np.zeros((120, 2)), b=np.ones(120))
    table = pd.DataFrame({"v": np.arange(50.0), "name": ["a", "bb"] * 25})
    table.to_csv(tmp_path / "t.csv", index=False)
    if importlib.util.find_spec("pyarrow"):  # Parquet input needs pyarrow (the test extra installs it)
        table.to_parquet(tmp_path / "t.parquet")
    return {"images": images, "table": table}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.portable
class TestPack:
    def test_npy_and_npz_inputs_become_named_fields(self, tmp_path, inputs, capsys):
        code, out, _ = run(capsys, "pack", tmp_path / "o.h5", tmp_path / "images.npy",
                           f"y={tmp_path / 'label.npy'}", f"ex={tmp_path / 'extra.npz'}", "--quiet")
        assert code == 0
        src = HDF5Source(tmp_path / "o.h5")
        assert list(src.fields) == ["images", "y", "ex/a", "ex/b"]
        np.testing.assert_array_equal(src.read([7])["images"], inputs["images"][[7]])
        assert "images  (120, 8, 8)  float32  contiguous" in out

    @pytest.mark.parametrize("table", ["t.csv", "t.parquet"])
    def test_a_table_becomes_one_field_per_column(self, tmp_path, inputs, capsys, table):
        if table.endswith(".parquet"):
            pytest.importorskip("pyarrow")
        code, _, err = run(capsys, "pack", tmp_path / "t.h5", f"tab={tmp_path / table}")
        assert code == 0
        src = HDF5Source(tmp_path / "t.h5")
        assert list(src.fields) == ["tab/v", "tab/name"]
        assert src.read(np.arange(50))["tab/v"].tolist() == inputs["table"]["v"].tolist()
        assert {lay.layout for lay in src.layouts.values()} == {"contiguous"}
        assert "pack t.h5:" in err

    @pytest.mark.parametrize("table", ["w.csv", "w.parquet"])
    def test_later_batches_with_longer_strings_and_wider_numbers(self, tmp_path, capsys, monkeypatch, table):
        """Dtypes are fixed over the whole table, not by the first batch of rows."""
        if table.endswith(".parquet"):
            pytest.importorskip("pyarrow")
        frame = pd.DataFrame({
            "s": ["ab"] * 4 + ["a much longer strïng"] * 3,
            "n": pd.array([1, 2, 3, 4, 5, None, 7], dtype="Int64") if table.endswith("parquet") else
                 [1, 2, 3, 4, 5.5, 6, 7],
            "k": [1, 2, 3, 4, 2**40, 6, 7],
            "m": ["1", "2", "3", "4", "x", "y", "z"],
        })
        if table.endswith(".csv"):
            frame.to_csv(tmp_path / table, index=False)
        else:
            frame.to_parquet(tmp_path / table)
        monkeypatch.setattr(cli, "_BATCH_ROWS", 3)
        code, _, err = run(capsys, "pack", tmp_path / "w.h5", tmp_path / table, "--quiet")
        assert (code, err) == (0, "")
        out = HDF5Source(tmp_path / "w.h5").read(np.arange(7))
        assert out["s"].tolist() == [b"ab"] * 4 + ["a much longer strïng".encode()] * 3
        assert out["k"].tolist() == frame["k"].tolist()
        assert out["m"].tolist() == [b"1", b"2", b"3", b"4", b"x", b"y", b"z"]
        expected = [1, 2, 3, 4, 5, np.nan, 7] if table.endswith("parquet") else [1, 2, 3, 4, 5.5, 6, 7]
        np.testing.assert_array_equal(out["n"], expected)

    @pytest.mark.parametrize("second", ["b/x.npy", "z.npz"])
    def test_two_inputs_giving_one_field_name_are_refused(self, tmp_path, capsys, second):
        for sub in ("a", "b"):
            (tmp_path / sub).mkdir()
            np.save(tmp_path / sub / "x.npy", np.arange(4))
        np.savez(tmp_path / "z.npz", x=np.ones(4))
        code, _, err = run(capsys, "pack", tmp_path / "o.h5", tmp_path / "a/x.npy", tmp_path / second, "--quiet")
        assert code == 2
        assert re.search(rf"Field 'x' comes from two inputs: '.*a/x\.npy' and '.*{re.escape(second)}'.*name=", err)
        assert not (tmp_path / "o.h5").exists()

    def test_compression_and_chunks(self, tmp_path, inputs, capsys):
        code, out, _ = run(capsys, "pack", tmp_path / "z.h5", tmp_path / "images.npy", "--compression", "gzip",
                           "--level", "2", "--chunks", "40", "--quiet")
        assert code == 0
        assert "images  (120, 8, 8)  float32  chunked  (40, 8, 8)  gzip(2)" in out

    def test_an_existing_output_is_an_error_not_a_traceback(self, tmp_path, inputs, capsys):
        run(capsys, "pack", tmp_path / "o.h5", tmp_path / "label.npy", "--quiet")
        code, _, err = run(capsys, "pack", tmp_path / "o.h5", tmp_path / "label.npy", "--quiet")
        assert code == 2
        assert "kseq pack: SourceError:" in err
        assert "already exists" in err

    def test_a_missing_input(self, tmp_path, capsys):
        code, _, err = run(capsys, "pack", tmp_path / "o.h5", f"x={tmp_path / 'nope.npy'}")
        assert code == 2
        assert "Input file not found:" in err
        assert "(field 'x')" in err

    def test_a_table_must_be_alone(self, tmp_path, inputs, capsys):
        code, _, err = run(capsys, "pack", tmp_path / "o.h5", tmp_path / "t.csv", tmp_path / "images.npy")
        assert code == 2
        assert "A CSV or Parquet input must be the only input" in err

    def test_an_unsupported_input(self, tmp_path, capsys):
        (tmp_path / "x.txt").write_text("1")
        code, _, err = run(capsys, "pack", tmp_path / "o.h5", tmp_path / "x.txt")
        assert code == 2
        assert "unsupported file type '.txt'" in err


@pytest.mark.portable
class TestInspect:
    def test_prints_fields_shapes_dtypes_layout_chunks_and_size(self, tmp_path, inputs, capsys):
        run(capsys, "pack", tmp_path / "o.h5", tmp_path / "images.npy", f"y={tmp_path / 'label.npy'}", "--quiet")
        code, out, _ = run(capsys, "inspect", tmp_path / "o.h5")
        lines = out.splitlines()
        assert code == 0
        assert re.search(r"o\.h5: \d+\.\d kB, 2 datasets, 120 rows$", lines[0])
        assert lines[1].split() == ["field", "shape", "dtype", "layout", "chunks", "compression", "stored", "read",
                                    "as"]
        assert lines[2].split() == ["images", "(120,", "8,", "8)", "float32", "contiguous", "-", "-", "30.7", "kB",
                                    "memmap"]
        assert lines[3].split() == ["y", "(120,)", "int64", "contiguous", "-", "-", "960", "B", "memmap"]

    def test_notes_datasets_of_different_lengths(self, tmp_path, capsys):
        with h5py.File(tmp_path / "m.h5", "w") as f:
            f["a"] = np.zeros(3)
            f["b"] = np.zeros(4)
        _, out, _ = run(capsys, "inspect", tmp_path / "m.h5")
        assert "first dimensions differ" in out
        assert "HDF5Source(path, fields=[...])" in out

    def test_a_file_of_scalars_only(self, tmp_path, capsys):
        with h5py.File(tmp_path / "s.h5", "w") as f:
            f["s"] = 1.5
        code, out, _ = run(capsys, "inspect", tmp_path / "s.h5")
        assert code == 0
        assert "1 datasets, only scalars" in out
        assert "note: scalar datasets ['s'] have no rows" in out

    def test_an_empty_file(self, tmp_path, capsys):
        h5py.File(tmp_path / "e.h5", "w").close()
        code, out, _ = run(capsys, "inspect", tmp_path / "e.h5")
        assert code == 0
        assert "0 datasets" in out
        assert "no datasets to read" in out
        assert "differ" not in out

    def test_a_file_that_is_not_hdf5(self, tmp_path, capsys):
        (tmp_path / "x.h5").write_text("hello")
        code, _, err = run(capsys, "inspect", tmp_path / "x.h5")
        assert code == 2
        assert "is not an HDF5 file" in err


def test_the_module_entry_point_runs_pack_and_inspect(tmp_path):
    """`python -m kseq pack` then `inspect` from a shell, as a user would."""
    np.save(tmp_path / "x.npy", np.arange(10.0))
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    packed = subprocess.run([sys.executable, "-m", "kseq", "pack", str(tmp_path / "o.h5"), str(tmp_path / "x.npy")],
                            env=env, capture_output=True, text=True, check=True, timeout=120)
    assert "[##############################] 10/10 rows" in packed.stderr
    shown = subprocess.run([sys.executable, "-m", "kseq", "inspect", str(tmp_path / "o.h5")], env=env,
                           capture_output=True, text=True, check=True, timeout=120)
    assert shown.stdout.splitlines()[2].split()[:4] == ["x", "(10,)", "float64", "contiguous"]

import io
import pickle
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pytest

from kseq import SourceError, StructureError
from kseq.sources.hdf5 import HDF5Source
from kseq.sources.pack import pack


@pytest.fixture
def arrays(rng):
    return {"x": rng.normal(size=(300, 4, 2)).astype("float32"), "label": rng.integers(0, 5, 300)}


def batches(arrays, size=64):
    """The arrays as a stream of batches, the way data bigger than memory arrives."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in arrays.items()}


def assert_same(src, arrays):
    out = src.read(np.arange(len(src)))
    assert list(out) == list(arrays)
    for name, values in arrays.items():
        np.testing.assert_array_equal(out[name], values)


@pytest.mark.portable
class TestLayout:
    def test_arrays_are_written_contiguous_and_read_back(self, tmp_path, arrays):
        src = pack(tmp_path / "a.h5", arrays, progress=False)
        assert isinstance(src, HDF5Source)
        assert {lay.layout for lay in src.layouts.values()} == {"contiguous"}
        assert set(src.readers.values()) == {"memmap"}
        assert_same(src, arrays)

    def test_compression_makes_chunks_of_whole_rows_with_one_row_count(self, tmp_path, arrays):
        """Every field is chunked with the same rows per chunk and its full trailing shape."""
        src = pack(tmp_path / "z.h5", arrays, compression="gzip", compression_opts=1, chunks=50, progress=False)
        assert {n: (lay.chunks, lay.compression) for n, lay in src.layouts.items()} == {
            "x": ((50, 4, 2), "gzip(1)"),
            "label": ((50,), "gzip(1)"),
        }
        assert src.block_size == 50
        assert_same(src, arrays)

    def test_automatic_chunks_hold_about_one_mebibyte_of_the_widest_field(self, tmp_path):
        wide = {"img": np.zeros((3000, 1024), "float32"), "y": np.zeros(3000, "int8")}
        src = pack(tmp_path / "w.h5", wide, compression="lzf", progress=False)
        assert src.layouts["img"].chunks == (256, 1024)
        assert src.layouts["y"].chunks == (256,)

    def test_large_datasets_and_chunks_start_on_a_page(self, tmp_path):
        """64 KiB and more: a 4 KiB row lies on one page (the memory map and pread are faster); small ones
        are packed without padding."""
        big = {"img": np.zeros((100, 1024), "float32"), "y": np.zeros(100, "int8")}
        src = pack(tmp_path / "c.h5", big, progress=False)
        assert src.layouts["img"].offset % 4096 == 0
        chunked = pack(tmp_path / "k.h5", big, chunks=16, progress=False)
        assert (chunked.layouts["img"].chunk_offsets % 4096 == 0).all()
        assert src.path.stat().st_size < 100 * 4096 + 100 + 3 * 4096

    def test_chunks_true_without_compression(self, tmp_path, arrays):
        src = pack(tmp_path / "c.h5", arrays, chunks=True, progress=False)
        assert {lay.layout for lay in src.layouts.values()} == {"chunked"}

    def test_nested_names_make_groups_in_order(self, tmp_path, arrays):
        src = pack(tmp_path / "g.h5", {"train/x": arrays["x"], "train/label": arrays["label"]}, progress=False)
        assert list(src.fields) == ["train/x", "train/label"]

    def test_a_memmap_is_written_without_loading_it(self, tmp_path, arrays):
        mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype="float32", shape=(300, 4, 2))
        mm[:] = arrays["x"]
        src = pack(tmp_path / "m.h5", {"x": np.load(tmp_path / "x.npy", mmap_mode="r")}, progress=False)
        assert_same(src, {"x": arrays["x"]})


@pytest.mark.portable
class TestInputs:
    def test_a_dataframe_becomes_one_field_per_column(self, tmp_path):
        emb = [np.ones(2), np.zeros(2), np.ones(2)]
        df = pd.DataFrame({"v": [1.5, 2.5, 3.5], "word": ["héllo", "a", "bc"], "emb": emb})
        src = pack(tmp_path / "df.h5", df, progress=False)
        out = src.read([0, 2])
        assert out["v"].tolist() == [1.5, 3.5]
        assert [w.decode() for w in out["word"]] == ["héllo", "bc"]
        assert out["emb"].shape == (2, 2)

    def test_a_stream_of_known_length_is_written_contiguous(self, tmp_path, arrays):
        src = pack(tmp_path / "s.h5", batches(arrays), length=300, progress=False)
        assert {lay.layout for lay in src.layouts.values()} == {"contiguous"}
        assert_same(src, arrays)

    def test_a_stream_of_unknown_length_is_laid_out_contiguous_after_the_fact(self, tmp_path, arrays):
        src = pack(tmp_path / "u.h5", batches(arrays), progress=False)
        assert {lay.layout for lay in src.layouts.values()} == {"contiguous"}
        assert_same(src, arrays)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["u.h5"]

    def test_a_compressed_stream_of_unknown_length_grows_chunked_datasets(self, tmp_path, arrays):
        src = pack(tmp_path / "g.h5", batches(arrays), compression="gzip", chunks=32, progress=False)
        with h5py.File(tmp_path / "g.h5") as f:
            assert f["x"].maxshape == (None, 4, 2)
        assert src.layouts["x"].chunks == (32, 4, 2)
        assert_same(src, arrays)

    def test_a_stream_of_dataframes(self, tmp_path):
        frames = (pd.DataFrame({"a": np.arange(i, i + 10), "b": np.ones(10)}) for i in range(0, 50, 10))
        src = pack(tmp_path / "f.h5", frames, progress=False)
        assert src.read(np.arange(50))["a"].tolist() == list(range(50))

    def test_the_stream_is_consumed_lazily(self, tmp_path, arrays):
        """Batches are written as they come: the generator is never materialised as a list."""
        consumed = []

        def stream():
            for batch in batches(arrays):
                consumed.append(len(consumed))
                yield batch

        gen = stream()
        pack(tmp_path / "l.h5", gen, length=300, progress=False)
        assert consumed == [0, 1, 2, 3, 4]


@pytest.mark.portable
class TestProgress:
    def test_a_progress_bar_counts_rows(self, tmp_path, arrays):
        stream = io.StringIO()
        pack(tmp_path / "p.h5", arrays, progress=stream)
        assert "pack p.h5: [##############################] 300/300 rows" in stream.getvalue()

    def test_the_default_bar_goes_to_stderr(self, tmp_path, arrays, capsys):
        pack(tmp_path / "e.h5", batches(arrays), compression="gzip")
        captured = capsys.readouterr()
        assert captured.out == ""
        assert "pack e.h5: 300 rows" in captured.err


class TestErrors:
    def test_an_existing_file_is_kept_unless_overwrite(self, tmp_path, arrays):
        pack(tmp_path / "o.h5", arrays, progress=False)
        with pytest.raises(SourceError, match=r"o\.h5' already exists.*overwrite=True"):
            pack(tmp_path / "o.h5", {"x": np.zeros(3)}, progress=False)
        assert len(pack(tmp_path / "o.h5", {"x": np.zeros(3)}, overwrite=True, progress=False)) == 3

    def test_a_stream_shorter_than_its_length_leaves_no_file(self, tmp_path, arrays):
        with pytest.raises(StructureError, match=r"The stream gave 300 rows; expected 400"):
            pack(tmp_path / "short.h5", batches(arrays), length=400, progress=False)
        assert list(tmp_path.iterdir()) == []

    def test_a_stream_longer_than_its_length(self, tmp_path, arrays):
        with pytest.raises(StructureError, match=r"more rows than length=100"):
            pack(tmp_path / "long.h5", batches(arrays), length=100, progress=False)
        assert list(tmp_path.iterdir()) == []

    def test_batches_must_agree(self, tmp_path):
        stream = iter([{"x": np.zeros((2, 3))}, {"x": np.zeros((2, 4))}])
        with pytest.raises(StructureError, match=r"Field 'x': batch 1 has rows of shape \(4,\); the first batch had"):
            pack(tmp_path / "b.h5", stream, progress=False)

    def test_batches_must_have_the_same_fields(self, tmp_path):
        stream = iter([{"x": np.zeros(2)}, {"y": np.zeros(2)}])
        with pytest.raises(StructureError, match=r"Batch 1 has fields \['y'\]; the first batch had \['x'\]"):
            pack(tmp_path / "f.h5", stream, progress=False)

    def test_longer_strings_in_a_later_batch(self, tmp_path):
        stream = iter([{"s": np.array(["ab"])}, {"s": np.array(["abcdef"])}])
        with pytest.raises(StructureError, match=r"strings of 6 bytes; the first batch fixed 2.*astype"):
            pack(tmp_path / "s.h5", stream, progress=False)

    def test_unequal_lengths(self, tmp_path):
        with pytest.raises(StructureError, match="same number of rows"):
            pack(tmp_path / "u.h5", {"a": np.zeros(3), "b": np.zeros(4)}, progress=False)

    def test_compression_needs_chunks(self, tmp_path, arrays):
        with pytest.raises(StructureError, match="Compression needs a chunked layout"):
            pack(tmp_path / "c.h5", arrays, chunks=None, compression="gzip", progress=False)

    @pytest.mark.parametrize(("option", "match"), [({"compression": "zlib"}, "compression must be"),
                                                  ({"chunks": 0}, "chunks must be"),
                                                  ({"compression_opts": 4}, "compression_opts is the level of"),
                                                  ({"compression": "lz4", "compression_opts": 4},
                                                   "'lz4' takes none"),
                                                  ({"compression": "zstd", "compression_opts": 0},
                                                   r"compression_opts must be an integer in \[1, 22\]"),
                                                  ({"compression": "gzip", "compression_opts": 10},
                                                   r"compression_opts must be an integer in \[0, 9\]"),
                                                  ({"chunks": 2.5}, "integer >= 1. Received chunks=2.5"),
                                                  ])
    def test_bad_options(self, tmp_path, arrays, option, match):
        with pytest.raises(StructureError, match=match):
            pack(tmp_path / "x.h5", arrays, progress=False, **option)

    def test_a_bare_array_is_refused(self, tmp_path):
        with pytest.raises(StructureError, match=r"Name a bare array: \{'x': array\}"):
            pack(tmp_path / "x.h5", np.zeros(3), progress=False)

    def test_object_columns_are_refused(self, tmp_path):
        with pytest.raises(StructureError, match=r"datetime64.*cannot store"):
            pack(tmp_path / "d.h5", {"t": np.array(["2024-01-01"], dtype="datetime64[D]")}, progress=False)


class TestDtypes:
    def test_a_wider_dtype_in_a_later_batch_is_refused_not_clamped(self, tmp_path):
        stream = iter([{"n": np.arange(2, dtype="int32")}, {"n": np.array([2**40, 3], dtype="int64")}])
        with pytest.raises(StructureError, match=r"Field 'n': batch 1 has dtype int64.*int32.*dtypes=\{'n': 'int64'\}"):
            pack(tmp_path / "n.h5", stream, progress=False)
        assert not (tmp_path / "n.h5").exists()

    def test_dtypes_fixes_the_stored_dtype_for_wider_later_batches(self, tmp_path):
        stream = iter([
            {"n": np.arange(2, dtype="int32"), "s": np.array(["ab", "c"])},
            {"n": np.array([2**40, 3], dtype="int64"), "s": np.array(["abcdéf", "x"])},
        ])
        src = pack(tmp_path / "d.h5", stream, dtypes={"n": "int64", "s": "S7"}, progress=False)
        out = src.read([0, 1, 2, 3])
        assert out["n"].tolist() == [0, 1, 2**40, 3]
        assert out["s"].tolist() == [b"ab", b"c", "abcdéf".encode(), b"x"]
        assert src.fields["s"][1] == np.dtype("S7")

    @pytest.mark.parametrize(
        ("dtypes", "match"),
        [({"nope": "int64"}, r"dtypes names \['nope'\], which are not fields"), ({"n": "O"}, r"fixed-size rows")],
    )
    def test_bad_dtypes(self, tmp_path, dtypes, match):
        with pytest.raises(StructureError, match=match):
            pack(tmp_path / "b.h5", {"n": np.arange(3)}, dtypes=dtypes, progress=False)


@pytest.mark.portable
class TestFastCodecs:
    """NOTE [ compression ]: hdf5plugin's LZ4, Zstd and Blosc, written by pack and read in any process."""

    @pytest.mark.parametrize(("compression", "level", "shown"), [("lz4", None, "lz4"), ("zstd", 5, "zstd"),
                                                                  ("blosc", 9, "blosc")])
    def test_written_chunked_and_read_back(self, tmp_path, compression, level, shown):
        pytest.importorskip("hdf5plugin")
        x = np.repeat(np.arange(2000, dtype="float32"), 8).reshape(2000, 8)  # compressible
        src = pack(tmp_path / "c.h5", {"x": x, "y": np.arange(2000)}, compression=compression,
                   compression_opts=level, chunks=100, progress=False)
        assert {n: (lay.compression, lay.plugin, lay.chunks[0]) for n, lay in src.layouts.items()} == {
            "x": (shown, True, 100), "y": (shown, True, 100)}
        assert src.readers == {"x": "blocks", "y": "blocks"}
        idx = np.random.default_rng(0).permutation(2000)[:300]
        np.testing.assert_array_equal(src.read(idx)["x"], x[idx])
        assert sum(lay.storage_bytes for lay in src.layouts.values()) < (x.nbytes + 8 * 2000) / 2

    def test_a_spawned_worker_imports_the_filters_itself(self, tmp_path, monkeypatch):
        pytest.importorskip("hdf5plugin")
        monkeypatch.setenv("KERAS_BACKEND", "numpy")
        x = np.arange(3000, dtype="int64")
        src = pack(tmp_path / "s.h5", {"x": x}, compression="blosc", chunks=100, progress=False)
        code = textwrap.dedent(f"""
            import pickle, sys
            src = pickle.loads({pickle.dumps(src)!r})
            assert "hdf5plugin" not in sys.modules
            print(src.read([2999, 5, 1234])["x"].tolist(), "hdf5plugin" in sys.modules)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["[2999,", "5,", "1234]", "True"]

    def test_without_hdf5plugin_the_source_names_it_at_construction(self, tmp_path):
        pytest.importorskip("hdf5plugin")
        path = tmp_path / "z.h5"
        pack(path, {"x": np.zeros((10, 2))}, compression="zstd", progress=False)
        code = textwrap.dedent(f"""
            import sys
            sys.modules["hdf5plugin"] = None  # as if not installed
            from kseq import SourceError
            from kseq.sources.hdf5 import HDF5Source
            try:
                HDF5Source({str(path)!r})
            except SourceError as e:
                print(e)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "Field 'x' (dataset '/x') of " in out.stdout
        assert "compressed with zstd, needs the HDF5 filters of the hdf5plugin package" in out.stdout
        assert "pip install hdf5plugin (or pip install 'kseq[compression]')" in out.stdout

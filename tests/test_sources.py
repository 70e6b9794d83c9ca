import pickle

import numpy as np
import pandas as pd
import pytest

from kseq import ArraySource, DataFrameSource, StructureError, as_source
from kseq.sources import Source


class TestArraySource:
    def test_reads_rows_in_the_order_asked(self):
        """Rows come back in the order of the indices, repeats included."""
        src = ArraySource({"x": np.arange(10) * 10, "y": np.arange(10)})
        out = src.read([7, 2, 7, 0])
        assert out["x"].tolist() == [70, 20, 70, 0]
        assert out["y"].tolist() == [7, 2, 7, 0]

    def test_every_layout_reads_as_fancy_indexing_does(self, tmp_path):
        """Rows gathered with take (arrays of rows) or indexing (1-D, memmaps) equal a[idx], type and order too."""
        rng = np.random.default_rng(0)
        mm = np.memmap(tmp_path / "m.dat", dtype="float32", mode="w+", shape=(50, 3))
        mm[:] = rng.normal(size=(50, 3))
        arrays = {
            "vector": rng.normal(size=(50, 7)).astype("float32"),
            "image": rng.integers(0, 255, size=(50, 4, 4, 3), dtype="uint8"),
            "fortran": np.asfortranarray(rng.normal(size=(50, 5))),
            "strided": rng.normal(size=(50, 8))[:, ::2],
            "label": np.arange(50),
            "text": np.array([f"s{i}" for i in range(50)]),
            "memmap": mm,
        }
        idx = np.array([49, 0, 7, 7, 31])
        out = ArraySource(arrays).read(idx)
        for name, a in arrays.items():
            expected = a[idx]
            assert type(out[name]) is type(expected) is np.ndarray, name
            assert out[name].dtype == expected.dtype, name
            assert out[name].flags.c_contiguous, name
            np.testing.assert_array_equal(out[name], expected, err_msg=name)

    def test_reads_a_subset_of_fields(self):
        """fields= limits the read to the named fields."""
        src = ArraySource({"x": np.zeros((3, 2)), "y": np.arange(3)})
        assert list(src.read([0], ["y"])) == ["y"]

    def test_unknown_field_is_refused(self):
        src = ArraySource({"x": np.zeros(3)})
        with pytest.raises(StructureError, match=r"fields names field\(s\) \['z'\] that the source does not have"):
            src.read([0], ["z"])

    def test_fields_describe_trailing_shape_and_dtype(self):
        src = ArraySource({"img": np.zeros((4, 8, 8), "uint8")})
        assert src.fields == {"img": ((8, 8), np.dtype("uint8"))}

    def test_unequal_lengths_fail_at_construction(self):
        with pytest.raises(StructureError, match=r"same number of rows.*\{'a': 3, 'b': 4\}"):
            ArraySource({"a": np.zeros(3), "b": np.zeros(4)})

    def test_empty_source_fails_at_construction(self):
        with pytest.raises(StructureError, match="empty"):
            ArraySource({"a": np.zeros((0, 2))})

    def test_no_fields_fail(self):
        with pytest.raises(StructureError, match="non-empty mapping"):
            ArraySource({})

    def test_object_array_is_refused(self):
        ragged = np.empty(2, dtype=object)
        ragged[:] = [[1, 2], [3]]
        with pytest.raises(StructureError, match="dtype object"):
            ArraySource({"seq": ragged})

    def test_out_of_range_index(self):
        src = ArraySource({"a": np.zeros(3)})
        with pytest.raises(IndexError, match="3 rows"):
            src.read([3])

    def test_memmap_is_read_without_loading(self, tmp_path):
        """A memmap stays a memmap inside the source and reads the right rows."""
        mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype="float32", shape=(100, 4))
        mm[:] = np.arange(400, dtype="float32").reshape(100, 4)
        mm.flush()
        src = ArraySource({"x": np.load(tmp_path / "x.npy", mmap_mode="r")})
        assert isinstance(src.arrays["x"], np.memmap)
        assert src.read([99])["x"].tolist() == [[396, 397, 398, 399]]

    def test_pickle_round_trip(self):
        src = ArraySource({"a": np.arange(5)})
        assert pickle.loads(pickle.dumps(src)).read([4])["a"].tolist() == [4]

    def test_is_a_source(self):
        assert isinstance(ArraySource({"a": np.arange(2)}), Source)


class TestDataFrameSource:
    def test_array_cells_stack_into_one_array(self):
        df = pd.DataFrame({"emb": [np.full(3, i, "float32") for i in range(4)], "label": [0, 1, 0, 1]})
        src = DataFrameSource(df)
        out = src.read([2, 1])
        assert out["emb"].shape == (2, 3)
        assert out["emb"][:, 0].tolist() == [2, 1]
        assert out["label"].tolist() == [0, 1]

    def test_columns_select(self):
        df = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
        assert list(DataFrameSource(df, columns=["b"]).fields) == ["b"]

    def test_strings_become_a_string_array(self):
        src = DataFrameSource(pd.DataFrame({"name": ["ab", "c"]}))
        assert src.read([1])["name"].tolist() == ["c"]

    def test_unstackable_cells_fail_with_the_column_name(self):
        df = pd.DataFrame({"seq": [np.zeros(2), np.zeros(3)]})
        with pytest.raises(StructureError, match=r"Column 'seq' holds objects that cannot be stacked"):
            DataFrameSource(df)

    def test_missing_column(self):
        with pytest.raises(StructureError, match=r"Columns \['z'\] are not in the DataFrame"):
            DataFrameSource(pd.DataFrame({"a": [1]}), columns=["z"])

    def test_empty_frame(self):
        with pytest.raises(StructureError, match="empty"):
            DataFrameSource(pd.DataFrame({"a": []}))

    def test_index_is_ignored(self):
        df = pd.DataFrame({"a": [10, 20, 30]}, index=[5, 3, 9])
        assert DataFrameSource(df).read([0])["a"].tolist() == [10]


class TestAsSource:
    def test_wraps_dicts_and_frames(self):
        assert isinstance(as_source({"a": np.arange(2)}), ArraySource)
        assert isinstance(as_source(pd.DataFrame({"a": [1]})), DataFrameSource)

    def test_bare_array_asks_for_a_name(self):
        with pytest.raises(StructureError, match="name it"):
            as_source(np.zeros(3))


class TestBadIndices:
    def test_boolean_mask_is_refused(self):
        """A mask would otherwise be read as rows 0 and 1."""
        src = ArraySource({"x": np.arange(5) * 10})
        with pytest.raises(StructureError, match=r"Received dtype bool. Use np.flatnonzero"):
            src.read(np.array([True, False, True, False, False]))

    def test_float_indices_are_refused(self):
        with pytest.raises(StructureError, match="Received dtype float64"):
            ArraySource({"x": np.arange(5)}).read([1.7, 2.2])

    def test_empty_index_list_reads_nothing(self):
        assert ArraySource({"x": np.arange(5)}).read([])["x"].shape == (0,)


class TestDataFrameColumns:
    def test_missing_text_is_refused_not_read_as_nan(self):
        df = pd.DataFrame({"s": ["a", None, "c"]})
        with pytest.raises(StructureError, match=r"Column 's' has missing values \(first at row 1\)"):
            DataFrameSource(df)

    def test_a_single_column_name_is_one_column(self):
        df = pd.DataFrame({"label": [1, 2], "other": [3, 4]})
        assert list(DataFrameSource(df, columns="label").fields) == ["label"]

    def test_duplicate_column_names_are_refused(self):
        df = pd.DataFrame([[1, 2]], columns=["a", "a"])
        with pytest.raises(StructureError, match=r"duplicate column names \['a'\]"):
            DataFrameSource(df)

    def test_names_that_collide_as_text_are_refused(self):
        df = pd.DataFrame({1: [1], "1": [2]})
        with pytest.raises(StructureError, match="collide once turned into field names"):
            DataFrameSource(df)

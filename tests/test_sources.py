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

    def test_reads_a_subset_of_fields(self):
        """fields= limits the read to the named fields."""
        src = ArraySource({"x": np.zeros((3, 2)), "y": np.arange(3)})
        assert list(src.read([0], ["y"])) == ["y"]

    def test_unknown_field_is_refused(self):
        src = ArraySource({"x": np.zeros(3)})
        with pytest.raises(StructureError, match=r"Unknown field\(s\) \['z'\]"):
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

import gc
import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from kseq import Dataset, MultiInputDataset, SourceError, StructureError
from kseq.samplers.block import BlockShuffleSampler, block_permutation
from kseq.sources import _aio, as_source
from kseq.sources.hdf5 import HDF5Source, _preadv_all, _read_runs, field_layouts

N = 1000
LAYOUTS = {
    "contiguous": {},
    "chunked": {"chunks": True},
    "gzip": {"compression": "gzip"},
}


def write(path, arrays, **options):
    """Write ``arrays`` to ``path`` with h5py directly (not kseq.pack), every dataset with ``options``."""
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            opts = dict(options)
            if opts.get("chunks") is True:
                opts["chunks"] = (50, *array.shape[1:])
            if "compression" in opts:
                opts.setdefault("chunks", (50, *array.shape[1:]))
            f.create_dataset(name, data=array, **opts)
    return path


@pytest.fixture
def arrays(rng):
    return {
        "x": rng.normal(size=(N, 6)).astype("float32"),
        "id": np.arange(N, dtype="int64"),
        "label": (np.arange(N) % 3).astype("int32"),
    }


@pytest.fixture(params=list(LAYOUTS))
def layout_file(request, tmp_path, arrays):
    return request.param, write(tmp_path / f"{request.param}.h5", arrays, **LAYOUTS[request.param])


def block_dataset(source, **kwargs):
    """A Dataset drawing block-shuffled batches with a window of 2 blocks: ``shuffle="block"`` uses 16,
    so another window means overriding ``make_sampler``."""

    class Blocked(Dataset):
        def make_sampler(self):
            return BlockShuffleSampler.for_source(
                self.source, batch_size=self.batch_size, seed=self.seed, window=2, drop_remainder=self.drop_remainder
            )

    return Blocked(source, **kwargs)


@pytest.mark.portable
class TestReadPaths:
    def test_contiguous_fields_are_memory_mapped(self, tmp_path, arrays):
        src = HDF5Source(write(tmp_path / "c.h5", arrays))
        assert src.readers == dict.fromkeys(arrays, "memmap")
        assert all(lay.direct for lay in src.layouts.values())
        assert src.block_size is None

    def test_fields_beyond_the_resident_budget_are_read_with_pread(self, tmp_path, arrays, rng):
        """With room to map only the two small fields, x (24 kB) is read with preadv, in any order."""
        src = HDF5Source(write(tmp_path / "c.h5", arrays), resident_mb=0.015)
        assert src.readers == {"x": "pread", "id": "memmap", "label": "memmap"}
        for idx in (rng.integers(0, N, 300), np.arange(100, 400), np.array([5, 5, 6, 7, 4, 999, 0])):
            np.testing.assert_array_equal(src.read(idx)["x"], arrays["x"][idx])

    def test_uncompressed_chunks_of_whole_rows_are_read_directly(self, tmp_path, arrays):
        """Each chunk's byte offset is known, so rows are gathered from the map like a contiguous field."""
        src = HDF5Source(write(tmp_path / "k.h5", arrays, chunks=True))
        assert src.readers == dict.fromkeys(arrays, "memmap")
        assert src.block_size is None
        assert src.layouts["x"].chunk_offsets.shape == (N // 50,)

    def test_compressed_fields_are_read_in_blocks(self, tmp_path, arrays):
        src = HDF5Source(write(tmp_path / "k.h5", arrays, compression="gzip"))
        assert set(src.readers.values()) == {"blocks"}
        assert not any(lay.direct for lay in src.layouts.values())
        assert src.block_size == 50

    def test_partly_written_chunks_are_read_in_blocks(self, tmp_path):
        """Unallocated chunks have no offset: the field falls back to HDF5 reads, which give the fill value."""
        with h5py.File(tmp_path / "p.h5", "w") as f:
            f.create_dataset("x", shape=(100,), chunks=(10,), dtype="int32")[:10] = np.arange(1, 11)
        src = HDF5Source(tmp_path / "p.h5")
        assert src.readers == {"x": "blocks"}
        assert src.read([50, 9, 0])["x"].tolist() == [0, 10, 1]

    def test_rows_come_back_in_the_order_asked(self, layout_file, arrays, rng):
        """Any order, repeats included, across many chunks: the same rows as numpy indexing."""
        _, path = layout_file
        src = HDF5Source(path)
        idx = np.concatenate([rng.integers(0, N, 300), [999, 0, 999]])
        out = src.read(idx)
        for name, array in arrays.items():
            np.testing.assert_array_equal(out[name], array[idx])
            assert out[name].dtype == array.dtype

    def test_fields_describe_trailing_shape_and_dtype(self, layout_file):
        _, path = layout_file
        src = HDF5Source(path)
        assert len(src) == N
        assert src.fields == {"x": ((6,), np.dtype("float32")), "id": ((), np.dtype("int64")),
                              "label": ((), np.dtype("int32"))}

    def test_nested_groups_and_renamed_fields(self, tmp_path, arrays):
        path = write(tmp_path / "g.h5", {"train/images": arrays["x"], "train/labels": arrays["label"]})
        src = HDF5Source(path, fields={"image": "train/images", "label": "/train/labels"})
        assert list(src.fields) == ["image", "label"]
        np.testing.assert_array_equal(src.read([5, 2])["image"], arrays["x"][[5, 2]])
        assert list(HDF5Source(path).fields) == ["train/images", "train/labels"]

    def test_big_endian_data_is_returned_in_native_order(self, tmp_path, arrays):
        path = write(tmp_path / "be.h5", {"x": arrays["x"].astype(">f4")})
        for budget in (1024, 0.001):  # memmap, pread
            out = HDF5Source(path, resident_mb=budget).read([3, 1])["x"]
            assert out.dtype == np.dtype("float32")
            np.testing.assert_array_equal(out, arrays["x"][[3, 1]])

    def test_never_written_dataset_reads_its_fill_value(self, tmp_path):
        """A dataset with no storage allocated has no offset: it is read through h5py and gives zeros."""
        with h5py.File(tmp_path / "u.h5", "w") as f:
            f.create_dataset("x", shape=(10, 2), dtype="float32")
        src = HDF5Source(tmp_path / "u.h5")
        assert not src.layouts["x"].direct
        assert src.read([9, 0])["x"].tolist() == [[0.0, 0.0], [0.0, 0.0]]

    def test_strings_and_booleans(self, tmp_path):
        path = write(tmp_path / "s.h5", {"s": np.array([b"ab", b"c", b"de"]), "b": np.array([True, False, True])})
        out = HDF5Source(path).read([2, 1])
        assert out["s"].tolist() == [b"de", b"c"]
        assert out["b"].tolist() == [True, False]

    def test_no_indices_give_empty_fields(self, layout_file):
        _, path = layout_file
        out = HDF5Source(path).read([])
        assert out["x"].shape == (0, 6)

    def test_a_path_becomes_an_hdf5_source(self, tmp_path, arrays):
        path = write(tmp_path / "p.h5", arrays)
        assert isinstance(as_source(str(path)), HDF5Source)
        assert isinstance(as_source(path), HDF5Source)

    def test_field_layouts_lists_every_dataset_with_its_layout(self, tmp_path, arrays):
        path = write(tmp_path / "d.h5", {"a": arrays["x"]})
        with h5py.File(path, "a") as f:
            f.create_dataset("g/b", data=arrays["id"], chunks=(100,), compression="gzip", compression_opts=3)
        found = {d.name: (d.layout, d.chunks, d.compression, d.direct) for d in field_layouts(path)}
        assert found == {"a": ("contiguous", None, None, True), "g/b": ("chunked", (100,), "gzip(3)", False)}


@pytest.mark.portable
class TestChunkCache:
    def test_the_cache_never_exceeds_its_bound(self, tmp_path, arrays, rng):
        """An exact shuffle over a file 5x larger than the cache still reads right, holding at most the bound."""
        path = write(tmp_path / "k.h5", {"x": arrays["x"]}, compression="gzip")  # 50 rows x 24 B: 1200 B a block
        src = HDF5Source(path, cache_mb=6000 / 2**20)
        for _ in range(5):
            idx = rng.permutation(N)[:200]
            np.testing.assert_array_equal(src.read(idx)["x"], arrays["x"][idx])
            info = src.cache_info()["x"]
            assert info["bytes"] <= src.cache_bytes
        assert info["slots"] == 5

    def test_block_shuffle_reads_each_chunk_once_per_epoch(self, tmp_path, arrays):
        """20 chunks, a cache of 4 blocks: an epoch reads each block at most once (all 20 in the first;
        one still cached from the epoch before may be spared)."""
        path = write(tmp_path / "k.h5", arrays, compression="gzip")
        src = HDF5Source(path, cache_mb=4 * 50 * (24 + 8 + 4) / 2**20)
        sampler = BlockShuffleSampler.for_source(src, batch_size=32, seed=3, window=2)
        for epoch in range(3):
            before = src.cache_info()["x"]["misses"]
            rows = np.concatenate([src.read(sampler.indices(epoch, b))["id"] for b in range(len(sampler))])
            assert sorted(rows.tolist()) == list(range(N))
            reads = src.cache_info()["x"]["misses"] - before
            assert reads == N // 50 if epoch == 0 else N // 50 - 4 <= reads <= N // 50

    def test_a_failed_chunk_read_is_not_cached(self, tmp_path, arrays):
        """A chunk that fails to decompress raises; once the file is whole again, its rows come back right
        (the failed block was never registered, so the next read is a miss, not a hit on stale rows)."""
        path = write(tmp_path / "f.h5", {"x": arrays["x"]}, compression="gzip")
        with h5py.File(path) as f:
            chunk = f["x"].id.get_chunk_info(2)  # rows 100-149
        good = path.read_bytes()[chunk.byte_offset : chunk.byte_offset + chunk.size]
        src = HDF5Source(path, cache_mb=2 * 50 * 24 / 2**20)  # two blocks: block 2 evicts block 0
        np.testing.assert_array_equal(src.read([0, 50])["x"], arrays["x"][[0, 50]])
        stamp = os.stat(path)

        def put(data):  # the same size, inode and mtime: the file-change stamp still matches
            with path.open("r+b") as fh:
                fh.seek(chunk.byte_offset)
                fh.write(data)
            os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

        put(b"\x00garbage" * (chunk.size // 8) + good[: chunk.size % 8])
        with pytest.raises(SourceError, match=r"rows 100 to 149"):
            src.read([120])
        put(good)
        np.testing.assert_array_equal(src.read([120, 100, 149])["x"], arrays["x"][[120, 100, 149]])
        np.testing.assert_array_equal(src.read([50, 0])["x"], arrays["x"][[50, 0]])

    def test_a_failed_load_frees_its_slot(self, tmp_path, arrays):
        """The cache itself, with a loader function that raises once for block 3: no later block shares a slot
        with a live one, and every read after the failure returns the file's rows."""
        from kseq.sources._hdf5_read import _BlockCache

        src = HDF5Source(write(tmp_path / "u.h5", {"x": arrays["x"]}, compression="gzip"))
        cache = _BlockCache(src._layouts["x"], slots=3)
        failures = [3]

        def load(layout, start, out):
            if start // 50 in failures:
                failures.remove(start // 50)
                raise OSError(5, "Input/output error")
            out[...] = arrays["x"][start : start + len(out)]

        for block in (0, 1, 2):
            cache.gather(np.array([block * 50]), load)
        with pytest.raises(OSError, match="Input/output error"):
            cache.gather(np.array([3 * 50 + 7]), load)
        for rows in ([157, 20], [220, 71, 130], [3, 151], [999, 0, 500]):
            np.testing.assert_array_equal(cache.gather(np.array(rows), load), arrays["x"][rows])
        assert cache.info()["blocks"] <= 3

    def test_exact_shuffle_is_still_correct_on_chunked_files(self, tmp_path, arrays):
        ds = Dataset(write(tmp_path / "z.h5", arrays, compression="gzip"), batch_size=64, seed=5)
        rows = np.concatenate([ds.get_batch(i)[0]["id"] for i in range(len(ds))])
        assert sorted(rows.tolist()) == list(range(N))
        assert rows.tolist() != list(range(N))


@pytest.mark.portable
class TestBlockShuffleSampler:
    @pytest.mark.parametrize(("n", "block", "window", "batch"), [(1000, 50, 2, 32), (97, 10, 3, 8), (5, 7, 1, 2)])
    def test_every_row_exactly_once_per_epoch(self, n, block, window, batch):
        s = BlockShuffleSampler(n, batch_size=batch, block_size=block, window=window, seed=1)
        for epoch in range(2):
            rows = np.concatenate([s.indices(epoch, b) for b in range(len(s))])
            assert sorted(rows.tolist()) == list(range(n))

    def test_a_pure_function_of_seed_and_epoch(self):
        a = BlockShuffleSampler(500, batch_size=16, block_size=20, seed=7)
        b = BlockShuffleSampler(500, batch_size=16, block_size=20, seed=7)
        assert a.indices(3, 5).tolist() == b.indices(3, 5).tolist()
        assert a.order(0).tolist() != a.order(1).tolist()

    def test_golden_order(self):
        """The order for a fixed seed is pinned: changing it silently would change users' runs."""
        order = block_permutation(10, block_size=3, window=2, seed=0, epoch=0)
        assert order.tolist() == [7, 6, 1, 2, 8, 0, 9, 3, 5, 4]

    def test_each_window_is_whole_blocks(self):
        """The first window*block_size rows of an epoch come from exactly `window` blocks."""
        order = block_permutation(1000, block_size=50, window=4, seed=2, epoch=1)
        assert len({int(r) // 50 for r in order[:200]}) == 4

    def test_drop_remainder_leaves_out_the_tail(self):
        s = BlockShuffleSampler(100, batch_size=32, block_size=10, seed=0, drop_remainder=True)
        assert len(s) == 3
        assert all(len(s.indices(0, b)) == 32 for b in range(3))

    def test_refuses_a_source_without_chunks(self, tmp_path, arrays):
        src = HDF5Source(write(tmp_path / "c.h5", arrays))
        with pytest.raises(StructureError, match="needs a source read in blocks"):
            BlockShuffleSampler.for_source(src, batch_size=8, seed=0)

    def test_refuses_a_window_larger_than_the_cache(self, tmp_path, arrays):
        src = HDF5Source(write(tmp_path / "k.h5", arrays, compression="gzip"), cache_mb=0.01)
        with pytest.raises(StructureError, match=r"Raise cache_mb= on the HDF5Source to at least .*make_sampler"):
            BlockShuffleSampler.for_source(src, batch_size=8, seed=0, window=64)

    def test_shuffle_block_tells_how_to_fit_its_fixed_window(self, tmp_path, arrays):
        src = HDF5Source(write(tmp_path / "k.h5", arrays, compression="gzip"), cache_mb=0.01)
        with pytest.raises(StructureError, match=r"window of 16 blocks.*cache_mb=.*shuffle='block'\) uses window=16"):
            Dataset(src, batch_size=8, shuffle="block")

    @pytest.mark.parametrize(("n", "block", "window"), [(100, 10, 2), (95, 10, 2), (1000, 7, 3)])
    def test_a_batch_draws_from_at_most_two_windows(self, n, block, window):
        """The documented condition: batch_size <= (window - 1) * block_size holds for any n."""
        batch = (window - 1) * block
        s = BlockShuffleSampler(n, batch_size=batch, block_size=block, window=window, seed=3)
        sizes = np.bincount(np.arange(n) // block)
        window_of, seen, rows, w = np.empty(n, np.int64), set(), 0, 0
        for i, r in enumerate(s.order(0).tolist()):  # a window ends once `window` whole blocks are seen
            window_of[i] = w
            seen.add(r // block)
            rows += 1
            if len(seen) == window and rows == sizes[list(seen)].sum():
                seen, rows, w = set(), 0, w + 1
        assert max(len(set(window_of[b * batch : (b + 1) * batch].tolist())) for b in range(len(s))) <= 2

    @pytest.mark.parametrize("window", [0, -1, 1.5])
    def test_bad_window(self, window):
        with pytest.raises(StructureError, match="window must be an integer >= 1"):
            BlockShuffleSampler(10, batch_size=2, block_size=2, window=window, seed=0)


@pytest.mark.portable
class TestDatasets:
    @pytest.mark.parametrize("as_path", [str, Path, HDF5Source])
    def test_datasets_accept_a_path_or_source_like_arrays(self, tmp_path, arrays, as_path):
        """A MultiInputDataset over the HDF5 file gives exactly the batches of one over the arrays."""
        path = write(tmp_path / "m.h5", arrays, chunks=True)
        kwargs = {"inputs": ["x"], "targets": "label", "batch_size": 64, "seed": 2}
        from_file = MultiInputDataset(as_path(path), **kwargs)
        in_memory = MultiInputDataset(arrays, **kwargs)
        for i in (0, len(in_memory) - 1):
            (xa, ya), (xb, yb) = from_file[i], in_memory[i]
            np.testing.assert_array_equal(xa["x"], xb["x"])
            np.testing.assert_array_equal(ya, yb)

    def test_a_block_shuffled_dataset_sees_every_row_once_per_epoch(self, tmp_path, arrays):
        ds = block_dataset(write(tmp_path / "b.h5", arrays, compression="gzip"), batch_size=64, seed=4)
        for _ in range(2):
            rows = np.concatenate([ds.get_batch(i)[0]["id"] for i in range(len(ds))])
            assert sorted(rows.tolist()) == list(range(N))
            ds.on_epoch_end()


@pytest.mark.portable
class TestProcesses:
    @pytest.mark.parametrize(("layout", "budget"), [("contiguous", 1024), ("contiguous", 0.001), ("gzip", 1024)])
    def test_pickle_drops_the_handles(self, tmp_path, arrays, layout, budget):
        """After reads opened a map, a descriptor or an h5py file, the source still pickles (small) and reads
        the same."""
        src = HDF5Source(write(tmp_path / "p.h5", arrays, **LAYOUTS[layout]), resident_mb=budget)
        before = src.read([7, 3, 900])
        blob = pickle.dumps(src)
        assert len(blob) < 5000
        again = pickle.loads(blob)
        for name, values in again.read([7, 3, 900]).items():
            np.testing.assert_array_equal(values, before[name])

    @pytest.mark.parametrize(("layout", "budget"), [("gzip", 1024), ("contiguous", 1024), ("chunked", 0.001)])
    def test_threads_read_one_source_at_once(self, tmp_path, arrays, layout, budget):
        """Four threads (what `fit(workers=4)` without processes uses) share one source and its small cache."""
        src = HDF5Source(write(tmp_path / "t.h5", arrays, **LAYOUTS[layout]), resident_mb=budget, cache_mb=0.002)
        batches = [np.random.default_rng(i).permutation(N)[:100] for i in range(40)]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda b: src.read(b, ["x"])["x"], batches))
        for b, out in zip(batches, results, strict=True):
            np.testing.assert_array_equal(out, arrays["x"][b])

    @pytest.mark.parametrize(("method", "layout"), [("fork", "gzip"), ("fork", "chunked"), ("spawn", "gzip"),
                                                    ("spawn", "chunked"), ("forkserver", "gzip")])
    def test_reads_in_worker_processes(self, tmp_path, arrays, monkeypatch, method, layout):
        """Workers started by fork (inheriting open handles), spawn or forkserver read the right rows, through
        HDF5 (gzip) or preadv at recorded chunk offsets (uncompressed chunks beyond the resident budget)."""
        monkeypatch.setenv("KERAS_BACKEND", "numpy")  # children import keras; keep that cheap
        src = HDF5Source(write(tmp_path / "w.h5", arrays, **LAYOUTS[layout]), resident_mb=0.001)
        assert set(src.readers.values()) == ({"blocks"} if layout == "gzip" else {"pread"})
        src.read([0, 1])  # the parent holds open handles when it forks
        batches = [np.arange(i, N, 7) for i in range(4)]
        with multiprocessing.get_context(method).Pool(2) as pool:
            results = pool.starmap(HDF5Source.read, [(src, b, ["id", "x"]) for b in batches])
        for b, out in zip(batches, results, strict=True):
            np.testing.assert_array_equal(out["id"], b)
            np.testing.assert_array_equal(out["x"], arrays["x"][b])
        np.testing.assert_array_equal(src.read([5])["x"], arrays["x"][[5]])


FIT_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    import keras, numpy as np
    from kseq import MultiInputDataset

    def train(path, **workers):
        keras.utils.set_random_seed(0)
        ds = MultiInputDataset(path, inputs="x", targets="y", batch_size=50, seed=1, **workers)
        model = keras.Sequential([keras.Input((6,), name="x"), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.05), "mse")
        loss = model.fit(ds, epochs=2, shuffle=False, verbose=0).history["loss"]
        return loss, model.get_weights()

    if __name__ == "__main__":
        multiprocessing.set_start_method(sys.argv[2], force=True)
        loss, weights = train(sys.argv[1], workers=2, use_multiprocessing=True)
        inline_loss, inline_weights = train(sys.argv[1])
        assert np.allclose(loss, inline_loss, rtol=1e-5), (loss, inline_loss)
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(weights, inline_weights))
        print("losses", *loss)
    """
)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_fit_with_worker_processes_matches_inline_training(tmp_path, arrays, method):
    """`fit(workers=2, use_multiprocessing=True)` over a compressed HDF5 file (an h5py handle per process)
    trains exactly as inline reading does."""
    y = (arrays["x"] @ np.arange(6, dtype="float32")).astype("float32")
    path = write(tmp_path / "fit.h5", {"x": arrays["x"], "y": y}, compression="gzip")
    script = tmp_path / "fit_script.py"
    script.write_text(FIT_SCRIPT)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, str(script), str(path), method], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(v) for v in out.stdout.split("losses")[1].split()]
    assert losses[1] < losses[0]


class TestErrors:
    def test_missing_file(self, tmp_path):
        with pytest.raises(SourceError, match=r"HDF5 file not found: '.*nope\.h5' \(asked for field\(s\) \['x'\]\)"):
            HDF5Source(tmp_path / "nope.h5", fields=["x"])

    def test_missing_field(self, tmp_path, arrays):
        path = write(tmp_path / "f.h5", arrays)
        with pytest.raises(SourceError, match=r"Field 'img': '.*f\.h5' has no dataset '/img'.*'label', 'x'\]"):
            HDF5Source(path, fields={"img": "img", "x": "x"})

    def test_a_group_is_not_a_field(self, tmp_path, arrays):
        path = write(tmp_path / "g.h5", {"train/x": arrays["x"]})
        with pytest.raises(SourceError, match=r"Field 'train'.*is a group, not a dataset.*\['train/x'\]"):
            HDF5Source(path, fields="train")

    def test_unequal_first_dimensions(self, tmp_path, arrays):
        path = write(tmp_path / "u.h5", {"x": arrays["x"], "short": arrays["id"][:10]})
        with pytest.raises(SourceError, match=r"u\.h5' have unequal first dimensions: \{'short': 10, 'x': 1000\}"):
            HDF5Source(path)

    def test_truncated_file(self, tmp_path, arrays):
        path = write(tmp_path / "t.h5", arrays)
        os.truncate(path, path.stat().st_size // 2)
        with pytest.raises(SourceError, match=r"t\.h5' is truncated \(asked for field\(s\) \['x'\]\)") as info:
            HDF5Source(path, fields=["x"])
        assert isinstance(info.value.__cause__, OSError)

    def test_corrupt_file(self, tmp_path, arrays):
        path = write(tmp_path / "c.h5", arrays)
        with path.open("r+b") as fh:
            fh.seek(8)
            fh.write(b"\xff" * 64)
        with pytest.raises(SourceError, match=r"c\.h5' is corrupt or unreadable \(asked for all fields\)") as info:
            HDF5Source(path)
        assert info.value.__cause__ is not None

    def test_a_corrupt_chunk_fails_at_read_naming_field_and_rows(self, tmp_path, arrays):
        path = write(tmp_path / "z.h5", {"x": arrays["x"]}, compression="gzip")
        with h5py.File(path) as f:
            chunk = f["x"].id.get_chunk_info(1)
        with path.open("r+b") as fh:
            fh.seek(chunk.byte_offset)
            fh.write(b"\x00garbage" * (chunk.size // 8))
        src = HDF5Source(path)
        np.testing.assert_array_equal(src.read([0])["x"], arrays["x"][[0]])
        with pytest.raises(SourceError, match=r"Cannot read field 'x' \(dataset '/x', rows 50 to 99\) of '.*z\.h5'"):
            src.read([60])

    @pytest.mark.parametrize("content", [b"x,y\n1,2\n", b""])
    def test_not_an_hdf5_file(self, tmp_path, content):
        path = tmp_path / "data.csv"
        path.write_bytes(content)
        with pytest.raises(SourceError, match=r"data\.csv' is not an HDF5 file.*python -m kseq pack"):
            Dataset(str(path))

    def test_a_file_changed_after_construction_is_refused(self, tmp_path, arrays):
        """A new process (here: the unpickled copy) finds the file rewritten and refuses to read it."""
        path = write(tmp_path / "r.h5", arrays)
        blob = pickle.dumps(HDF5Source(path, fields=["x"]))
        write(path, {"x": arrays["x"][:10]})
        with pytest.raises(SourceError, match=r"r\.h5' \(fields \['x'\]\) changed after this source was created"):
            pickle.loads(blob).read([0])

    def test_variable_length_strings_are_refused(self, tmp_path):
        with h5py.File(tmp_path / "v.h5", "w") as f:
            f.create_dataset("s", data=["a", "bb"], dtype=h5py.string_dtype())
        with pytest.raises(StructureError, match=r"Field 's'.*variable-length.*fixed-length bytes"):
            HDF5Source(tmp_path / "v.h5")


class TestFileChanges:
    """The file is checked against its construction stamp whenever a handle opens and before every read."""

    @staticmethod
    def edit_in_place(path, offset):
        """Overwrite the first row's bytes (h5py cannot reopen for writing a file this process reads)."""
        time.sleep(0.05)  # past the file system's timestamp granularity
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(b"\xff" * 8)

    @pytest.mark.parametrize("layout", ["contiguous", "gzip"])
    def test_an_edit_in_place_after_a_first_read_is_refused(self, tmp_path, arrays, layout):
        path = write(tmp_path / "e.h5", arrays, **LAYOUTS[layout])
        with h5py.File(path) as f:
            dset = f["x"].id
            offset = dset.get_offset() if dset.get_offset() is not None else dset.get_chunk_info(0).byte_offset
        src = HDF5Source(path, fields=["x"])
        np.testing.assert_array_equal(src.read([1])["x"], arrays["x"][[1]])
        self.edit_in_place(path, offset)
        with pytest.raises(SourceError, match=r"e\.h5' \(fields \['x'\]\) changed.*modified in place"):
            src.read([1])

    def test_a_truncating_rewrite_after_a_first_read_is_refused_not_a_crash(self, tmp_path, arrays):
        """h5py "w" truncates the same inode: reading the old map would be a SIGBUS."""
        path = write(tmp_path / "w.h5", {"x": np.arange(200_000.0).reshape(-1, 8)})
        src = HDF5Source(path)
        assert src.readers == {"x": "memmap"}
        src.read([24_999])
        write(path, {"x": np.arange(10.0)})
        with pytest.raises(SourceError, match=r"w\.h5' .*changed after this source was created \(size"):
            src.read([24_999])

    def test_a_file_replaced_before_its_h5py_handle_opens_is_refused(self, tmp_path, arrays):
        """A memory-mapped field is read first; the chunk-read field opens h5py on the new file later."""
        path = tmp_path / "r.h5"
        with h5py.File(path, "w") as f:
            f["x"] = arrays["x"]
            f.create_dataset("y", data=arrays["id"], chunks=(50,), compression="gzip")
        src = HDF5Source(path)
        src.read([0], fields=["x"])
        with h5py.File(tmp_path / "new.h5", "w") as f:
            f.create_dataset("pad", data=np.full(1000, 7.0))
            f["x"] = arrays["x"] * 100
            f.create_dataset("y", data=arrays["id"] * 100, chunks=(50,), compression="gzip")
        os.replace(tmp_path / "new.h5", path)
        with pytest.raises(SourceError, match=r"r\.h5' .*changed after this source was created \(replaced"):
            src.read([0])


@pytest.mark.skipif(not hasattr(os, "preadv"), reason="os.preadv is not available")
class TestPreadv:
    """Reads of 2 GiB or more: Linux transfers at most 0x7ffff000 bytes per call."""

    @pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="a 3 GiB hole reads fast only from tmpfs")
    def test_a_short_read_is_continued_from_where_it_stopped(self):
        """2 GiB into one aliased 2 MiB buffer from a sparse file on tmpfs: no disk, 2 MiB of memory,
        0.1 s (the same hole on ext4 takes 5 s, so the test needs /dev/shm)."""
        fd, name = tempfile.mkstemp(dir="/dev/shm")
        try:
            os.ftruncate(fd, 3 << 30)
            os.pwrite(fd, b"\x07", (2 << 30) - 1)
            buf = bytearray(2 << 20)
            assert _preadv_all(fd, [memoryview(buf)] * 1024, 0) == 2 << 30
            assert buf[-1] == 7
        finally:
            os.close(fd)
            os.unlink(name)

    def test_only_the_end_of_the_file_stops_a_read(self, tmp_path):
        path = tmp_path / "short.bin"
        path.write_bytes(bytes(range(10)))
        bufs = [memoryview(bytearray(4)) for _ in range(4)]
        fd = os.open(path, os.O_RDONLY)
        try:
            assert _preadv_all(fd, bufs, 0) == 10
        finally:
            os.close(fd)
        assert bytes(bufs[2][:2]) == bytes([8, 9])

    def test_runs_are_split_by_buffer_count_and_bytes(self):
        def _read_groups(starts, size, row, **limit):
            first, stop = _read_runs(np.asarray(starts), size, row, **limit)
            return list(zip(first.tolist(), stop.tolist(), strict=True))

        groups = _read_groups([0, 3000], 3010, row=1 << 20)
        assert groups[0] == (0, 1024)
        assert groups[-1] == (3000, 3010)
        assert [stop - first for first, stop in _read_groups([0], 10, row=1 << 30)] == [1] * 10
        assert {stop - first for first, stop in _read_groups([0], 1022, row=4 << 20)} == {511}  # 511 x 4 MiB < 2 GiB
        assert list(_read_groups([0], 5, row=100, max_bytes=250)) == [(0, 2), (2, 4), (4, 5)]


@pytest.mark.skipif(_aio._new() is None, reason="Linux AIO is not available here")
class TestBatchedReads:
    """NOTE [ batched reads ]: a batch's rows beyond resident_mb in one io_submit, each run scattered to its rows."""

    def test_scattered_runs_land_in_their_buffers(self, tmp_path):
        """1,500 runs (more than one submit of 1,024) of 1-3 rows of 16 bytes, read in a shuffled order into
        an output laid out otherwise: every byte where it belongs."""
        data = np.random.default_rng(0).integers(0, 256, size=(6000, 16), dtype=np.uint8)
        path = tmp_path / "rows.bin"
        path.write_bytes(data.tobytes())
        rng = np.random.default_rng(1)
        first = np.sort(rng.choice(np.arange(0, 6000, 4), 1500, replace=False))
        count = rng.integers(1, 4, size=1500)
        rows = np.concatenate([np.arange(f, f + c) for f, c in zip(first, count, strict=True)])
        place = rng.permutation(rows.size)  # row k of the reads goes to out[place[k]]
        out = np.zeros((rows.size, 16), np.uint8)
        iovecs = np.empty(rows.size, _aio.IOVEC)
        iovecs["base"] = out.ctypes.data + place.astype(np.uint64) * 16
        iovecs["len"] = 16
        starts = np.r_[0, np.cumsum(count)[:-1]]
        fd = os.open(path, os.O_RDONLY)
        try:
            with _aio.context() as ctx:
                got = ctx.read(fd, iovecs, starts, count, first * 16)
        finally:
            os.close(fd)
        np.testing.assert_array_equal(got, count * 16)
        np.testing.assert_array_equal(out[place], data[rows])

    def test_the_end_of_the_file_gives_a_short_read_and_a_bad_descriptor_an_error(self, tmp_path):
        path = tmp_path / "short.bin"
        path.write_bytes(bytes(range(10)))
        out = np.zeros(8, np.uint8)
        iovecs = np.array([(out.ctypes.data, 8)], dtype=_aio.IOVEC)
        fd = os.open(path, os.O_RDONLY)
        with _aio.context() as ctx:
            try:
                assert ctx.read(fd, iovecs, np.array([0]), np.array([1]), np.array([6])).tolist() == [4]
            finally:
                os.close(fd)
            assert out[:4].tolist() == [6, 7, 8, 9]
            with pytest.raises(OSError, match="Bad file descriptor"):
                ctx.read(fd, iovecs, np.array([0]), np.array([1]), np.array([0]))

    def test_pread_fields_use_it_and_fall_back_to_preadv_with_a_warning(self, tmp_path, arrays, monkeypatch):
        monkeypatch.setattr(_aio, "_pool", _aio._Pool())
        src = HDF5Source(write(tmp_path / "a.h5", arrays), resident_mb=0.001)
        assert src.readers == {"x": "pread", "id": "pread", "label": "pread"}
        idx = np.random.default_rng(0).permutation(N)[:300]
        for name, values in src.read(idx).items():
            np.testing.assert_array_equal(values, arrays[name][idx])
        assert _aio._pool.created == 1  # one context, lent three times
        assert len(_aio._pool.idle) == 1
        with pytest.warns(RuntimeWarning, match="Linux AIO stopped working, a test; reading with os.preadv"):
            _aio.disable("a test")
        for name, values in src.read(idx).items():
            np.testing.assert_array_equal(values, arrays[name][idx])
        assert _aio._pool.created == 1
        assert not _aio._pool.idle

    def test_a_kept_pread_batch_keeps_its_rows(self, tmp_path):
        """NOTE [ recycled pread outputs ]: a batch kept (or a slice of it) keeps its buffer; a dropped batch's
        buffer serves a later batch; every batch holds its own rows whatever was read after it."""
        x = np.random.default_rng(0).normal(size=(2048, 256)).astype("float32")  # 256 kB batches of 256 rows
        src = HDF5Source(write(tmp_path / "big.h5", {"x": x}), resident_mb=0.001)
        assert src.readers == {"x": "pread"}
        order = np.random.default_rng(1).permutation(2048).reshape(8, 256)
        kept = src.read(order[0])["x"]
        part = src.read(order[1])["x"][10:20]  # only a slice of batch 1 is kept
        for batch in order[2:]:
            dropped = src.read(batch)["x"]
            np.testing.assert_array_equal(dropped, x[batch])
            dropped[:] = 0  # writable, as np.empty's were; nothing kept sees it
            del dropped
            gc.collect()
        np.testing.assert_array_equal(kept, x[order[0]])
        np.testing.assert_array_equal(part, x[order[1]][10:20])

    @pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mmap threshold")
    def test_pread_batches_do_not_fault_their_pages_in_anew(self, tmp_path):
        """With glibc's mmap threshold at 128 KB, as TensorFlow's fit leaves it, every new 256 kB batch would be
        mapped and faulted in afresh (64 pages); pread batches come from buffers already faulted in."""
        path = write(tmp_path / "big.h5", {"x": np.ones((2048, 256), "float32")})
        script = textwrap.dedent(f"""
            import resource, numpy as np
            from kseq.sources.hdf5 import HDF5Source
            src = HDF5Source({str(path)!r}, resident_mb=0.001)
            batches = np.random.default_rng(0).permutation(2048).reshape(8, 256)
            src.read(batches[0])  # the first batch: descriptor, AIO context, the first buffer
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                for batch in batches:
                    src.read(batch)
            print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 80)
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "KERAS_BACKEND": "numpy"})
        assert out.returncode == 0, out.stderr[-2000:]
        assert float(out.stdout.split()[-1]) < 64 / 4  # per batch; 64+ when each batch is a new mapping

    def test_fit_reuses_a_few_contexts(self, tmp_path, arrays, monkeypatch):
        """TensorFlow runs a PyDataset's Python in native threads whose thread-local storage is dropped after
        every batch: contexts kept per thread were made and destroyed (io_destroy, ~40 ms) per batch."""
        monkeypatch.setattr(_aio, "_pool", _aio._Pool())
        keras = pytest.importorskip("keras")
        y = arrays["x"].sum(axis=1, keepdims=True)
        src = HDF5Source(write(tmp_path / "fit.h5", {"x": arrays["x"], "y": y}), resident_mb=0.001)
        model = keras.Sequential([keras.Input((6,), name="x"), keras.layers.Dense(1)])
        model.compile("adam", "mse")
        model.fit(MultiInputDataset(src, inputs="x", targets="y", batch_size=50, seed=0), epochs=2, verbose=0)
        assert 1 <= _aio._pool.created <= 3  # 40 batches

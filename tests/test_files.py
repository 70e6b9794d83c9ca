"""FileSource: rows that are files (images, .npy, a user's load), bad files, pack from files, and every dataset
kind trained from real JPEG/PNG files in kseq's worker processes."""

import importlib.util
import io
import os
import pickle
import subprocess
import sys
import warnings

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import kseq
from kseq import FileSource
from kseq.errors import SourceError, StructureError, WorkerError
from kseq.sources import HDF5Source

SIZE = 16  # pixels of the images the tests train on


def picture(label, rng, shape=(SIZE, SIZE)):
    """A noisy image whose mean brightness tells its class (class 0 dark, 1 middle, 2 bright)."""
    base = 40 + 80 * label
    return np.clip(base + rng.normal(0, 25, (*shape, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Three class folders of 12 images each, JPEG and PNG mixed, plus a file that is not an image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label, name in enumerate(["ant", "bee", "cat"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            ending = "png" if i % 2 else "jpg"
            Image.fromarray(picture(label, rng)).save(root / name / f"{i:02d}.{ending}")
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


def png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.portable
class TestReading:
    def test_png_pixels_read_back_exactly(self, tmp_path):
        """A lossless file reads back as the uint8 array that was written."""
        arrays = [np.random.default_rng(i).integers(0, 256, (5, 7, 3), dtype=np.uint8) for i in range(3)]
        src = FileSource([png(tmp_path / f"{i}.png", a) for i, a in enumerate(arrays)])
        out = src.read([2, 0])["image"]
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, np.stack([arrays[2], arrays[0]]))

    def test_image_size_resizes_every_image_as_pillow_does(self, tmp_path):
        """image_size=(h, w) gives (h, w, 3) for images of any size, equal to Pillow's bilinear resize."""
        a = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
        b = np.random.default_rng(2).integers(0, 256, (9, 4, 3), dtype=np.uint8)
        src = FileSource([png(tmp_path / "a.png", a), png(tmp_path / "b.png", b)], image_size=(8, 6),
                         decoder="pillow")
        assert src.fields["image"] == ((8, 6, 3), np.dtype(np.uint8))
        expected = np.asarray(Image.fromarray(a).resize((6, 8), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(src.read([0])["image"][0], expected)

    def test_opencv_decodes_the_pixels_pillow_does_and_resizes_without_antialiasing(self, tmp_path):
        """The same JPEG and PNG decode to the same array in both decoders; OpenCV's resize is cv2.INTER_LINEAR."""
        cv2 = pytest.importorskip("cv2")
        rng = np.random.default_rng(3)
        paths = [png(tmp_path / "a.png", picture(1, rng, (20, 30)))]
        Image.fromarray(picture(2, rng, (20, 30))).save(tmp_path / "b.jpg", quality=90)
        paths.append(str(tmp_path / "b.jpg"))
        fast, slow = FileSource(paths, decoder="opencv"), FileSource(paths, decoder="pillow")
        assert (fast.decoder, slow.decoder) == ("opencv", "pillow")
        np.testing.assert_array_equal(fast.read([0, 1])["image"], slow.read([0, 1])["image"])
        resized = FileSource(paths, decoder="opencv", image_size=(8, 12)).read([0, 1])["image"]
        expected = [cv2.resize(a, (12, 8), interpolation=cv2.INTER_LINEAR) for a in slow.read([0, 1])["image"]]
        np.testing.assert_array_equal(resized, np.stack(expected))
        grey = FileSource(paths, decoder="opencv", color_mode="grayscale").read([0])["image"]
        assert grey.shape == (1, 20, 30, 1)

    def test_auto_takes_opencv_where_it_can_and_pillow_for_the_rest(self, tmp_path):
        pytest.importorskip("cv2")
        path = [png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))]
        assert FileSource(path).decoder == "opencv"
        assert FileSource(path, color_mode="rgba").decoder == "pillow"
        assert FileSource(path, interpolation="hamming", image_size=(2, 2)).decoder == "pillow"
        with pytest.raises(SourceError, match=r"decoder='opencv' reads color_mode .*Received color_mode='rgba'"):
            FileSource(path, decoder="opencv", color_mode="rgba")

    def test_grayscale_has_one_channel(self, tmp_path):
        """color_mode="grayscale" converts colour files to one channel."""
        a = np.full((4, 4, 3), 200, np.uint8)
        src = FileSource([png(tmp_path / "a.png", a)], color_mode="grayscale")
        assert src.read([0])["image"].shape == (1, 4, 4, 1)

    def test_from_directory_labels_files_by_their_folder(self, folder):
        """One call: classes are the sorted folders, labels their positions, non-images left out."""
        src = FileSource.from_directory(folder)
        assert src.class_names == ("ant", "bee", "cat")
        assert len(src) == 36
        labels = src.read(np.arange(36))["label"]
        assert labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
        folders = [os.path.basename(os.path.dirname(p)) for p in src.paths]
        assert folders == [src.class_names[y] for y in labels]

    def test_from_csv_paths_relative_to_the_csv_and_other_columns_as_fields(self, tmp_path):
        """A CSV of paths and labels: paths from the CSV's folder, every other column a field."""
        (tmp_path / "img").mkdir()
        for i in range(3):
            png(tmp_path / "img" / f"{i}.png", np.full((2, 2, 3), i * 10, np.uint8))
        pd.DataFrame({"path": [f"img/{i}.png" for i in range(3)], "y": [5, 6, 7], "age": [1.5, 2.5, 3.5]}).to_csv(
            tmp_path / "table.csv", index=False
        )
        src = FileSource.from_csv(tmp_path / "table.csv")
        rows = src.read([1, 2])
        assert sorted(src.fields) == ["age", "image", "y"]
        assert rows["y"].tolist() == [6, 7]
        assert rows["age"].tolist() == [2.5, 3.5]
        assert rows["image"][:, 0, 0, 0].tolist() == [10, 20]

    def test_npy_files(self, tmp_path):
        """load="npy": one .npy per row, dtype and shape of the first file."""
        for i in range(4):
            np.save(tmp_path / f"{i}.npy", np.full((3, 2), i, np.int16))
        src = FileSource([tmp_path / f"{i}.npy" for i in range(4)], load="npy")
        assert src.fields["data"] == ((3, 2), np.dtype(np.int16))
        assert src.read([3, 1])["data"][:, 0, 0].tolist() == [3, 1]

    def test_a_user_load_function(self, tmp_path):
        """load=callable: its array per file, e.g. a text file of numbers."""
        for i in range(3):
            (tmp_path / f"{i}.txt").write_text(f"{i} {i * 2}")
        src = FileSource([tmp_path / f"{i}.txt" for i in range(3)], load=np.loadtxt, field="pair")
        assert src.read([2])["pair"].tolist() == [[2.0, 4.0]]

    def test_pickles_as_paths_not_pixels(self, folder):
        """A pickled source holds paths (small, whatever the images weigh) and reads the same afterwards."""
        src = FileSource.from_directory(folder, image_size=(64, 64))
        blob = pickle.dumps(src)
        assert len(blob) < 200 * len(src)  # 36 images of 64x64x3 would be 442 kB
        np.testing.assert_array_equal(pickle.loads(blob).read([5, 30])["image"], src.read([5, 30])["image"])

    @pytest.mark.parametrize(("hidden", "decoder", "extra"), [
        ("PIL", "pillow", "images"), ("cv2", "opencv", "opencv"), ("cv2", "auto", None), ("PIL", "auto", "images"),
    ])
    def test_a_missing_decoder_names_its_extra(self, tmp_path, hidden, decoder, extra):
        """Without Pillow (or OpenCV), construction fails with the extra to install; auto falls back to Pillow.
        ("PIL", "auto") reads on OpenCV where it is installed: hidden too, nothing decodes."""
        png(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
        hide = "'PIL', 'cv2'" if (hidden, decoder) == ("PIL", "auto") else repr(hidden)
        code = (
            f"import sys\nfor m in [{hide}]: sys.modules[m] = None\n"
            "from kseq import FileSource\n"
            f"try:\n    print(FileSource([{str(tmp_path / 'a.png')!r}], decoder={decoder!r}).decoder)\n"
            "except OSError as e:\n    print(e)\n"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert (f"pip install 'kseq[{extra}]'" if extra else "pillow") in out.stdout, out.stderr


def load_noting_pid(path):
    """A user's load: the array in ``path``, and a note of the process that read it beside the file."""
    with open(f"{path}.{os.getpid()}.pid", "w"):
        pass
    return np.load(path)


@pytest.mark.portable
class TestWhereFilesAreRead:
    def test_files_are_read_in_the_worker_processes(self, tmp_path):
        """With 2 worker processes, every file of an epoch is loaded in a worker, none in the main process."""
        for i in range(16):
            np.save(tmp_path / f"{i}.npy", np.full(3, i, np.float32))
        src = FileSource([tmp_path / f"{i}.npy" for i in range(16)], load=load_noting_pid)
        for note in tmp_path.glob("*.pid"):  # the first file, read once at construction to fix the shape
            note.unlink()
        with kseq.Dataset(src, batch_size=4, seed=0, workers=2, use_multiprocessing=True) as ds:
            seen = np.sort(np.concatenate([ds[i][0]["data"][:, 0] for i in range(len(ds))]))
        readers = {int(p.name.split(".")[-2]) for p in tmp_path.glob("*.pid")}
        assert seen.tolist() == list(range(16))
        assert {p.name.split(".")[0] for p in tmp_path.glob("*.pid")} == {str(i) for i in range(16)}  # (and more:
        # the pool prefetches the next epoch's first batches)
        assert readers
        assert os.getpid() not in readers

    def test_import_kseq_and_reading_npy_files_load_no_pillow(self, tmp_path):
        """Pillow is imported on the first image only: `import kseq` and a source of .npy files never load it."""
        np.save(tmp_path / "a.npy", np.zeros(2))
        code = (
            "import sys, kseq\n"
            f"kseq.FileSource([{str(tmp_path / 'a.npy')!r}], load='npy').read([0])\n"
            "print('PIL' in sys.modules)"
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert out.stdout.strip() == "False", out.stderr


@pytest.mark.portable
class TestBadFiles:
    def test_missing_files_refused_at_construction(self, tmp_path):
        """A path that names no file fails at construction, naming the row and the path."""
        paths = [png(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8)), str(tmp_path / "gone.png")]
        with pytest.raises(SourceError, match=r"1 of 2 files do not exist \(row 1: '.*gone\.png'\)"):
            FileSource(paths)

    def test_a_corrupt_file_names_its_row_and_file_when_read(self, tmp_path):
        """A truncated JPEG passes construction; reading its row raises naming row, file and the fix."""
        good = png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "b.jpg")
        data = (tmp_path / "b.jpg").read_bytes()
        (tmp_path / "b.jpg").write_bytes(data[: len(data) // 2])
        decoders = ["pillow"] + (["opencv"] if importlib.util.find_spec("cv2") else [])  # the opencv extra
        for decoder in decoders:
            src = FileSource([good, str(tmp_path / "b.jpg")], image_size=(4, 4), decoder=decoder)
            src.read([0])
            with pytest.raises(SourceError, match=r"Row 1, file '.*b\.jpg' cannot be read .*on_error='skip'"):
                src.read([0, 1])

    def test_another_shape_without_resize_names_row_and_the_fix(self, tmp_path):
        """Without image_size every image must have the first one's size; another names row, shapes and fix."""
        paths = [png(tmp_path / f"{n}.png", np.zeros((h, 4, 3), np.uint8)) for n, h in (("a", 4), ("b", 5))]
        src = FileSource(paths)
        expected = r"Row 1, .*expected shape \(4, 4, 3\).*received \(5, 4, 3\)\. Pass image_size"
        with pytest.raises(SourceError, match=expected):
            src.read([1])

    def test_skip_zeroes_bad_rows_weights_them_zero_and_logs_them(self, tmp_path):
        """on_error="skip": a bad row reads as zeros with image_ok 0, is warned about and listed in bad_files()."""
        paths = [png(tmp_path / f"{i}.png", np.full((3, 3, 3), 9, np.uint8)) for i in range(3)]
        (tmp_path / "1.png").write_bytes(b"not a png")
        src = FileSource(paths, on_error="skip")
        with pytest.warns(UserWarning, match="skipped row 1"):
            rows = src.read([0, 1, 2])
        assert rows["image_ok"].tolist() == [1.0, 0.0, 1.0]
        assert rows["image"][1].max() == 0
        assert rows["image"][0].min() == 9
        assert [(b.row, os.path.basename(b.path)) for b in src.bad_files()] == [(1, "1.png")]

    def test_skip_logs_missing_files_at_construction(self, tmp_path):
        """on_error="skip" with a missing file: warned at construction, listed, zero weight."""
        paths = [png(tmp_path / "a.png", np.ones((2, 2, 3), np.uint8)), str(tmp_path / "gone.png")]
        with pytest.warns(UserWarning, match="1 of 2 files do not exist"):
            src = FileSource(paths, on_error="skip")
        assert [b.row for b in src.bad_files()] == [1]
        assert src.read([1])["image_ok"].tolist() == [0.0]

    def test_bad_files_found_in_worker_processes_are_counted_in_the_main_one(self, folder):
        """Bad files met by two worker processes are listed by bad_files() in the process that trains."""
        src = FileSource.from_directory(folder, image_size=(SIZE, SIZE), on_error="skip")
        bad = [3, 20]
        for row in bad:
            with open(src.paths[row], "wb") as f:
                f.write(b"broken")
        kwargs = {"inputs": "image", "targets": "label", "sample_weight": "image_ok", "batch_size": 6, "seed": 0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with kseq.MultiInputDataset(src, workers=2, use_multiprocessing=True, **kwargs) as ds:
                weights = np.concatenate([ds[i][2] for i in range(len(ds))])
        assert (weights == 0).sum() == 2
        assert [b.row for b in src.bad_files()] == bad

    def test_a_bad_file_in_a_worker_reaches_fit_named(self, folder):
        """With on_error="raise", a corrupt file read by a worker process stops fit naming the row and file."""
        src = FileSource.from_directory(folder, image_size=(SIZE, SIZE))
        with open(src.paths[7], "wb") as f:
            f.write(b"broken")
        model = classifier()
        ds = kseq.MultiInputDataset(src, inputs="image", targets="label", batch_size=6, seed=0, **POOL)
        # a WorkerError; TensorFlow's fit wraps it in its own error type, with the message kept
        with ds, pytest.raises(Exception, match=r"Row 7, file '.*ant.*' cannot be read") as caught:
            model.fit(ds.for_model(model), epochs=1, verbose=0, shuffle=False)
        assert keras.backend.backend() == "tensorflow" or caught.type is WorkerError

    def test_bad_options_refused(self, tmp_path):
        """A bad option fails at construction with what was expected."""
        path = png(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
        with pytest.raises(StructureError, match="on_error"):
            FileSource([path], on_error="ignore")
        with pytest.raises(StructureError, match=r"image_size must be \(height, width\)"):
            FileSource([path], image_size=8)
        with pytest.raises(StructureError, match="columns have 2 rows; there are 1 paths"):
            FileSource([path], columns={"y": [0, 1]})


@pytest.mark.portable
class TestPack:
    def test_pack_a_folder_decodes_in_processes_into_the_same_arrays(self, folder, tmp_path):
        """pack(path, FileSource) by 2 processes writes exactly what the files read as, with a progress bar."""
        src = FileSource.from_directory(folder, image_size=(SIZE, SIZE))
        bar = io.StringIO()
        packed = kseq.pack(tmp_path / "images.h5", src, workers=2, progress=bar)
        assert isinstance(packed, HDF5Source)
        everything = src.read(np.arange(len(src)))
        for name in ("image", "label"):
            np.testing.assert_array_equal(packed.read(np.arange(len(src)))[name], everything[name])
        assert "36/36 rows" in bar.getvalue()

    def test_pack_a_csv_of_paths_and_labels(self, folder, tmp_path):
        """A CSV of paths and labels packs into image and label arrays."""
        src = FileSource.from_directory(folder)
        rel = [os.path.relpath(p, folder) for p in src.paths]
        labels = src.read(np.arange(len(src)))["label"]
        pd.DataFrame({"path": rel, "label": labels}).to_csv(folder / "t.csv", index=False)
        packed = kseq.pack(tmp_path / "t.h5", FileSource.from_csv(folder / "t.csv"), progress=False)
        assert packed.fields["image"] == ((SIZE, SIZE, 3), np.dtype(np.uint8))
        np.testing.assert_array_equal(packed.read([35])["image"], src.read([35])["image"])

    def test_pack_with_skip_warns_with_the_count(self, folder, tmp_path):
        """Bad files packed with on_error="skip" are zeros with image_ok 0, and pack warns with their count."""
        src = FileSource.from_directory(folder, on_error="skip")
        with open(src.paths[4], "wb") as f:
            f.write(b"broken")
        with pytest.warns(UserWarning, match="pack wrote 1 bad files of 36"):
            packed = kseq.pack(tmp_path / "s.h5", src, workers=2, progress=False)
        assert packed.read(np.arange(36))["image_ok"].tolist() == [1.0] * 4 + [0.0] + [1.0] * 31


def classifier():
    image = keras.Input((SIZE, SIZE, 3), name="image")
    h = keras.layers.Rescaling(1 / 255)(image)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(3, activation="softmax", name="label")(h)
    model = keras.Model(image, out)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    return model


def encoder(name):
    image = keras.Input((SIZE, SIZE, 3), name=name)
    h = keras.layers.Rescaling(1 / 255)(image)
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return image, keras.layers.Dense(4)(h)


POOL = {"workers": 2, "use_multiprocessing": True}


@pytest.mark.portable
class TestEveryKindTrainsFromFiles:
    """Each dataset kind, over real JPEG/PNG files decoded in two worker processes, through a real fit."""

    def test_multi_input_with_an_image_and_a_tabular_input(self, folder):
        """An image and a tabular column in, the class out: the pooled batches are the files, and fit learns."""
        src = FileSource.from_directory(folder, image_size=(SIZE, SIZE))
        labels = src.read(np.arange(len(src)))["label"]
        columns = {"label": labels, "size": np.ones((36, 2), "float32")}
        tabular = FileSource(src.paths, image_size=(SIZE, SIZE), columns=columns)
        image = keras.Input((SIZE, SIZE, 3), name="image")
        size = keras.Input((2,), name="size")
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(image))
        out = keras.layers.Dense(3, activation="softmax", name="label")(keras.layers.Concatenate()([h, size]))
        model = keras.Model([image, size], out)
        model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
        ds = kseq.MultiInputDataset(tabular, inputs=["image", "size"], targets="label", batch_size=6, seed=0, **POOL)
        with ds:
            x, _y = ds[0]
            rows = ds.sampler.indices(0, 0)
            np.testing.assert_array_equal(x["image"], tabular.read(rows)["image"])
            history = model.fit(ds.for_model(model), epochs=8, verbose=0, shuffle=False).history["loss"]
        assert history[-1] < 0.7 * history[0]

    def test_siamese_pairs_over_image_files(self, folder):
        """Both sides of every pair are the decoded files of the rows the sampler drew; fit trains."""
        src = FileSource.from_directory(folder, image_size=(SIZE, SIZE))
        left, a = encoder("left")
        right, b = encoder("right")
        distance = keras.layers.Lambda(lambda t: keras.ops.sum(keras.ops.square(t[0] - t[1]), axis=1, keepdims=True))
        out = keras.layers.Dense(1, activation="sigmoid")(distance([a, b]))
        model = keras.Model({"left": left, "right": right}, out)
        model.compile("adam", "binary_crossentropy")
        with kseq.SiamesePairDataset(src, label="label", fields="image", batch_size=8, seed=0, **POOL) as ds:
            x, y = ds[0]
            rows = ds.sampler.indices(0, 0)
            np.testing.assert_array_equal(x["left"], src.read(rows[:, 0])["image"])
            np.testing.assert_array_equal(x["right"], src.read(rows[:, 1])["image"])
            labels = src.read(np.arange(36))["label"]
            assert y.tolist() == (labels[rows[:, 0]] == labels[rows[:, 1]]).astype("float32").tolist()
            history = model.fit(ds.for_model(model), epochs=1, verbose=0, shuffle=False).history["loss"]
        assert np.isfinite(history[0])

    def test_triplets_over_image_files(self, folder):
        """Anchor, positive and negative are the decoded files of the drawn rows; fit trains."""
        src = FileSource.from_directory(folder, image_size=(SIZE, SIZE))
        names = ("anchor", "positive", "negative")
        parts = [encoder(n) for n in names]
        out = keras.layers.Concatenate(name="embeddings")([e for _, e in parts])
        model = keras.Model({n: i for n, (i, _) in zip(names, parts, strict=True)}, out)
        model.compile("adam", lambda y, p: keras.ops.mean(keras.ops.square(p[:, :4] - p[:, 4:8])))
        with kseq.TripletDataset(src, label="label", fields="image", targets="zeros", batch_size=8, seed=0,
                                 **POOL) as ds:
            batch = ds[0]
            rows = ds.sampler.indices(0, 0)
            labels = src.read(np.arange(36))["label"]
            for j, name in enumerate(names):
                np.testing.assert_array_equal(batch[0][name], src.read(rows[:, j])["image"])
            assert (labels[rows[:, 0]] == labels[rows[:, 1]]).all()
            assert (labels[rows[:, 0]] != labels[rows[:, 2]]).all()
            history = model.fit(ds.for_model(model), epochs=1, verbose=0, shuffle=False).history["loss"]
        assert np.isfinite(history[0])

    def test_captions_whose_images_are_files(self, folder):
        """CaptionDataset(features=FileSource): pixels decoded in workers, beside each caption; fit trains."""
        src = FileSource.from_directory(folder, image_size=(SIZE, SIZE))
        labels = src.read(np.arange(36))["label"]
        captions = [[[1, 3 + int(k), 2]] for k in labels]  # start, the class word, end
        model = caption_model(keras.Input((SIZE, SIZE, 3), name="transfer_values_input"))
        with kseq.CaptionDataset(src, captions, features_field="image", batch_size=6, seed=0, fixed_length=True,
                                 **POOL) as ds:
            x, _y, _ = ds[0]
            rows = ds.image_of[ds.sampler.indices(0, 0)]
            np.testing.assert_array_equal(x["transfer_values_input"], src.read(rows)["image"])
            assert (x["decoder_input"][:, 1] == labels[rows] + 3).all()
            history = model.fit(ds.for_model(model), epochs=1, verbose=0, shuffle=False).history["loss"]
        assert np.isfinite(history[0])

    def test_captions_from_features_extracted_by_a_keras_application(self, folder, tmp_path):
        """Files -> a keras.applications encoder -> pack -> CaptionDataset, as docs/guides/files.md shows."""
        src = FileSource.from_directory(folder, image_size=(32, 32))
        cnn = keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), include_top=False, pooling="avg", weights=None, include_preprocessing=True
        )
        with kseq.Dataset(src, batch_size=8, shuffle=False, **POOL) as images:
            features = kseq.pack(
                tmp_path / "features.h5",
                ({"features": cnn.predict_on_batch(images[i][0]["image"])} for i in range(len(images))),
                length=len(src),
                progress=False,
            )
        stored = features.read(np.arange(36))["features"]
        direct = cnn.predict_on_batch(src.read(np.arange(4))["image"])
        np.testing.assert_allclose(stored[:4], direct, rtol=1e-4, atol=1e-5)
        labels = src.read(np.arange(36))["label"]
        model = caption_model(keras.Input(stored.shape[1:], name="transfer_values_input"))
        captions = [[[1, 3 + int(k), 2]] for k in labels]
        ds = kseq.CaptionDataset(features, captions, batch_size=6, seed=0, fixed_length=True)
        history = model.fit(ds.for_model(model), epochs=1, verbose=0, shuffle=False).history["loss"]
        assert np.isfinite(history[0])


def caption_model(features):
    h = features
    if len(features.shape) == 4:
        h = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(h))
    state = keras.layers.Dense(8)(h)
    tokens = keras.Input((None,), name="decoder_input", dtype="int32")
    seq = keras.layers.GRU(8, return_sequences=True)(keras.layers.Embedding(8, 8)(tokens), initial_state=state)
    out = keras.layers.Dense(8, name="decoder_output")(seq)
    model = keras.Model([features, tokens], out)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model

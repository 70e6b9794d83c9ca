"""Files: an epoch of JPEG files decoded, resized and batched by 2 workers; kseq vs tf.data vs torch; then packed.

The benchmark writes ``FILES`` JPEGs of 224 x 224 (quality 90, two class folders), photo-like:
smooth random shapes and gradients with fine texture and sensor-like noise (about 20 kB each, as
photos of that size are; flat colour would compress to almost nothing and decode unrealistically
fast). Every loader reads the folder, decodes each file, resizes it to 160 x 160 (bilinear) and
batches 64 images, shuffled, with 2 workers, and the epoch's batches are consumed directly (what
``fit`` asks of a data pipeline):

* kseq: ``Dataset(FileSource.from_directory(root, image_size=(160, 160), decoder=...), workers=2,
  use_multiprocessing=True)``, once with Pillow and once with OpenCV (NOTE [ two image decoders ]) in
  kseq's 2 worker processes, uint8 batches through shared memory;
* the bound: the same decode and resize (OpenCV, or Pillow without it) in one process with nothing
  else, times 2: what 2 cores do on this work;
* tf.data: ``keras.utils.image_dataset_from_directory(root, image_size=(160, 160))``, its map limited to 2
  threads (``threading.private_threadpool_size = 2``) and prefetched; TensorFlow's own JPEG decoder
  and resize; it returns float32 batches, as Keras makes it;
* torch: ``DataLoader(num_workers=2, persistent_workers=True)`` over a map-style dataset that opens
  each file with Pillow, converts to RGB and resizes as kseq does (the torchvision ImageFolder recipe
  without torchvision);
* Grain (``image_dataset_from_directory(format="grain")``): only where grain is installed.

Then ``kseq.pack`` decodes the folder once into an HDF5 file of uint8 arrays (2 processes; its rate is
reported), and the same shuffled epoch is read from that file, inline, through a memory map.

kseq's pool, which in training decodes the first batches of the next epoch while the current one
ends, is closed before each measured epoch: its epochs start cold, pool start included, like the
others', and its workers decode nothing while another loader is measured.

Every figure is an epoch measured in ``REPEATS`` turns after one warm-up epoch (each loader once per
turn, in order, so other load on the machine hits them alike); the best turn is reported and the row's
name carries the range of the turns' ratios to tf.data. Images/s per core divides by the 2 workers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Result, in_turns, spread

SUITE = "files"
SIZE = 224
RESIZE = (160, 160)
BATCH = 64
WORKERS = 2
REPEATS = 3


def photo(rng: np.random.Generator) -> np.ndarray:
    """A 224 x 224 RGB image with the statistics of a photo: smooth regions, edges, texture and noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    image = np.empty((SIZE, SIZE, 3), np.float32)
    for c in range(3):  # a smooth background: a few low-frequency waves and a gradient
        a, b, f, g = rng.uniform(0, 1, 4)
        image[..., c] = 110 + 60 * np.sin(2 * np.pi * (f * 2 * xx + a)) * np.cos(2 * np.pi * (g * 2 * yy + b))
        image[..., c] += 40 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))
    for _ in range(6):  # objects: ellipses of another colour, with hard edges
        cy, cx, ry, rx = rng.uniform(0, 1, 4) * [1, 1, 0.3, 0.3] + [0, 0, 0.05, 0.05]
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image[inside] = rng.uniform(0, 255, 3) + 20 * np.sin(40 * xx[inside, None] + 30 * yy[inside, None])
    image += rng.normal(0, 6, image.shape)  # sensor noise and fine texture
    return np.clip(image, 0, 255).astype(np.uint8)


def write_folder(root: Path, count: int) -> float:
    """``count`` JPEGs in two class folders; returns the mean file size in bytes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(count):
        path = root / ("a" if i % 2 else "b") / f"{i:05d}.jpg"
        Image.fromarray(photo(rng)).save(path, quality=90)
        total += path.stat().st_size
    return total / count


def kseq_loader(root: Path, decoder: str) -> Callable[[], int]:
    from kseq import FileSource
    from kseq.datasets.base import Dataset

    source = FileSource.from_directory(root, image_size=RESIZE, decoder=decoder)
    ds = Dataset(source, batch_size=BATCH, seed=0, workers=WORKERS, use_multiprocessing=True)
    (x,) = ds[0]
    if x["image"].shape != (BATCH, *RESIZE, 3) or x["image"].dtype != np.uint8:
        raise AssertionError(f"kseq batch {x['image'].shape} {x['image'].dtype}")
    ds.on_epoch_end()

    def epoch() -> int:
        ds.close()  # a cold start, as the others have: no batches decoded ahead during another loader's turn
        return _epoch_images(ds)

    return epoch


def _epoch_images(ds: Any) -> int:
    """One epoch of a kseq dataset of images, read in order: the number of images."""
    images = 0
    for i in range(len(ds)):
        images += len(ds[i][0]["image"])
    ds.on_epoch_end()
    return images


def decode_bound(root: Path) -> Callable[[], int]:
    """What the cores do on this work alone: the files decoded and resized in one process, no batching, no
    transport, counted twice (2 cores); the rate any 2-worker loader can at best reach here."""
    from kseq import FileSource

    source = FileSource.from_directory(root, image_size=RESIZE)

    def epoch() -> int:
        start, images = time.perf_counter(), 0
        while time.perf_counter() - start < 2.0 and images < len(source):  # 2 s of decoding is plenty
            source.read(np.arange(images, min(images + BATCH, len(source))))
            images = min(images + BATCH, len(source))
        # The caller divides by this epoch's time: report 2x the images, as 2 cores would decode.
        return WORKERS * images

    return epoch


def packed_loader(path: Path) -> Callable[[], int]:
    from kseq.datasets.base import Dataset
    from kseq.sources import HDF5Source

    ds = Dataset(HDF5Source(path), batch_size=BATCH, seed=0)
    return lambda: _epoch_images(ds)


def tf_loader(root: Path, fmt: str = "tf") -> Callable[[], int]:
    import keras
    import tensorflow as tf

    kwargs = {} if fmt == "tf" else {"format": fmt}
    ds = keras.utils.image_dataset_from_directory(root, image_size=RESIZE, batch_size=BATCH, shuffle=True, seed=0,
                                                  verbose=False, **kwargs)
    if fmt == "tf":
        options = tf.data.Options()
        options.threading.private_threadpool_size = WORKERS
        ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    def epoch() -> int:
        return sum(int(x.shape[0]) for x, _ in ds)

    return epoch


class _PillowFolder:
    """A map-style torch dataset: Pillow open, RGB, bilinear resize, uint8 array, label."""

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            rgb = image.convert("RGB").resize((RESIZE[1], RESIZE[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb), self.labels[i]


def torch_loader(root: Path) -> Callable[[], int]:
    import torch.utils.data

    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    labels = [0 if Path(p).parent.name == "a" else 1 for p in paths]
    loader = torch.utils.data.DataLoader(_PillowFolder(paths, labels), batch_size=BATCH, shuffle=True,
                                         num_workers=WORKERS, persistent_workers=True)

    def epoch() -> int:
        return sum(int(x.shape[0]) for x, _ in loader)

    return epoch


def timed(epoch: Callable[[], int]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        images = epoch()
        return images / (time.perf_counter() - start)

    return run


def run(quick: bool = False) -> list[Result]:
    count = 512 if quick else int(os.environ.get("KSEQ_BENCH_FILES", "10000"))
    repeats = 2 if quick else REPEATS
    scratch = Path(tempfile.mkdtemp(prefix="kseq-bench-files-"))
    try:
        root = scratch / "images"
        start = time.perf_counter()
        mean_bytes = write_folder(root, count)
        print(f"files: wrote {count} JPEGs of {SIZE}x{SIZE}, {mean_bytes / 1e3:.1f} kB each on average, "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        loaders: dict[str, Callable[[], int]] = {"tf.data image_dataset_from_directory": tf_loader(root)}
        loaders["kseq FileSource, 2 processes, Pillow"] = kseq_loader(root, "pillow")
        try:
            loaders["kseq FileSource, 2 processes, OpenCV"] = kseq_loader(root, "opencv")
        except OSError:
            print("files: OpenCV not installed (the opencv extra), its row is left out")
        loaders["bound: OpenCV decode + resize, 1 process, x2"] = decode_bound(root)
        try:
            loaders["torch DataLoader + Pillow, 2 workers"] = torch_loader(root)
        except ImportError:
            print("files: torch not installed, its row is left out")
        try:
            import grain  # noqa: F401 - only to know whether it is there

            loaders["grain image_dataset_from_directory"] = tf_loader(root, "grain")
        except ImportError:
            print("files: grain not installed, its row is left out")
        from kseq import FileSource, pack

        start = time.perf_counter()
        pack(scratch / "images.h5", FileSource.from_directory(root, image_size=RESIZE), workers=WORKERS,
             progress=False)
        pack_rate = count / (time.perf_counter() - start)
        loaders["kseq packed HDF5, inline"] = packed_loader(scratch / "images.h5")
        for epoch in loaders.values():
            epoch()  # the warm-up epoch: pools started, files in the page cache
        values = in_turns({name: timed(epoch) for name, epoch in loaders.items()}, repeats)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    baseline = "tf.data image_dataset_from_directory"
    rows = [Result(SUITE, f"{baseline} {spread(values[baseline])}", max(values[baseline]), "images/s")]
    for name, turns in values.items():
        if name != baseline:
            best = max(turns)
            rows.append(Result(SUITE, f"{name} {spread(turns, values[baseline])}", best, "images/s", baseline,
                               best / max(values[baseline])))
    per_core = {name: max(turns) / WORKERS for name, turns in values.items()}
    rows += [Result(SUITE, f"per worker core: {name}", rate, "images/s") for name, rate in per_core.items()]
    rows.append(Result(SUITE, f"pack {count} files, 2 processes (1 run)", pack_rate, "images/s"))
    return rows

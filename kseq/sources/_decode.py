"""Turning one file into one array: images through OpenCV or Pillow, ``.npy`` through numpy, or a user's ``load``.

# NOTE [ two image decoders ]
Pillow (the ``images`` extra) reads every format and mode, and its resize antialiases: a bilinear
downscale averages over a support widened by the scale factor. OpenCV (the ``opencv`` extra,
``opencv-python-headless``) decodes with libjpeg-turbo and libpng as Pillow does, so the same file
gives the same pixels before any resize, and its ``INTER_LINEAR`` samples 4 pixels per output pixel,
as ``tf.image.resize`` (antialias off, what ``keras.utils.image_dataset_from_directory`` uses) does.
Measured in one process on this project's benchmark JPEGs (224 x 224 to 160 x 160): Pillow 1.17 ms an
image (0.51 ms of it the decode), OpenCV 0.37 ms. ``decoder="auto"`` (the default) takes OpenCV where
it is installed and does what is asked (``rgb`` or ``grayscale``; ``nearest``, ``bilinear``,
``bicubic`` or ``lanczos``), Pillow otherwise; ``FileSource.decoder`` says which, and passing
``decoder="pillow"`` or ``"opencv"`` pins it (a resized pixel differs between the two).
OpenCV returns a truncated JPEG's missing rows as grey, with a warning on stderr, where Pillow
raises: a JPEG without its end-of-image marker in its last 4 kB is refused as truncated here.
OpenCV's EXIF rotation is turned off (``IMREAD_IGNORE_ORIENTATION``), as Pillow and tf.data ignore
it. In kseq's worker processes OpenCV runs on one thread (the pool is the parallelism).

Both are imported here on first use only, so ``import kseq`` and a worker that reads no image load
neither.

Example:
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/a.png"
    >>> pillow().fromarray(np.zeros((4, 6), "uint8")).save(path)
    >>> image_header(path), read_image(path, (2, 3), "rgb", "bilinear").shape
    ((4, 6), (2, 3, 3))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from kseq.errors import SourceError

__all__ = [
    "COLOR_MODES", "DECODERS", "INTERPOLATIONS", "choose_decoder", "image_header", "opencv", "pillow", "read_image",
    "read_image_opencv", "read_npy",
]

# color_mode (named as in keras.utils.image_dataset_from_directory) -> (Pillow mode, channels)
COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1), "rgba": ("RGBA", 4)}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
DECODERS = ("auto", "pillow", "opencv")
# interpolation -> OpenCV's flag; "box" and "hamming" are Pillow's only (NOTE [ two image decoders ])
_OPENCV_INTERPOLATIONS = {"nearest": "INTER_NEAREST", "bilinear": "INTER_LINEAR", "bicubic": "INTER_CUBIC",
                          "lanczos": "INTER_LANCZOS4"}
_OPENCV_MODES = ("rgb", "grayscale")
_JPEG_END_WINDOW = 4096  # bytes at a JPEG's end searched for its end-of-image marker


def pillow() -> Any:
    """``PIL.Image``, or a SourceError naming the extra that installs it."""
    try:
        from PIL import Image  # the images extra, on first use
    except ImportError as e:
        msg = (
            "Decoding images needs Pillow, which is not installed. Expected `import PIL` to work. "
            "Install it with the images extra: pip install 'kseq[images]' (or pip install pillow)."
        )
        raise SourceError(msg) from e
    return Image


def opencv() -> Any:
    """``cv2``, or a SourceError naming the extra that installs it."""
    try:
        import cv2  # the opencv extra, on first use
    except ImportError as e:
        msg = (
            "decoder='opencv' needs OpenCV, which is not installed. Expected `import cv2` to work. Install it with "
            "the opencv extra: pip install 'kseq[opencv]' (or pip install opencv-python-headless), or pass "
            "decoder='pillow'."
        )
        raise SourceError(msg) from e
    if os.environ.get("KSEQ_WORKER_PROCESS") and cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)  # a kseq worker process: the pool is the parallelism
    return cv2


def choose_decoder(decoder: str, color_mode: str, interpolation: str) -> str:
    """``"pillow"`` or ``"opencv"`` for ``decoder`` (``"auto"``: OpenCV where installed and able; NOTE above)."""
    able = color_mode in _OPENCV_MODES and interpolation in _OPENCV_INTERPOLATIONS
    if decoder == "pillow":
        return "pillow"
    if decoder == "opencv":
        if not able:
            msg = (
                f"decoder='opencv' reads color_mode {_OPENCV_MODES} with interpolation "
                f"{tuple(_OPENCV_INTERPOLATIONS)}. Received color_mode={color_mode!r}, "
                f"interpolation={interpolation!r}. Pass decoder='pillow' (or 'auto') for those."
            )
            raise SourceError(msg)
        opencv()
        return "opencv"
    if able:
        try:
            opencv()
        except SourceError:
            return "pillow"
        return "opencv"
    return "pillow"


def read_image_opencv(path: str, size: tuple[int, int] | None, color_mode: str, interpolation: str) -> np.ndarray:
    """:func:`read_image` through OpenCV (NOTE [ two image decoders ])."""
    cv2 = opencv()
    data = np.fromfile(path, np.uint8)
    grey = color_mode == "grayscale"
    flags = (cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(data, flags)
    if image is None:
        msg = "not an image OpenCV can decode"
        raise ValueError(msg)
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-_JPEG_END_WINDOW:].tobytes():
        msg = "truncated JPEG: no end-of-image marker"
        raise ValueError(msg)
    if size is not None and image.shape[:2] != tuple(size):
        flag = getattr(cv2, _OPENCV_INTERPOLATIONS[interpolation])
        image = cv2.resize(image, (size[1], size[0]), interpolation=flag)
    if grey:
        return image[..., None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_header(path: str) -> tuple[int, int]:
    """``(height, width)`` of the image at ``path``, from its header (nothing is decoded)."""
    with pillow().open(path) as image:
        width, height = image.size
    return height, width


def read_image(path: str, size: tuple[int, int] | None, color_mode: str, interpolation: str) -> np.ndarray:
    """The image at ``path``: ``(height, width, channels)`` uint8 in ``color_mode``, resized to ``size``."""
    image_module = pillow()
    mode, _ = COLOR_MODES[color_mode]
    with image_module.open(path) as image:
        image.load()  # decode here, inside the `with`: a truncated file raises now, naming this file
        converted = image if image.mode == mode else image.convert(mode)
        if size is not None and converted.size != (size[1], size[0]):
            resample = getattr(image_module.Resampling, interpolation.upper())
            converted = converted.resize((size[1], size[0]), resample)
        array = np.asarray(converted)
    return array[..., None] if array.ndim == 2 else array


def read_npy(path: str) -> np.ndarray:
    """The array stored in the ``.npy`` file at ``path`` (no pickled objects)."""
    return np.load(path, allow_pickle=False)


def npy_header(path: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of the ``.npy`` file at ``path``, from its header (memory-mapped, nothing read)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return tuple(array.shape), array.dtype


def call_load(load: Callable[[str], Any], path: str) -> np.ndarray:
    """``np.asarray(load(path))``."""
    return np.asarray(load(path))

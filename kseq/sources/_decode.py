"""Turning one file into one array: images through Pillow, ``.npy`` through numpy, or a user's ``load``.

Pillow is an extra (``pip install 'kseq[images]'``) and is imported here on first use only, so
``import kseq`` and a worker that reads no image load no Pillow.

Example:
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/a.png"
    >>> pillow().fromarray(np.zeros((4, 6), "uint8")).save(path)
    >>> image_header(path), read_image(path, (2, 3), "rgb", "bilinear").shape
    ((4, 6), (2, 3, 3))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from kseq.errors import SourceError

__all__ = ["COLOR_MODES", "INTERPOLATIONS", "image_header", "pillow", "read_image", "read_npy"]

# color_mode (named as in keras.utils.image_dataset_from_directory) -> (Pillow mode, channels)
COLOR_MODES = {"rgb": ("RGB", 3), "grayscale": ("L", 1), "rgba": ("RGBA", 4)}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


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

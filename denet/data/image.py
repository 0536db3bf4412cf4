"""Safe image and label-map loading: any failure becomes a ``DataError`` that names the file.

Pixels are not rotated by EXIF orientation: COCO and VOC annotate the stored pixel grid.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from ..errors import DataError

# Modes that hold one grey channel; everything else is treated as colour.
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _open(path):
    try:
        with warnings.catch_warnings():
            # a decompression-bomb warning should not become a worker crash; huge is still legal
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # decode now so a truncated file fails here, not later
        return img
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as err:
        raise DataError(f"{path}: cannot read image ({err})") from None


def image_header(path):
    """``(mode, (width, height))`` from the header only, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.mode, img.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as err:
        raise DataError(f"{path}: cannot read image ({err})") from None


def is_gray(mode: str) -> bool:
    return mode in GRAY_MODES


def load_image(path, channels: int = 3) -> Image.Image:
    """Decode ``path`` as an 8-bit PIL image with ``channels`` (1 = ``L``, 3 = ``RGB``)."""
    img = _open(path)
    try:
        if img.mode.startswith("I;16") or img.mode in ("I", "F"):
            # 16-bit and float greys: scale the full range down to 8 bits instead of clipping
            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode != "F" and arr.max() > 255 else 255.0
            if img.mode == "F":
                top = 1.0 if arr.max() <= 1.0 else 255.0
            img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
        target = "L" if channels == 1 else "RGB"
        if img.mode != target:
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA" if target == "RGB" else "LA")
            img = img.convert(target)
        return img
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot convert image ({err})") from None


def load_label_map(path) -> Image.Image:
    """A segmentation label PNG as an ``L`` image of class indices (255 = ignore).

    Palette PNGs keep their indices (not the palette colours)."""
    img = _open(path)
    if img.mode in ("L", "P"):
        return Image.fromarray(np.asarray(img, dtype=np.uint8), "L")
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(img)
        if arr.max() > 255:
            raise DataError(f"{path}: label map holds values above 255")
        return Image.fromarray(arr.astype(np.uint8), "L")
    raise DataError(
        f"{path}: label map has mode {img.mode}; expected a single-channel (L or P) "
        "PNG of class indices"
    )

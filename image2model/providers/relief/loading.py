"""Input: open an image upright, small and 8-bit, whatever its format or size."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageOps

from image2model.media.images import load_checked

SOURCE_MAX_SIDE = 1600  # working copy of the input; the texture (at most 1024) is cropped from it

_RESAMPLABLE = {"RGB", "RGBA", "L", "LA", "I", "F", "CMYK", "RGBX", "RGBa", "La", "YCbCr", "LAB", "HSV"}


def load_image(path: str | os.PathLike, *, max_side: int = SOURCE_MAX_SIDE) -> Image.Image:
    """Open an image file upright and no bigger than needed.

    JPEGs are decoded at a reduced DCT scale (`draft`), so a 48-megapixel photo never
    exists in memory at full size; other formats are reduced right after decoding.
    """
    pillow_heif.register_heif_opener()
    with Image.open(path) as im:
        w, h = im.size
        scale = max_side / max(w, h)
        if scale < 1 and im.format == "JPEG":
            im.draft(im.mode, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        load_checked(im, Path(path).name)
        upright = _upright(shrink(im, max_side))
        return upright.copy() if upright is im else upright  # must outlive the open file


def shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the long side is at most `max_side` (cheaply: reduce, then resample)."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    if img.mode not in _RESAMPLABLE:
        img = _to_8bit(img)
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB, or RGBA when the image carries transparency."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _scale_to_l(img).convert("RGB")
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if "A" in mode or "a" in mode or "transparency" in img.info:
        return img.convert("RGBA")
    return img.convert("RGB")


def _scale_to_l(img: Image.Image) -> Image.Image:
    """High-bit-depth greyscale to 8 bits: 16-bit ranges divide by 257, others stretch."""
    a = np.asarray(img, dtype=np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scaled = a / 257.0
    elif img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = a
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = a / 257.0
    else:
        scaled = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def prepare_source(image: Image.Image) -> Image.Image:
    """The working copy: upright, 8-bit RGB/RGBA, long side at most SOURCE_MAX_SIDE.

    EXIF orientation is applied again in case the caller did not: that is a no-op for
    an image already transposed, since exif_transpose drops the tag.
    """
    return _to_8bit(_upright(shrink(image, SOURCE_MAX_SIDE)))


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # Pillow raises various errors on malformed EXIF
        return img

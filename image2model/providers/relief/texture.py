"""The texture: the photo cropped to the object, background bled over with object colours."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from scipy import ndimage

from image2model.providers.relief.loading import shrink
from image2model.providers.relief.separation import Separation

TEXTURE_MAX_SIDE = 1024


def texture_box(cells: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box around the object (plus one cell), so the texture spends pixels on it."""
    rows, cols = cells.shape
    r, c = np.nonzero(cells)
    cell_w, cell_h = width / cols, height / rows
    left = max(0, math.floor((c.min() - 1) * cell_w))
    top = max(0, math.floor((r.min() - 1) * cell_h))
    right = min(width, math.ceil((c.max() + 2) * cell_w))
    bottom = min(height, math.ceil((r.max() + 2) * cell_h))
    return left, top, right, bottom


def make_texture(src: Image.Image, sep: Separation, cells: np.ndarray,
                  box: tuple[int, int, int, int]) -> Image.Image:
    """RGB texture of the box, at most TEXTURE_MAX_SIDE, with object colours bled outward.

    Bleeding replaces background pixels by the nearest object colour, so the rim and
    the texture's mipmaps never pick up the removed background.
    """
    crop = shrink(src.crop(box), TEXTURE_MAX_SIDE)
    rgb = np.asarray(crop.convert("RGB"))
    if sep.mask is None:
        return Image.fromarray(rgb, "RGB")
    size = crop.size
    if sep.source == "alpha":
        valid = np.asarray(crop.getchannel("A")) >= 128
    else:
        valid = _resize_mask(sep.colour_mask if sep.colour_mask is not None else sep.mask, src.size, box, size)
    near_object = ndimage.binary_dilation(_resize_mask(cells, src.size, box, size), iterations=2)
    # Edge pixels mix object and background (blur, JPEG ringing, and the mask errs a
    # little outward), so only colours from a few pixels inside are trusted.
    texels_per_mask_pixel = size[0] / ((box[2] - box[0]) * sep.mask.shape[1] / src.size[0])
    margin = 1 + math.ceil(1.5 * texels_per_mask_pixel)
    valid &= near_object
    trusted = ndimage.binary_erosion(valid, iterations=margin)
    valid = trusted if trusted.any() else valid  # a sliver of an object: use what there is
    if not valid.any():
        return Image.fromarray(rgb, "RGB")
    iy, ix = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return Image.fromarray(rgb[iy, ix], "RGB")


def _resize_mask(mask: np.ndarray, frame: tuple[int, int], box: tuple[int, int, int, int],
                 size: tuple[int, int]) -> np.ndarray:
    """The part of `mask` (covering the whole frame) under `box`, resampled to `size`."""
    sx, sy = mask.shape[1] / frame[0], mask.shape[0] / frame[1]
    region = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    img = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR, box=region)) >= 128


def as_jpeg(image: Image.Image) -> Image.Image:
    """Round-trip through JPEG: trimesh embeds a JPEG-format image as JPEG (re-encoded at
    its default quality, 75) instead of PNG, which would be several times bigger."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out

"""The texture: the photo cropped to the object, background bled over with object colours,
and beside it a strip of colours for the side the photo does not show.

The back is not a mirrored copy of the photo (a logo or a face would show through
backwards): each row of the back takes the object's typical (median) colour in that row
of the photo, so a red mug stays red all round and a cat keeps its fur colours.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from image2model.providers.relief.separation import Separation

TEXTURE_MAX_SIDE = 1024
_STRIP = 16  # width of the back's colour strip: one JPEG block, so the photo never bleeds into it


@dataclass(frozen=True)
class Atlas:
    """The texture image and where things are on it."""

    image: Image.Image
    box: tuple[int, int, int, int]  # source pixels the photo part covers
    photo_width: int  # texels of the photo part; the strip starts at a block boundary after it

    def uv(self, xy: np.ndarray, back: np.ndarray) -> np.ndarray:
        """UVs of points at source positions `xy`; `back` points sample the strip."""
        left, top, right, bottom = self.box
        width = self.image.width
        u = (xy[:, 0] - left) / (right - left) * (self.photo_width / width)
        u = np.where(back, (width - _STRIP / 2) / width, u)
        v = 1.0 - (xy[:, 1] - top) / (bottom - top)
        return np.column_stack([u, v]).clip(0.0, 1.0)


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


def make_atlas(src: Image.Image, sep: Separation, cells: np.ndarray) -> Atlas:
    """The photo part (object colours bled outward) and the back's strip, side by side."""
    box = texture_box(cells, *src.size)
    photo, valid = _photo_part(src, sep, cells, box)
    padded = -(-photo.shape[1] // _STRIP) * _STRIP
    canvas = np.empty((photo.shape[0], padded + _STRIP, 3), dtype=np.uint8)
    canvas[:, : photo.shape[1]] = photo
    canvas[:, photo.shape[1]: padded] = photo[:, -1:]
    canvas[:, padded:] = _row_colours(photo, valid)[:, None, :]
    return Atlas(Image.fromarray(canvas, "RGB"), box, photo.shape[1])


def _row_colours(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Median object colour of each row (a logo in front does not tint the back), rows
    without object taking the nearest row's, smoothed down the rows so the back has
    bands, not stripes. Taken on every few texels: the median of a thousand rows of a
    thousand texels would cost a tenth of a second."""
    step_y, step_x = max(1, len(rgb) // 160), max(1, rgb.shape[1] // 160)
    sample = np.where(valid[::step_y, ::step_x, None], rgb[::step_y, ::step_x], np.nan)
    rows = np.flatnonzero(valid[::step_y, ::step_x].any(axis=1))
    if rows.size == 0:
        sample, rows = rgb[::step_y, ::step_x].astype(np.float64), np.arange(len(sample))
    colours = np.nanmedian(sample[rows], axis=1)
    every = np.arange(len(rgb))
    at = rows * step_y
    filled = np.column_stack([np.interp(every, at, colours[:, c]) for c in range(3)])
    smooth = ndimage.gaussian_filter1d(filled, max(1.0, 0.02 * len(rgb)), axis=0, mode="nearest")
    return np.clip(np.round(smooth), 0, 255).astype(np.uint8)


def _photo_part(src: Image.Image, sep: Separation, cells: np.ndarray,
                box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """RGB texels of the box, the atlas at most TEXTURE_MAX_SIDE, with object colours bled outward,
    and the texels whose colour is the object's own.

    Bleeding replaces background pixels by the nearest object colour, so the rim and
    the texture's mipmaps never pick up the removed background.
    """
    crop = src.crop(box)
    room = (TEXTURE_MAX_SIDE - 2 * _STRIP, TEXTURE_MAX_SIDE)  # the strip (and its padding) fit beside it
    if crop.width > room[0] or crop.height > room[1]:
        scale = min(room[0] / crop.width, room[1] / crop.height)
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                           Image.Resampling.BILINEAR, reducing_gap=2.0)
    rgb = np.asarray(crop.convert("RGB"))
    if sep.mask is None:
        return rgb, np.ones(rgb.shape[:2], dtype=bool)
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
        return rgb, np.ones(rgb.shape[:2], dtype=bool)
    # every texel takes the colour of its nearest object texel (OpenCV's labelled
    # distance transform: twice as fast as scipy's with indices, the same answer)
    _, nearest = cv2.distanceTransformWithLabels((~valid).astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    source = np.flatnonzero(valid)[nearest.ravel() - 1]  # labels number object texels in raster order
    return rgb.reshape(-1, 3)[source].reshape(rgb.shape), valid


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

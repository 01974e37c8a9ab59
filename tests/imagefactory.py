"""Synthetic test images, made with Pillow and numpy only (no third-party pictures).

Every maker is deterministic (fixed seeds) and returns a `Synthetic`: the encoded file
bytes plus what a test needs to judge a result: the ground-truth object mask in upright
image coordinates, and the object's colours. `save(directory)` writes it to a file,
`open()` decodes it. The shapes are asymmetric on purpose (two-tone left/right or
top/bottom) so that tests can tell a mirrored or upside-down model from a correct one.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WHITE = (250, 250, 250)
ORANGE = (240, 140, 20)
TEAL = (20, 150, 160)
RED = (210, 30, 40)
BLUE = (30, 60, 200)
YELLOW = (245, 215, 30)


@dataclass(frozen=True)
class Synthetic:
    """An encoded test image and its ground truth."""

    name: str
    data: bytes
    suffix: str  # ".png" or ".jpg"
    mask: np.ndarray | None  # bool (height, width), upright; None: no separable object
    size: tuple[int, int]  # upright (width, height)
    notes: dict = field(default_factory=dict)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / f"{self.name}{self.suffix}"
        path.write_bytes(self.data)
        return path

    def open(self) -> Image.Image:
        img = Image.open(io.BytesIO(self.data))
        img.load()
        return img


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(shape: tuple[int, ...], sigma: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sigma, shape)


def star_polygon(cx: float, cy: float, outer: float, inner: float, points: int = 5) -> list[tuple[float, float]]:
    """Corners of a star with its first tip pointing up."""
    corners = []
    for k in range(2 * points):
        radius = outer if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        corners.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return corners


def _mask_of(size: tuple[int, int], draw) -> np.ndarray:
    """Rasterise a shape (a function of ImageDraw) into a boolean mask."""
    img = Image.new("L", size, 0)
    draw(ImageDraw.Draw(img), 255)
    return np.asarray(img) >= 128


def _two_tone(size: tuple[int, int], mask: np.ndarray, first: tuple, second: tuple, vertical: bool) -> np.ndarray:
    """RGB array: `first` on the left (or top) half of the frame, `second` on the other half."""
    w, h = size
    rgb = np.empty((h, w, 3), dtype=np.float64)
    if vertical:
        rgb[: h // 2] = first
        rgb[h // 2:] = second
    else:
        rgb[:, : w // 2] = first
        rgb[:, w // 2:] = second
    return np.where(mask[..., None], rgb, 0.0)


def rgba_star(size: tuple[int, int] = (640, 480)) -> Synthetic:
    """RGBA PNG: a star, orange on its left half and teal on its right, on transparency."""
    w, h = size
    poly = star_polygon(w / 2, h / 2 + h * 0.04, 0.45 * h, 0.2 * h)
    mask = _mask_of(size, lambda d, v: d.polygon(poly, fill=v))
    rgb = _two_tone(size, mask, ORANGE, TEAL, vertical=False)
    rgba = np.dstack([rgb, mask * 255.0]).astype(np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    return Synthetic("rgba_star", _encode(img, "PNG"), ".png", mask, size,
                     {"left": ORANGE, "right": TEAL})


def lace_rgba(seed: int, size: tuple[int, int] = (320, 240)) -> Synthetic:
    """RGBA PNG of a lacy random shape: overlapping blobs joined by thin, slanted strokes.

    Narrow necks and diagonal contacts are where a grid mesh tends to pinch into a
    non-manifold vertex; several seeds give several such shapes.
    """
    rng = np.random.default_rng(seed)
    w, h = size

    def draw(d: ImageDraw.ImageDraw, v: int) -> None:
        centres = rng.uniform((0.15 * w, 0.15 * h), (0.85 * w, 0.85 * h), (9, 2))
        for (x, y), r in zip(centres, rng.uniform(0.02, 0.09, 9) * w, strict=True):
            d.ellipse((x - r, y - r, x + r, y + r), fill=v)
        for (x0, y0), (x1, y1) in zip(centres[:-1], centres[1:], strict=True):
            d.line((x0, y0, x1, y1), fill=v, width=int(rng.integers(1, 6)))

    mask = _mask_of(size, draw)
    rgba = np.dstack([np.where(mask[..., None], np.array(TEAL), 0), mask * 255]).astype(np.uint8)
    return Synthetic(f"lace_{seed}", _encode(Image.fromarray(rgba, "RGBA"), "PNG"), ".png", mask, size)


def product_shape(size: tuple[int, int]) -> np.ndarray:
    """A bottle-like object: a wide rounded body with a neck, centred in the frame."""
    w, h = size
    s = min(w, h)

    def draw(d: ImageDraw.ImageDraw, v: int) -> None:
        d.rounded_rectangle((w / 2 - 0.22 * s, h / 2 - 0.18 * s, w / 2 + 0.22 * s, h / 2 + 0.4 * s),
                            radius=0.08 * s, fill=v)
        d.rectangle((w / 2 - 0.07 * s, h / 2 - 0.38 * s, w / 2 + 0.07 * s, h / 2 - 0.1 * s), fill=v)
        d.ellipse((w / 2 - 0.09 * s, h / 2 - 0.44 * s, w / 2 + 0.09 * s, h / 2 - 0.32 * s), fill=v)

    return _mask_of(size, draw)


def product_photo(size: tuple[int, int] = (800, 600), seed: int = 1, quality: int = 85) -> Synthetic:
    """JPEG 'product photo': a two-tone bottle (red top, blue bottom) on an off-white,
    slightly graded background, with sensor noise and JPEG artefacts."""
    w, h = size
    mask = product_shape(size)
    obj = _two_tone(size, mask, RED, BLUE, vertical=True)
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.array(WHITE, dtype=np.float64) - 10.0 * (yy / h)[..., None] - 4.0 * (xx / w)[..., None]
    rgb = np.where(mask[..., None], obj, background) + _noise((h, w, 3), 3.0, seed)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return Synthetic("product_photo", _encode(img, "JPEG", quality=quality), ".jpg", mask, size,
                     {"top": RED, "bottom": BLUE})


def full_frame_photo(size: tuple[int, int] = (800, 600), seed: int = 2) -> Synthetic:
    """JPEG with no separable background: colourful waves and noise right up to the edges."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    r = 128 + 100 * np.sin(11 * xx + 3 * yy)
    g = 128 + 100 * np.sin(7 * yy - 5 * xx + 1.0)
    b = 128 + 100 * np.cos(9 * (xx + yy) * (1 + xx))
    rgb = np.dstack([r, g, b]) + _noise((h, w, 3), 12.0, seed)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return Synthetic("full_frame", _encode(img, "JPEG", quality=90), ".jpg", None, size)


def greyscale(size: tuple[int, int] = (500, 400), seed: int = 3) -> Synthetic:
    """Mode L PNG: a dark ellipse on a light background."""
    w, h = size
    box = (0.2 * w, 0.15 * h, 0.8 * w, 0.85 * h)
    mask = _mask_of(size, lambda d, v: d.ellipse(box, fill=v))
    grey = np.where(mask, 70.0, 235.0) + _noise((h, w), 2.0, seed)
    img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L")
    return Synthetic("greyscale", _encode(img, "PNG"), ".png", mask, size)


def palette_png(size: tuple[int, int] = (400, 400), transparent: bool = False) -> Synthetic:
    """Mode P PNG: a yellow/blue diamond on white, or on a transparent palette entry."""
    w, h = size
    diamond = [(w / 2, 0.1 * h), (0.85 * w, h / 2), (w / 2, 0.9 * h), (0.15 * w, h / 2)]
    mask = _mask_of(size, lambda d, v: d.polygon(diamond, fill=v))
    pixels = mask.astype(np.uint8)  # palette index 1: yellow
    pixels[h // 2:][mask[h // 2:]] = 2  # lower half blue
    img = Image.fromarray(pixels, "P")
    img.putpalette(list(WHITE) + list(YELLOW) + list(BLUE))
    kwargs = {"transparency": 0} if transparent else {}
    name = "palette_transparent" if transparent else "palette"
    return Synthetic(name, _encode(img, "PNG", **kwargs), ".png", mask, size)


def png16(size: tuple[int, int] = (480, 360), seed: int = 4) -> Synthetic:
    """16-bit greyscale PNG (mode I;16): a dark rounded square on a bright field."""
    w, h = size
    box = (0.25 * w, 0.2 * h, 0.75 * w, 0.8 * h)
    mask = _mask_of(size, lambda d, v: d.rounded_rectangle(box, radius=0.08 * w, fill=v))
    values = np.where(mask, 9000.0, 60000.0) + _noise((h, w), 300.0, seed)
    img = Image.fromarray(np.clip(values, 0, 65535).astype(np.uint16), "I;16")
    return Synthetic("png16", _encode(img, "PNG"), ".png", mask, size)


def exif_rotated_jpeg(orientation: int = 6, upright_size: tuple[int, int] = (480, 640), seed: int = 5) -> Synthetic:
    """JPEG whose stored pixels are rotated; EXIF `orientation` (6 or 8) makes it upright.

    Upright it shows a tall rectangle, red on top and blue below; the stored pixels show
    a wide one, so a reader that ignores EXIF gets a visibly different (wide) model.
    """
    if orientation not in (6, 8):
        raise ValueError("orientation must be 6 or 8")
    w, h = upright_size
    box = (0.3 * w, 0.1 * h, 0.7 * w, 0.9 * h)
    mask = _mask_of(upright_size, lambda d, v: d.rectangle(box, fill=v))
    rgb = np.where(mask[..., None], _two_tone(upright_size, mask, RED, BLUE, vertical=True), WHITE)
    rgb = rgb + _noise((h, w, 3), 2.0, seed)
    upright = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    # exif_transpose undoes orientation 6 with ROTATE_270 and 8 with ROTATE_90.
    stored = upright.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(stored, "JPEG", quality=90, exif=exif.tobytes())
    return Synthetic(f"exif_{orientation}", data, ".jpg", mask, upright_size, {"top": RED, "bottom": BLUE})


def tiny(size: tuple[int, int] = (16, 16)) -> Synthetic:
    """A 16x16 PNG: a red 8x8 square on white."""
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = True
    rgb = np.where(mask[..., None], np.array(RED, dtype=np.uint8), np.array(WHITE, dtype=np.uint8))
    return Synthetic("tiny", _encode(Image.fromarray(rgb.astype(np.uint8), "RGB"), "PNG"), ".png", mask, size)


def huge_jpeg(size: tuple[int, int] = (8000, 6000), quality: int = 80) -> Synthetic:
    """A ~48-megapixel JPEG product shot (the bottle on white), drawn at full size.

    Drawing it takes well under a second but ~150 MB; the ground-truth mask is returned at
    1/8 scale (notes['mask_scale']) to keep it small.
    """
    w, h = size
    small = (w // 8, h // 8)
    img = Image.new("RGB", size, WHITE)
    shape = Image.fromarray(product_shape(small).astype(np.uint8) * 255, "L").resize(size, Image.Resampling.NEAREST)
    img.paste(BLUE, (0, 0), shape)
    data = _encode(img, "JPEG", quality=quality)
    del img, shape
    return Synthetic("huge", data, ".jpg", product_shape(small), size, {"mask_scale": 8})


def with_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert an RGB test image into another PIL mode (16-bit and float via greyscale)."""
    if mode in ("I", "F"):
        grey = np.asarray(image.convert("L"), dtype=np.float64)
        values = grey * 257.0 if mode == "I" else grey / 255.0
        return Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32), mode)
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return Image.fromarray(grey, "I;16")
    return image.convert(mode)


def png_with_bad_pixel_data(png: bytes) -> bytes:
    """`png` with bytes flipped inside its compressed pixel data and every chunk checksum made
    right again: what a file damaged before it was written looks like (the checksums pass)."""
    out, at = bytearray(png[:8]), 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        body = png[at + 8:at + 8 + length]
        if kind == b"IDAT" and len(body) > 200:
            body = body[:100] + bytes(b ^ 0xFF for b in body[100:140]) + body[140:]
        out += struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body))
        at += 12 + length
    return bytes(out)

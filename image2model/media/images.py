"""Judge uploads by their content, and prepare them for a model.

`inspect_image` runs in the job service for every interface, before anything is stored or
queued: it trusts the bytes, never the name or declared type. `prepare_image` runs in the
worker: upright, 8-bit RGB(A), no larger than the model needs.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from image2model.errors import AppError
from image2model.media.containers import (Incomplete, check_container, check_iso_boxes, check_png_data, check_webp,
                                          heif_header, webp_header)

try:  # HEIC/HEIF (iPhone photos) and AVIF through pillow-heif, when installed
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is in requirements.txt
    pillow_heif = None

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "HEIF", "AVIF"}
FORMAT_LABELS = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF"
MIN_SIDE = 8
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
              "TIFF": ".tiff", "HEIF": ".heic", "AVIF": ".avif"}
EXIF_ORIENTATION = 0x0112
FULL_DECODE_BYTES = 8 * 2**20  # a picture this big decoded is checked by decoding it; a bigger one by its container


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str


def inspect_image(path: Path, name: str, max_pixels: int) -> ImageInfo:
    """Check that the file really is a complete image we accept; AppError naming it if not."""
    if path.stat().st_size == 0:
        raise AppError("empty_file", f"'{name}' is empty (0 bytes).", 400, {"file": name})
    big = _big_by_header(path, name, max_pixels)
    if big is not None:
        return big
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                fmt = (img.format or "").upper()
                width, height = img.size
                mode = img.mode
                if fmt not in ACCEPTED_FORMATS:
                    raise _not_an_image(name)
                if width * height > max_pixels:
                    raise _too_many_pixels(name, width, height, max_pixels)
                if min(width, height) < 1:
                    raise _corrupt(name)
                _check_complete(img, path)
        except AppError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(name, 0, 0, max_pixels, _bomb_pixels(exc)) from None
        except UnidentifiedImageError:
            raise _not_an_image(name) from None
        except Exception:  # noqa: BLE001 - any decoder failure (a corrupt AVIF raises RuntimeError)
            raise _corrupt(name) from None
    return ImageInfo(fmt, width, height, mode)


def _big_by_header(path: Path, name: str, max_pixels: int) -> ImageInfo | None:
    """A WebP, HEIC or AVIF too big to decode for the check, judged by its header and its
    container (their decoders read the whole file into memory just to open it); None for
    any other file, and for a small one, left to Pillow."""
    try:
        header = _sniff(path)
        if header is None:
            return None
        fmt, width, height, mode = header
        if width * height * len(mode) <= FULL_DECODE_BYTES:
            return None
        if width * height > max_pixels:
            raise _too_many_pixels(name, width, height, max_pixels)
        if min(width, height) < 1:
            raise _corrupt(name)
        (check_webp if fmt == "WEBP" else check_iso_boxes)(path)
    except Incomplete:
        raise _corrupt(name) from None
    return ImageInfo(fmt, width, height, mode)


def _sniff(path: Path) -> tuple[str, int, int, str] | None:
    """(format, width, height, mode) of a WebP, HEIC or AVIF from its header alone, else None."""
    webp = webp_header(path)
    if webp is not None:
        return ("WEBP", *webp)
    heif = heif_header(path)
    return None if heif is None else (*heif, "RGB")


def image_extension(path: Path) -> str:
    """The usual extension of the image format in the file (".png"), from its header only;
    "" when it is not an image we accept (inspect_image then says so, in words)."""
    try:
        sniffed = _sniff(path)  # without opening it, which would read all of it
        if sniffed is not None:
            return EXTENSIONS[sniffed[0]]
        with Image.open(path) as img:
            return EXTENSIONS.get((img.format or "").upper(), "")
    except Exception:  # noqa: BLE001 - unreadable: no extension, the real check follows
        return ""


def _check_complete(img: Image.Image, path: Path) -> None:
    """Make a truncated or damaged file fail now, in little memory (at most about
    FULL_DECODE_BYTES per upload): a PNG has each chunk's checksum checked and its pixel data
    inflated as a stream, without holding the pixels, a JPEG decodes at 1/8 scale, a small
    picture of another format decodes fully, and a big one has its container walked
    (media/containers.py)."""
    if img.format == "PNG":
        img.verify()
        try:
            check_png_data(path)
        except Incomplete as exc:
            raise OSError(str(exc)) from None
        return
    if img.format in ("JPEG", "MPO"):
        img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
    elif img.width * img.height * len(img.getbands()) > FULL_DECODE_BYTES:
        try:
            check_container(img, path)
        except Incomplete as exc:
            raise OSError(str(exc)) from None
        return
    img.load()


def load_checked(img: Image.Image, name: str) -> None:
    """Decode an opened image for a model; damage the upload check could not see (inside the
    compressed data of a big file) becomes AppError corrupt_image, in words."""
    try:
        img.load()
    except Exception:  # noqa: BLE001 - any decoder failure
        raise _corrupt(name) from None


def _not_an_image(name: str) -> AppError:
    return AppError(
        "unsupported_file_type",
        f"'{name}' is not an image we can read. Use {FORMAT_LABELS}.",
        415,
        {"file": name},
    )


def _corrupt(name: str) -> AppError:
    return AppError("corrupt_image", f"'{name}' is damaged or incomplete and cannot be read.", 400, {"file": name})


def _bomb_pixels(exc: Exception) -> int:
    """The pixel count Pillow's bomb guard names ("Image size (400000000 pixels) exceeds..."):
    it refuses before anyone can read the size. 0 when its words change: the message then
    has no size, and tests/test_hostile_input.py's bomb.png case fails to say so."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else 0


def _too_many_pixels(name: str, width: int, height: int, max_pixels: int, pixels: int = 0) -> AppError:
    size = f" ({width}x{height})" if width else f" ({pixels / 1e6:,.0f} megapixels)" if pixels else ""
    return AppError(
        "image_too_large",
        f"'{name}'{size} has more than {max_pixels / 1e6:.0f} megapixels; please use a smaller image.",
        413,
        {"file": name},
    )


def open_upright(path: Path, max_side: int) -> Image.Image:
    """Open an image upright (EXIF applied), 8-bit RGB or RGBA, no longer than max_side."""
    try:
        opened = Image.open(path)
    except Exception:  # noqa: BLE001 - it passed the upload check, so it was damaged since
        raise _corrupt(path.name) from None
    with opened as img:
        if img.format == "JPEG" and max(img.size) > 2 * max_side:
            img.draft("RGB", (max_side, max_side))  # decode big JPEGs at a fraction of the cost
        img.seek(0)  # GIF, TIFF pages: the first frame
        load_checked(img, path.name)
        upright = ImageOps.exif_transpose(img) or img
        converted = to_8bit(upright)
    if max(converted.size) > max_side:
        converted.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return converted


BROWSER_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "AVIF", "MPO"}  # what an <img> shows
PREVIEW_SIDE = 320


def browser_preview(path: Path) -> Path:
    """The file itself when a browser can show it, else a small JPEG beside it (HEIC from an
    iPhone, TIFF): a thumbnail the browser cannot decode is a broken picture."""
    try:
        sniffed = _sniff(path)
        if sniffed is not None and sniffed[0] in BROWSER_FORMATS:  # no need to open it (and read it all)
            return path
    except Incomplete:
        pass
    with Image.open(path) as img:
        if img.format in BROWSER_FORMATS:
            return path
    preview = path.with_name(f"{path.name}.preview.jpg")
    if not preview.is_file():
        open_upright(path, PREVIEW_SIDE).convert("RGB").save(preview, "JPEG", quality=85)
    return preview


def to_8bit(img: Image.Image) -> Image.Image:
    """RGB or RGBA, 8 bits per channel, whatever came in (16-bit, palette, CMYK, LA...)."""
    if img.mode in ("RGB", "RGBA"):
        return img.copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        data = np.asarray(img, dtype=np.float64)
        top = 65535.0 if data.max() > 255 else 255.0
        return Image.fromarray((np.clip(data / top, 0, 1) * 255).astype("uint8"), "L").convert("RGB")
    if img.mode == "F":
        import numpy as np

        data = np.nan_to_num(np.asarray(img, dtype=np.float64))
        span = float(data.max() - data.min()) or 1.0
        return Image.fromarray(((data - data.min()) / span * 255).astype("uint8"), "L").convert("RGB")
    has_alpha = img.mode in ("LA", "PA", "La") or (img.mode == "P" and "transparency" in img.info)
    return img.convert("RGBA" if has_alpha else "RGB")


def needs_preparing(path: Path, max_side: int) -> bool:
    """Whether a hosted model would get a worse image than a prepared copy: a format or mode
    models may not read, a rotation only EXIF knows about, or more pixels than useful. A file
    whose metadata cannot be read needs it too: preparing decodes it, and says in words what
    is wrong with it."""
    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            return (img.format not in ("JPEG", "PNG") or img.mode not in ("RGB", "RGBA")
                    or max(img.size) > max_side or orientation not in (None, 1)
                    or getattr(img, "n_frames", 1) != 1)
    except Exception:  # noqa: BLE001 - a damaged PNG raises OSError or zlib.error from getexif
        return True


def prepare_image(path: Path, out_dir: Path, max_side: int) -> Path:
    """The image to send to a hosted model: the upload itself when it is already an upright
    8-bit JPEG or PNG of a sensible size (no second JPEG generation, no CPU spent), else an
    upright 8-bit copy: PNG when it has transparency, JPEG otherwise."""
    if not needs_preparing(path, max_side):
        return path
    img = open_upright(path, max_side)
    out_dir.mkdir(parents=True, exist_ok=True)
    if img.mode == "RGBA":
        out = out_dir / f"{path.stem}.png"
        img.save(out, "PNG", optimize=False)
    else:
        out = out_dir / f"{path.stem}.jpg"
        img.save(out, "JPEG", quality=92)
    return out

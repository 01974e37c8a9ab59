"""Is every byte of an image file there? A streamed walk of its container, in constant memory.

Checking an upload by decoding it holds the whole picture in memory: a 12 MP HEIC grew the
web process by 99 MiB, a WebP by 187 (bench/bench_upload.py), per upload. Where no decoder
can check a file cheaply (PNG has chunk checksums, a JPEG decodes at 1/8 scale), big files
are checked by walking their container instead: RIFF chunks (WebP), GIF blocks, ISO boxes
(HEIC, AVIF), the strips or tiles a TIFF lists, the pixel rows a BMP declares. That finds
what an interrupted upload or copy does to a file (it ends early). A PNG's pixel data is also
inflated, streamed and thrown away (`check_png_data`): its chunk checksums pass when the bytes were
damaged before they were written. Damage inside the compressed data of the other formats, with
the structure intact, is found when the worker decodes the photo, which then fails in words.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from PIL import Image


class Incomplete(ValueError):
    """The file ends before its structure does, or the structure makes no sense."""


def check_container(img: Image.Image, path: Path) -> None:
    """Raise Incomplete unless the container of the opened image `img` (read from `path`) is whole."""
    size = path.stat().st_size
    fmt = (img.format or "").upper()
    with path.open("rb") as f:
        if fmt == "WEBP":
            _check_riff(f, size)
        elif fmt == "GIF":
            _check_gif(f, size)
        elif fmt in ("HEIF", "AVIF"):
            _check_iso_boxes(f, size)
        elif fmt == "TIFF":
            _check_tiff_data(img, size)
        elif fmt == "BMP":
            _check_bmp(img, size)
        else:
            raise Incomplete(f"no container check for {fmt}")


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
INFLATE_STEP = 1 << 20  # inflated bytes held at once: a bomb of zeros costs time, not memory


def check_png_data(path: Path) -> None:
    """Raise Incomplete unless a PNG's pixel data (its IDAT chunks) inflates to every row the
    header declares. Constant memory: the inflated bytes are counted and dropped."""
    with path.open("rb") as f:
        _read(f, 8)
        width = height = bits = channels = interlaced = 0
        inflater = zlib.decompressobj()
        inflated = 0
        while True:
            length, kind = struct.unpack(">I4s", _read(f, 8))
            if kind == b"IHDR":
                width, height, depth, colour, _, _, interlaced = struct.unpack(">IIBBBBB", _read(f, 13))
                bits, channels = depth, PNG_CHANNELS.get(colour, 0)
                f.seek(length - 13 + 4, 1)
            elif kind == b"IDAT":
                inflated += _inflate(inflater, f, length)
                f.seek(4, 1)
            elif kind == b"IEND":
                break
            else:
                f.seek(length + 4, 1)
    if inflated < _png_raw_size(width, height, bits * channels, bool(interlaced)):
        raise Incomplete("the pixel data is damaged or cut short")


def _inflate(inflater: zlib._Decompress, f: BinaryIO, length: int) -> int:
    """Feed `length` bytes of `f` to the inflater; how many bytes came out."""
    out = 0
    while length > 0 and not inflater.eof:
        data = _read(f, min(length, 1 << 16))
        length -= len(data)
        try:
            while not inflater.eof:
                piece = len(inflater.decompress(data, INFLATE_STEP))
                out += piece
                data = inflater.unconsumed_tail
                if not data and piece < INFLATE_STEP:  # a full piece may have more waiting
                    break
        except zlib.error as exc:
            raise Incomplete(f"the pixel data does not inflate: {exc}") from None
    f.seek(length, 1)
    return out


def _png_raw_size(width: int, height: int, pixel_bits: int, interlaced: bool) -> int:
    """Bytes of filtered rows (each with its filter byte) the header promises."""
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-(w * pixel_bits) // 8))
    return total


def webp_header(path: Path) -> tuple[int, int, str] | None:
    """(width, height, mode) of a WebP from its first chunk, or None when the file is no WebP.
    Opening one with Pillow reads the whole file into memory (twice its size, for a lossless
    photo), so a big one is judged from this and `check_webp` alone."""
    with path.open("rb") as f:
        head = f.read(30)
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    kind, data = head[12:16], head[20:30]
    if kind == b"VP8X":  # extended: canvas size, and whether there is alpha
        width = int.from_bytes(data[4:7], "little") + 1
        height = int.from_bytes(data[7:10], "little") + 1
        return width, height, "RGBA" if data[0] & 0x10 else "RGB"
    if kind == b"VP8L" and data[0] == 0x2F:  # lossless: 14-bit sizes after the signature
        bits = int.from_bytes(data[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, "RGBA" if bits >> 28 & 1 else "RGB"
    if kind == b"VP8 " and data[3:6] == b"\x9d\x01\x2a":  # lossy: key frame header
        return (int.from_bytes(data[6:8], "little") & 0x3FFF,
                int.from_bytes(data[8:10], "little") & 0x3FFF, "RGB")
    raise Incomplete("an unknown WebP header")


HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
META_LIMIT = 1 << 20  # the meta box holds the image index: a few KB (a huge one is no photo)


def heif_header(path: Path) -> tuple[str, int, int] | None:
    """(format, width, height) of a HEIC or AVIF from its ftyp and meta boxes (the largest
    image size declared, `ispe`), or None when the file is neither. libheif reads the whole
    file into memory to open it (twice its size, in Pillow), so a big one is judged by this
    and `check_iso_boxes` alone."""
    with path.open("rb") as f:
        head = f.read(32)
        if len(head) < 16 or head[4:8] != b"ftyp":
            return None
        ftyp_size = struct.unpack(">I", head[:4])[0]
        f.seek(0)
        ftyp = f.read(min(ftyp_size, 256))
        brands = {ftyp[8:12]} | {ftyp[n:n + 4] for n in range(16, len(ftyp) - 3, 4)}
        if not brands & HEIF_BRANDS:
            return None
        fmt = "AVIF" if brands & {b"avif", b"avis"} and ftyp[8:12] != b"heic" else "HEIF"
        for at, length, kind in _iso_boxes(f, path.stat().st_size):  # the meta box comes before the data
            if kind == b"meta":
                if length > META_LIMIT:
                    raise Incomplete("an image index too big for a photo")
                f.seek(at)
                sizes = _image_sizes(_read(f, length))
                if not sizes:
                    raise Incomplete("no image size declared")
                width, height = max(sizes, key=lambda wh: wh[0] * wh[1])
                return fmt, width, height
    raise Incomplete("no image index")


def _image_sizes(meta: bytes) -> list[tuple[int, int]]:
    """Every `ispe` (image spatial extents) property inside the meta box."""
    found, at = [], 0
    while (at := meta.find(b"ispe", at)) >= 4:
        if at + 16 <= len(meta) and struct.unpack(">I", meta[at - 4:at])[0] == 20:
            found.append(struct.unpack(">II", meta[at + 8:at + 16]))
        at += 4
    return found


def check_iso_boxes(path: Path) -> None:
    with path.open("rb") as f:
        _check_iso_boxes(f, path.stat().st_size)


def check_webp(path: Path) -> None:
    with path.open("rb") as f:
        _check_riff(f, path.stat().st_size)


def _read(f: BinaryIO, count: int) -> bytes:
    data = f.read(count)
    if len(data) != count:
        raise Incomplete("the file ends early")
    return data


def _check_riff(f: BinaryIO, size: int) -> None:
    """RIFF: the header's length is the file's, and every chunk fits in it."""
    head = _read(f, 12)
    declared = struct.unpack("<I", head[4:8])[0] + 8
    if head[:4] != b"RIFF" or declared > size:
        raise Incomplete("the file ends before its RIFF length")
    at, kinds = 12, set()
    while at + 8 <= declared:
        f.seek(at)
        kind, length = struct.unpack("<4sI", _read(f, 8))
        at += 8 + length + (length & 1)
        if at - (length & 1) > declared:
            raise Incomplete(f"chunk {kind!r} runs past the end")
        kinds.add(kind)
    if not kinds & {b"VP8 ", b"VP8L", b"ANMF"}:
        raise Incomplete("no image data")


def _skip_sub_blocks(f: BinaryIO, size: int) -> None:
    while length := _read(f, 1)[0]:
        f.seek(length, 1)
        if f.tell() > size:
            raise Incomplete("the file ends inside a block")


def _check_gif(f: BinaryIO, size: int) -> None:
    """GIF: header, colour table, then blocks up to the end of the first picture's data."""
    head = _read(f, 13)
    if head[10] & 0x80:
        f.seek(3 * 2 ** ((head[10] & 7) + 1), 1)
    while True:
        introducer = _read(f, 1)
        if introducer == b"!":  # an extension: its label, then sub-blocks
            _read(f, 1)
            _skip_sub_blocks(f, size)
        elif introducer == b",":  # the first picture: descriptor, local colours, LZW data
            descriptor = _read(f, 9)
            if descriptor[8] & 0x80:
                f.seek(3 * 2 ** ((descriptor[8] & 7) + 1), 1)
            _read(f, 1)
            _skip_sub_blocks(f, size)
            return
        else:
            raise Incomplete("no picture before the end")


def _iso_boxes(f: BinaryIO, size: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset, length, type) of each top-level box of an ISO base media file (HEIC, AVIF);
    Incomplete when one runs past the end of the file."""
    at = 0
    while at < size:
        f.seek(at)
        length, kind = struct.unpack(">I4s", _read(f, 8))
        if length == 1:
            length = struct.unpack(">Q", _read(f, 8))[0]
        elif length == 0:
            length = size - at
        if length < 8 or at + length > size:
            raise Incomplete(f"box {kind!r} runs past the end")
        yield at, length, kind
        at += length


def _check_iso_boxes(f: BinaryIO, size: int) -> None:
    """The top-level boxes tile the file exactly, and the image index is among them."""
    if not {b"ftyp", b"meta"} <= {kind for _, _, kind in _iso_boxes(f, size)}:
        raise Incomplete("not a complete HEIF file")


def _check_tiff_data(img: Image.Image, size: int) -> None:
    """TIFF: every strip or tile the first page lists lies inside the file."""
    tags = img.tag_v2  # type: ignore[attr-defined]
    offsets = tags.get(273) or tags.get(324)
    counts = tags.get(279) or tags.get(325)
    if not offsets or not counts:
        raise Incomplete("no image data listed")
    offsets = offsets if isinstance(offsets, tuple) else (offsets,)
    counts = counts if isinstance(counts, tuple) else (counts,)
    if max(o + c for o, c in zip(offsets, counts)) > size:
        raise Incomplete("the file ends before its image data")


def _check_bmp(img: Image.Image, size: int) -> None:
    """BMP: the pixel rows it declares (as Pillow read the header) fit in the file; of
    run-length data only its start is known."""
    tile = img.tile[0]
    needed = 1
    if tile[0] == "raw":  # args: (raw mode, bytes per row, direction)
        needed = tile[3][1] * img.size[1]
    if tile[2] + needed > size:
        raise Incomplete("the file ends before its pixel data")

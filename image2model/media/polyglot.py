"""Refuse files that are an image *and* something else (polyglots).

Pillow happily decodes a PNG with a ZIP appended, or a JPEG whose comment holds a web page or
a PDF header; such a file is a valid image to us but an archive, document or page to another
reader it may reach. `inspect_image` proves the image part; this proves there is no other part.
It reads at most a few kilobytes from each end, plus the ZIP directory search.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from image2model.errors import AppError

WINDOW = 4096
# Signatures of things that must never ride along inside an image. Markup is matched
# lowercase; XMP metadata (<?xpacket, <x:xmpmeta, <?xml) is legitimate and not listed.
MARKERS = (
    b"%pdf-", b"<html", b"<!doctype", b"<script", b"<svg ", b"<iframe", b"<body", b"<?php",
    b"rar!\x1a\x07", b"7z\xbc\xaf\x27\x1c",
)
PNG_END = b"IEND\xaeB`\x82"


def check_single_format(path: Path, name: str, image_format: str) -> None:
    """AppError 415 naming the file when it carries another format besides the image."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(WINDOW)
        handle.seek(max(0, size - WINDOW))
        tail = handle.read(WINDOW)
    if _has_marker(head) or _has_marker(tail) or _png_trailer(image_format, tail) or _is_zip(path):
        raise AppError(
            "unsupported_file_type",
            f"'{name}' holds another kind of file besides the image (an archive, document or web page "
            "hidden in it); please upload a plain image.",
            415,
            {"file": name},
        )


def _has_marker(window: bytes) -> bool:
    lowered = window.lower()
    return any(marker in lowered for marker in MARKERS)


def _png_trailer(image_format: str, tail: bytes) -> bool:
    """A PNG ends at its IEND chunk; bytes after it (or no IEND near the end) are something else."""
    if image_format != "PNG":
        return False
    at = tail.rfind(PNG_END)
    return at < 0 or tail[at + len(PNG_END):].strip(b"\x00") != b""


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False

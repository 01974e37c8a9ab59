"""Sizes in the words people read (KB below a megabyte, one decimal above)."""

from __future__ import annotations


def size_text(size: int | None) -> str:
    if not size:
        return ""
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / 1048576:.1f} MB"

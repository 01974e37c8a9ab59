"""Sizes and durations in the words people read (KB below a megabyte, one decimal above;
seconds below two minutes, whole or one-decimal minutes above)."""

from __future__ import annotations


def size_text(size: int | None) -> str:
    if not size:
        return ""
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / 1048576:.1f}".removesuffix(".0") + " MB"


def duration_text(seconds: float) -> str:
    whole = round(seconds)
    if whole < 120:
        return f"{whole} second" + ("" if whole == 1 else "s")
    return f"{round(seconds / 60, 1):g} minutes"

"""Example photos the project makes itself (see make_examples.py); no third-party images."""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent

# (title, files) for the page's one-click examples, all run on the offline model.
EXAMPLE_SETS: list[tuple[str, list[str]]] = [
    ("Rubber duck", ["duck.png"]),
    ("Red mug", ["mug.png"]),
    ("Three objects", ["duck.png", "vase.png", "star.png"]),
]


def example_paths(files: list[str]) -> list[str]:
    return [str(EXAMPLES_DIR / name) for name in files]

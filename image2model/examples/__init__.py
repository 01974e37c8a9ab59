"""The page's one-click examples, all run on the offline model.

The drawings are made by the project (make_examples.py). coffee.jpg is a real photo from
scikit-image's sample data: "courtesy of Pikolo Espresso Bar", CC0 by the photographer
(Rachel Michetti), shipped here as a 600x400 JPEG (see LICENSES.md beside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Example:
    title: str
    files: tuple[str, ...]

    @property
    def paths(self) -> list[str]:
        return example_paths(list(self.files))

    @property
    def sheet(self) -> str:
        """File name of the set's photos side by side (made by make_examples.py)."""
        return self.title.lower().replace(" ", "-") + "-sheet.png"

    @property
    def thumbnail(self) -> str:
        """The picture the examples gallery shows: the photo, or a set's sheet."""
        return self.paths[0] if len(self.files) == 1 else str(EXAMPLES_DIR / self.sheet)


EXAMPLES: tuple[Example, ...] = (
    Example("Coffee", ("coffee.jpg",)),
    Example("Duck", ("duck.png",)),
    Example("Mug", ("mug.png",)),
    Example("Vase", ("vase.png",)),
    Example("Three toys", ("duck.png", "vase.png", "star.png")),
)


def example_paths(files: list[str]) -> list[str]:
    return [str(EXAMPLES_DIR / name) for name in files]

"""The relief model's parameters (shown in the catalog) and their validation."""

from __future__ import annotations

import numpy as np

RELIEF_PARAMS: list[dict] = [
    {
        "name": "resolution",
        "type": "int",
        "default": 160,
        "minimum": 32,
        "maximum": 512,
        "step": 8,
        "help": "Grid cells along the image's long side; more cells give finer geometry and more faces.",
    },
    {
        "name": "inflation",
        "type": "float",
        "default": 0.35,
        "minimum": 0.05,
        "maximum": 1.0,
        "step": 0.05,
        "help": "Thickness relative to the object's width: 1 makes round shapes spherical, small values flat.",
    },
    {
        "name": "detail",
        "type": "float",
        "default": 0.15,
        "minimum": 0.0,
        "maximum": 1.0,
        "step": 0.05,
        "help": "Fine relief on the front from the image's brightness (bright is raised); 0 turns it off.",
    },
    {
        "name": "bg_tolerance",
        "type": "float",
        "default": 0.12,
        "minimum": 0.01,
        "maximum": 0.5,
        "step": 0.01,
        "help": "Colour distance (0..1) within which pixels count as background when removing it.",
    },
    {
        "name": "background",
        "type": "choice",
        "default": "auto",
        "choices": ["auto", "remove", "keep"],
        "help": "auto: remove the background when an object stands out; remove: always cut out the "
                "best guess; keep: model the whole photo.",
    },
]
_PARAMS = {p["name"]: p for p in RELIEF_PARAMS}


def validate(resolution: object, inflation: object, detail: object, bg_tolerance: object,
             background: object = "auto") -> None:
    """Raise ValueError naming the first parameter that is of the wrong type or out of range."""
    for name, value in (("resolution", resolution), ("inflation", inflation),
                        ("detail", detail), ("bg_tolerance", bg_tolerance)):
        spec = _PARAMS[name]
        lo, hi = spec["minimum"], spec["maximum"]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number between {lo} and {hi}, got {value!r}")
        if spec["type"] == "int" and float(value) != int(value):
            raise ValueError(f"{name} must be a whole number between {lo} and {hi}, got {value!r}")
        if not (lo <= float(value) <= hi):  # also rejects NaN
            raise ValueError(f"{name} must be between {lo} and {hi}, got {value!r}")
    choices = _PARAMS["background"]["choices"]
    if background not in choices:
        raise ValueError(f"background must be one of {', '.join(choices)}, got {background!r}")

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
        "help": "How fine the shape is: higher gives more detail, a bigger file and a slower build.",
    },
    {
        "name": "inflation",
        "type": "float",
        "default": 0.5,
        "minimum": 0.05,
        "maximum": 1.0,
        "step": 0.05,
        "help": "How thick the model is, relative to its width: 1 makes a round object a ball, small values "
                "make it flat. Objects turned round (shape: revolve) are always as deep as they are wide.",
    },
    {
        "name": "detail",
        "type": "float",
        "default": 0.15,
        "minimum": 0.0,
        "maximum": 1.0,
        "step": 0.05,
        "help": "Raises the bright parts of the photo a little on the model's front, for texture; 0 turns it off.",
    },
    {
        "name": "bg_tolerance",
        "type": "float",
        "default": 0.12,
        "minimum": 0.01,
        "maximum": 0.5,
        "step": 0.01,
        "help": "How different from the background a colour must be to count as the object (0 to 1). "
                "Raise it if shadows are kept; lower it if parts of the object go missing.",
    },
    {
        "name": "background",
        "type": "choice",
        "default": "auto",
        "choices": ["auto", "remove", "keep"],
        "help": "auto: remove the background when an object stands out; remove: always cut out the "
                "best guess; keep: model the whole photo.",
    },
    {
        "name": "shape",
        "type": "choice",
        "default": "auto",
        "choices": ["auto", "relief", "revolve"],
        "help": "auto: turn cups, vases, bottles and bowls round, puff up everything else; relief: always puff "
                "up; revolve: always turn round about the upright axis.",
    },
]
_PARAMS = {p["name"]: p for p in RELIEF_PARAMS}


def validate(resolution: object, inflation: object, detail: object, bg_tolerance: object,
             background: object = "auto", shape: object = "auto") -> None:
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
    for name, value in (("background", background), ("shape", shape)):
        choices = _PARAMS[name]["choices"]
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")

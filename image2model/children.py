"""What every child process of the app starts with."""

from __future__ import annotations

import os
from pathlib import Path


def child_env() -> dict[str, str]:
    """This environment, with this package importable wherever the parent was started from."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}

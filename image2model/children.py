"""Child processes of the app: the environment they start with, and how many may work at
once (one a core: offline builds, conversions, thumbnails)."""

from __future__ import annotations

import os
from pathlib import Path

CPU_COUNT = max(1, os.cpu_count() or 1)


def child_env() -> dict[str, str]:
    """This environment, with this package importable wherever the parent was started from."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}

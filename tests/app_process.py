"""Run `python app.py` for tests, with fal-client pointed at the tests' fake FAL server."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if os.environ.get("I2M_TEST_FAKE_FAL_URL"):
    from tests.fakefal import patch_fal_client

    patch_fal_client(os.environ["I2M_TEST_FAKE_FAL_URL"])

if __name__ == "__main__":
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")

"""Run the real `huey_consumer` for image2model in a subprocess, with fal-client pointed at
the tests' fake FAL server (a subprocess cannot be monkeypatched from the test)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs as a script, without PYTHONPATH

from huey.bin.huey_consumer import consumer_main  # noqa: E402

if os.environ.get("I2M_TEST_FAKE_FAL_URL"):
    from tests.fakefal import patch_fal_client

    patch_fal_client(os.environ["I2M_TEST_FAKE_FAL_URL"])

if __name__ == "__main__":
    sys.argv = ["huey_consumer", "image2model.worker.main.huey", *sys.argv[1:]]
    consumer_main()

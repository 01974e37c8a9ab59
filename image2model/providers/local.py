"""The offline model: runs the relief generator inside our own worker, on the CPU.

Workers are threads sized for waiting on HTTP, so CPU work is gated by a semaphore with one
slot per core: 25 offline items queue for the cores instead of thrashing them.
"""

from __future__ import annotations

import os
import threading
import time

from image2model.memory import release_free_memory
from image2model.providers.base import ItemRun, ProviderOutput
from image2model.providers.relief import generate_relief, load_image

CPU_SLOTS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
MAX_INPUT_SIDE = 2048


class LocalReliefProvider:
    def run(self, item: ItemRun) -> ProviderOutput:
        item.progress(2, "Waiting for a free CPU core")
        while not CPU_SLOTS.acquire(timeout=0.5):
            item.check_stop()
        try:
            started = time.monotonic()
            item.check_stop()
            image = load_image(item.inputs[0])

            def report(fraction: float, stage: str) -> None:
                item.check_stop()
                item.progress(5 + 85 * fraction, stage)

            result = generate_relief(image, progress=report, **item.params)
            item.write_file(item.model_target, [result.glb])
            return ProviderOutput(
                run_seconds=time.monotonic() - started,
                extra_stats={"mask_source": result.mask_source},
            )
        finally:
            CPU_SLOTS.release()
            release_free_memory()

    def cancel(self, item: ItemRun) -> None:
        """Nothing remote to stop: the next progress report raises."""

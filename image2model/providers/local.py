"""The offline model: runs the relief generator on this machine's CPU.

Workers are threads sized for short steps, so CPU work is gated by a semaphore with one slot
per core: 25 offline items queue for the cores instead of thrashing them. Each build runs in
a process of its own (`build_pool.py`, OFFLINE_PROCESSES, one per core by default), so the
builds use every core and leave the web server's; 0 builds in the worker thread itself.
"""

from __future__ import annotations

import threading
import time

from image2model.children import CPU_COUNT
from image2model.memory import release_free_memory
from image2model.providers.base import WAITING_FOR_CPU, ItemRun, ProviderOutput
from image2model.providers.build_pool import Built, build, shared_pool

# What the item says when no object could be separated (mask_source "full_frame").
NOTHING_STOOD_OUT = ("Nothing stood out from the background, so the whole photo became a flat plate. "
                     "For a model of the object, try a photo on a plainer background, or a cut-out PNG "
                     "with a transparent background.")

CPU_SLOTS = threading.BoundedSemaphore(CPU_COUNT)
MAX_INPUT_SIDE = 2048


class LocalReliefProvider:
    slots = None  # the CPU gate is inside run: a photo waiting for a core shows it is waiting

    def __init__(self, processes: int | None = None):
        count = CPU_COUNT if processes is None else processes
        self.pool = shared_pool(count) if count > 0 else None

    @classmethod
    def from_settings(cls, settings) -> LocalReliefProvider:  # noqa: ANN001
        return cls(settings.offline_processes)

    def run(self, item: ItemRun) -> ProviderOutput:
        try:
            result, built_seconds = self._build(item)
            item.write_file(item.model_target, [result.glb])
            item.write_file(item.preview_target, [result.cutout])  # "what the model saw"
        finally:
            if self.pool is None:  # the build's arrays were this process's (a build process trims its own)
                release_free_memory()
        kept = item.params.get("background") == "keep"  # asked for the whole photo: nothing to explain
        return ProviderOutput(
            has_preview=True,
            run_seconds=built_seconds,
            extra_stats={"mask_source": result.mask_source, "shape": result.shape},
            note=None if result.separated or kept else NOTHING_STOOD_OUT,
        )

    def _build(self, item: ItemRun) -> tuple[Built, float]:
        """The build and its seconds, holding a core only while it runs: the next photo's
        build starts while this one's files are written (two fsyncs that left a build
        process idle)."""
        item.progress(2, WAITING_FOR_CPU)
        while not CPU_SLOTS.acquire(timeout=0.5):
            item.check_stop()
        try:
            started = time.monotonic()
            item.check_stop()

            def report(fraction: float, stage: str) -> None:
                item.check_stop()
                item.progress(5 + 85 * fraction, stage)

            if self.pool is not None:
                result = self.pool.build(item.inputs[0], dict(item.params), report, item.check_stop)
            else:
                result = build(item.inputs[0], item.params, report)
            return result, time.monotonic() - started
        finally:
            CPU_SLOTS.release()

    def cancel(self, item: ItemRun) -> None:
        """Nothing remote to stop: the build stops at its next check."""


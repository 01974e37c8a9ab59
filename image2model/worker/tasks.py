"""The huey task: one per item.

Tasks are registered on a huey instance built from settings (not at import time), so the
web process, a `huey_consumer` and the tests each wire their own. Housekeeping (reaper,
cleanup) is not a periodic task: every worker process runs it itself (`housekeeping.py`), so
recovery never waits on one special consumer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from huey import Huey

from image2model.worker.queue import RUN_ITEM_TASK
from image2model.worker.runner import ItemRunner


@dataclass
class Tasks:
    run_item: Any


def register_tasks(huey: Huey, runner: ItemRunner) -> Tasks:
    @huey.task(name=RUN_ITEM_TASK)
    def run_item(job_id: str, index: int, turn: int | None = None) -> None:
        runner.run(job_id, index, turn)  # turn: the one it was queued with (tasks of old releases have none)

    return Tasks(run_item=run_item)

"""The huey tasks: one per item, plus the periodic reaper and cleanup.

Tasks are registered on a huey instance built from settings (not at import time), so the
web process, a `huey_consumer` and the tests each wire their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from huey import Huey, crontab

from image2model.worker.runner import ItemRunner


@dataclass
class Tasks:
    run_item: Any
    reap: Any
    cleanup: Any


def register_tasks(huey: Huey, runner: ItemRunner) -> Tasks:
    @huey.task(name="image2model.run_item")
    def run_item(job_id: str, index: int) -> None:
        runner.run(job_id, index)

    @huey.periodic_task(crontab(minute="*"), name="image2model.reap")
    def reap() -> None:
        runner.reap()

    @huey.periodic_task(crontab(minute="*/15"), name="image2model.cleanup")
    def cleanup() -> None:
        runner.cleanup()

    return Tasks(run_item=run_item, reap=reap, cleanup=cleanup)

"""Entry point for `huey_consumer` on any machine:

    huey_consumer image2model.worker.main.huey -w 25 -k thread -g TERM -t 30

It builds the runtime from the same environment as the web app (REDIS_URL, DATA_DIR on a
shared volume, FAL_KEY), so a job created by the web process runs here.
"""

import atexit
import logging

from huey.consumer_options import ConsumerConfig

from image2model.config import get_settings
from image2model.logs import setup_logging
from image2model.memory import freeze_startup_objects, limit_malloc_arenas
from image2model.runtime import get_runtime


def _huey_logs_through_ours(config: ConsumerConfig, logger: logging.Logger | None = None) -> None:
    """`huey_consumer` gives the `huey` logger a handler of its own (its own format) right after
    importing this module: every huey line would come twice, once not as our format. Keep
    only its level (-v, -q); our root handler prints the lines (so `-l FILE` is not used)."""
    (logger or logging.getLogger()).setLevel(config.loglevel)


ConsumerConfig.setup_logger = _huey_logs_through_ours  # type: ignore[method-assign]
setup_logging(get_settings().log_level, get_settings().log_format)
limit_malloc_arenas()
runtime = get_runtime()
huey = runtime.huey
freeze_startup_objects()


@huey.on_startup()
def start_housekeeping() -> None:
    """Runs in every worker as it starts: the first one of each process starts that process's
    housekeeping (liveness, reaper, cleanup), so no consumer is special."""
    runtime.start_housekeeping(runtime.settings.workers)
    runtime.serve_worker_metrics()


@huey.on_shutdown()
def hand_back_watched_items() -> None:
    """Runs in every worker as it stops (a graceful stop, `-g TERM`), and at exit after any
    other stop: items that FAL is still running for this process go back on the queue with
    their request ids, for another process to follow at once rather than after the reaper."""
    runtime.runner.stopping.set()
    runtime.runner.drain()


atexit.register(hand_back_watched_items)

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


consumer_threads = 0  # the consumer's -w, as it told us; 0 until then


def _take_consumer_config(config: ConsumerConfig, logger: logging.Logger | None = None) -> None:
    """`huey_consumer` calls this with its options right after importing this module, before
    any worker starts. It would give the `huey` logger a handler of its own (its own format):
    every huey line would come twice, once not as our format. Keep only its level (-v, -q);
    our root handler prints the lines (so `-l FILE` is not used). And note its thread count
    (-w): the one this process reports, whatever WORKERS says."""
    global consumer_threads
    (logger or logging.getLogger()).setLevel(config.loglevel)
    consumer_threads = config.workers


ConsumerConfig.setup_logger = _take_consumer_config  # type: ignore[method-assign]
setup_logging(get_settings().log_level, get_settings().log_format)
limit_malloc_arenas()
runtime = get_runtime()
huey = runtime.huey
freeze_startup_objects()


@huey.on_startup()
def start_housekeeping() -> None:
    """Runs in every worker as it starts: the first one of each process starts that process's
    housekeeping (liveness, reaper, cleanup), so no consumer is special."""
    runtime.start_housekeeping(consumer_threads or runtime.settings.workers)
    runtime.serve_worker_metrics()


@huey.on_shutdown()
def hand_back_watched_items() -> None:
    """Runs in every worker as it stops (a graceful stop, `-g TERM`), and at exit after any
    other stop: items that FAL is still running for this process go back on the queue with
    their request ids, for another process to follow at once rather than after the reaper."""
    runtime.runner.stopping.set()
    runtime.runner.drain()


atexit.register(hand_back_watched_items)

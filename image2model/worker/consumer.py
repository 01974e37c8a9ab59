"""A huey consumer that lives inside the web process.

huey's `Consumer.start()` installs signal handlers: off the main thread that raises, and on
it it steals uvicorn's SIGTERM. This subclass leaves signals to the host process, and `stop`
drains gracefully before telling huey about tasks still in flight.
"""

from __future__ import annotations

import logging

from huey import Huey
from huey.consumer import Consumer

log = logging.getLogger(__name__)


class InProcessConsumer(Consumer):
    def _set_signal_handlers(self) -> None:
        """The web server owns the process's signals."""


def start_embedded_consumer(huey: Huey, workers: int, shutdown_timeout: float = 30.0) -> InProcessConsumer:
    consumer = InProcessConsumer(
        huey, workers=workers, worker_type="thread", periodic=True,
        initial_delay=0.1, backoff=1.15, max_delay=0.5, check_worker_health=False,
        shutdown_timeout=shutdown_timeout,
    )
    consumer.start()
    log.info("embedded huey consumer started with %d thread workers", workers)
    return consumer


def stop_embedded_consumer(consumer: InProcessConsumer) -> None:
    consumer.stop(graceful=True)
    consumer.huey.notify_interrupted_tasks()
    log.info("embedded huey consumer stopped")

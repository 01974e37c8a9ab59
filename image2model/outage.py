"""One log line when the job store goes away and one when it is back, however many threads
notice: an outage of a minute must not bury the log under a line per heartbeat."""

from __future__ import annotations

import logging
import threading


class OutageLog:
    def __init__(self, logger: logging.Logger, what: str):
        self.logger = logger
        self.what = what
        self._lock = threading.Lock()
        self.down = False

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            first, self.down = not self.down, True
        if first:
            self.logger.warning("%s unreachable, waiting: %s", self.what, exc)

    def ok(self) -> bool:
        """Note a success; True when it ends an outage."""
        if not self.down:
            return False
        with self._lock:
            ended, self.down = self.down, False
        if ended:
            self.logger.info("%s reachable again", self.what)
        return ended


store_outage = OutageLog(logging.getLogger("image2model.worker"), "job store")  # workers' writes

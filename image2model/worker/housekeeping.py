"""The housekeeping every worker process does for itself: say it is alive, take back items
whose worker died, queue again items no queue task will run, and clean up old jobs.

Each process runs it, on a short period, so recovery never depends on one special consumer:
a restarted process takes back its own dead items at once, and any live process takes over a
dead machine's items once that machine's liveness has lapsed (`worker_ttl_seconds`). Reaping
twice is harmless: every step is a compare-and-set on the item.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from image2model.config import Settings
from image2model.jobs.store import JobStore, StoreUnavailable
from image2model.worker.liveness import process_id
from image2model.outage import store_outage
from image2model.worker.runner import ItemRunner

log = logging.getLogger(__name__)

EXPIRE_SECONDS = 60.0  # expired jobs go within a minute of RETENTION_HOURS (one indexed query)
CLEANUP_SECONDS = 900.0  # the full sweep: every job folder checked against the store


class Housekeeper:
    def __init__(self, runner: ItemRunner, store: JobStore, settings: Settings, workers: int):
        self.runner = runner
        self.store = store
        self.settings = settings
        self.workers = workers
        self.process = process_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_cleanup = 0.0
        self._last_expiry = 0.0
        self._started_at = time.time()
        self._reap_from = 0.0  # after an outage, live workers get time to speak up again

    def start(self) -> Housekeeper:
        """Say we live and reap once at once (a restart takes back its dead items now), then
        keep doing it in the background."""
        self.tick()
        self._thread = threading.Thread(target=self._loop, name="i2m-housekeeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.store.mark_gone(self.process)
        except Exception:  # noqa: BLE001 - going away anyway; the liveness lapses by itself
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reap_seconds):
            self.tick()

    def tick(self, now: float | None = None) -> None:
        now = now or time.time()
        try:
            self.store.mark_alive(self.process, now, self.settings.worker_ttl_seconds, {
                "host": socket.gethostname(), "pid": os.getpid(), "workers": self.workers,
                "started_at": self._started_at, "seen_at": now})
            store_outage.ok()
            if self._reap_from < 0:
                # Everyone's heartbeats and liveness stopped during the outage, not their work:
                # reap only once live workers have had a round to say so again.
                self._reap_from = now + self.settings.worker_ttl_seconds + self.settings.reap_seconds
            if now >= self._reap_from:
                self.runner.reap(now)
            if now - self._last_expiry >= EXPIRE_SECONDS:
                self._last_expiry = now
                full = now - self._last_cleanup >= CLEANUP_SECONDS
                if full:
                    self._last_cleanup = now
                self.runner.cleanup(now, full=full)
        except StoreUnavailable as exc:
            store_outage.failed(exc)
            self._reap_from = -1.0  # an outage: hold the reaper when it ends
        except Exception:  # noqa: BLE001 - housekeeping must outlive any one bad round
            log.exception("housekeeping round failed")

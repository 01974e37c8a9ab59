"""The huey queue: SQLite in the data directory by default, Redis when REDIS_URL is set.

huey's SQLite storage polls: every idle worker thread queries the database on a backoff.
With 25 workers that costs CPU the web server wants, and adds up to a poll interval to every
new job. `WakingSqliteStorage` lets idle workers sleep on a condition that an enqueue in this
process (the embedded mode's only writer) sets at once; a slow poll still notices tasks that
another process added.
"""

from __future__ import annotations

import threading

from huey import Huey, RedisHuey, SqliteHuey
from huey.storage import SqliteStorage

from image2model.config import Settings

QUEUE_NAME = "image2model"
IDLE_POLL_SECONDS = 1.0  # how soon a task enqueued by another process is noticed


class WakingSqliteStorage(SqliteStorage):
    blocking = True  # the worker loop must not add its own sleep: dequeue waits instead

    def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self._arrived = threading.Condition()
        self._pending_wakeups = 0

    def enqueue(self, data, priority=None):  # noqa: ANN001, ANN201
        super().enqueue(data, priority)
        with self._arrived:
            self._pending_wakeups += 1
            self._arrived.notify()

    def dequeue(self):  # noqa: ANN201
        task = super().dequeue()
        if task is not None:
            return task
        with self._arrived:
            if self._pending_wakeups == 0:
                self._arrived.wait(IDLE_POLL_SECONDS)
            self._pending_wakeups = max(0, self._pending_wakeups - 1)
        return super().dequeue()


def make_huey(settings: Settings) -> Huey:
    if settings.use_redis:
        return RedisHuey(QUEUE_NAME, url=settings.redis_url, utc=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(QUEUE_NAME, filename=str(settings.data_dir / "queue.db"), utc=True,
                      storage_class=WakingSqliteStorage)

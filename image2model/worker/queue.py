"""The huey queue: SQLite in the data directory by default, Redis when REDIS_URL is set.

Both are priority queues, so that every job gets its turn: an item's priority is minus its
turn (`item_priority`; jobs/fairness.py gives the turns), so the first photos of all jobs run
before the second ones, and a one-photo job started behind a 250-photo one starts at the next
free worker instead of after all 250. Equal priorities run in the order they were queued.

huey's SQLite storage polls: every idle worker thread queries the database on a backoff.
With 25 workers that costs CPU the web server wants, and adds up to a poll interval to every
new job. `WakingSqliteStorage` lets idle workers sleep on a condition that an enqueue in this
process (the embedded mode's only writer) sets at once; a slow poll still notices tasks that
another process added.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Sequence

import redis
from huey import Huey, PriorityRedisHuey, SqliteHuey
from huey.api import TaskWrapper
from huey.storage import RedisPriorityQueue, RedisStorage, SqliteStorage

from image2model.config import Settings
from image2model.jobs.redis_store import CONNECT_TIMEOUT_SECONDS, OUTAGE_ERRORS, SOCKET_TIMEOUT_SECONDS
from image2model.outage import OutageLog

log = logging.getLogger(__name__)
queue_outage = OutageLog(log, "work queue")

QUEUE_NAME = "image2model"
# Redis: a sorted set (huey.redis.image2model.fair) rather than the list a plain RedisHuey keeps
# under the old name, which Redis could not turn into a set. Tasks left in an old list after an
# upgrade are queued again by the reaper (their items are queued with no task it can see).
REDIS_QUEUE_NAME = QUEUE_NAME + ".fair"
RUN_ITEM_TASK = "image2model.run_item"
DEFER_SECONDS = 1.0  # a task deferred (all FAL slots in use) is tried again this much later
IDLE_POLL_SECONDS = 1.0  # how soon a task enqueued by another process is noticed
OUTAGE_PAUSE_SECONDS = 1.0  # a worker waits this long between tries while Redis is down


class WakingSqliteStorage(SqliteStorage):
    blocking = True  # the worker loop must not add its own sleep: dequeue waits instead

    def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self._arrived = threading.Condition()
        self._pending_wakeups = 0

    def enqueue(self, data, priority=None):  # noqa: ANN001, ANN201
        self.enqueue_many([(data, priority)])

    def enqueue_many(self, messages: Sequence[tuple[bytes, int | None]]) -> None:
        """All in one transaction (huey's own insert, for many), then one worker woken for each."""
        with self.db(commit=True) as cursor:
            cursor.executemany("insert into task (queue, data, priority) values (?, ?, ?)",
                               [(self.name, self.to_blob(data), priority or 0) for data, priority in messages])
        with self._arrived:
            self._pending_wakeups += len(messages)
            self._arrived.notify(len(messages))

    def dequeue(self):  # noqa: ANN201
        task = super().dequeue()
        if task is not None:
            return task
        with self._arrived:
            if self._pending_wakeups == 0:
                self._arrived.wait(IDLE_POLL_SECONDS)
            self._pending_wakeups = max(0, self._pending_wakeups - 1)
        return super().dequeue()


def item_priority(index: int, turn: int | None = None) -> int:
    """huey runs higher priorities first: lower turns first (an item made before turns were
    kept has its index as its turn)."""
    return -(index if turn is None else turn)


class PatientRedisStorage(RedisPriorityQueue, RedisStorage):
    """While Redis is down, every worker thread waits quietly and the consumer logs one line
    per outage (huey itself logs a traceback per thread per try: 1,300 lines for a minute)."""

    def _quietly(self, call, empty):  # noqa: ANN001, ANN202
        try:
            result = call()
        except OUTAGE_ERRORS as exc:
            queue_outage.failed(exc)
            time.sleep(OUTAGE_PAUSE_SECONDS)
            return empty
        queue_outage.ok()
        return result

    def dequeue(self):  # noqa: ANN201
        return self._quietly(super().dequeue, None)

    def enqueue_many(self, messages: Sequence[tuple[bytes, int | None]]) -> None:
        """One ZADD for all, members made as huey's `enqueue` makes them (a microsecond stamp
        first, so equal priorities keep their order: here one microsecond apart)."""
        stamp = int(time.time() * 1e6)
        self.conn.zadd(self.queue_key, {struct.pack(">Q", stamp + n) + data: 0 if priority is None else -priority
                                        for n, (data, priority) in enumerate(messages)})

    def read_schedule(self, ts):  # noqa: ANN001, ANN201
        return self._quietly(lambda: super(PatientRedisStorage, self).read_schedule(ts), [])

    def delete_data(self, key):  # noqa: ANN001, ANN201
        """After every task huey deletes its revocation key; a task that ends as Redis goes
        away (they are short: FAL waits belong to the watcher) must not log a traceback."""
        return self._quietly(lambda: super(PatientRedisStorage, self).delete_data(key), False)


def enqueue_items(huey: Huey, run_item: TaskWrapper, entries: Sequence[tuple[str, int, int | None]]) -> None:
    """Queue the tasks of many items at once: a job's 25 queued one by one took 7-11 ms each
    under load (a transaction each), and each photo started only when its own task arrived.
    Made as huey's `enqueue` makes them (this app uses neither its signals nor its results)."""
    tasks = [run_item.s(job_id, index, turn, priority=item_priority(index, turn)) for job_id, index, turn in entries]
    if tasks:
        huey.storage.enqueue_many([(huey.serialize_task(task), task.priority) for task in tasks])


def make_huey(settings: Settings) -> Huey:
    if settings.use_redis:
        pool = redis.ConnectionPool.from_url(settings.redis_url, socket_timeout=SOCKET_TIMEOUT_SECONDS,
                                             socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                             health_check_interval=30)
        return PriorityRedisHuey(REDIS_QUEUE_NAME, connection_pool=pool, utc=True, storage_class=PatientRedisStorage)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(QUEUE_NAME, filename=str(settings.data_dir / "queue.db"), utc=True,
                      storage_class=WakingSqliteStorage)


def pending_item_tasks(huey: Huey) -> set[tuple[str, int]]:
    """(job id, item index) of every item task waiting in the queue, or deferred to run soon."""
    found = set()
    for task in [*huey.pending(), *huey.scheduled()]:
        if task.name == RUN_ITEM_TASK and len(task.args) in (2, 3):  # (job id, index[, turn])
            found.add((str(task.args[0]), int(task.args[1])))
    return found

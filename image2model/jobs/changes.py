"""Wake readers when a job changes, so nobody busy-polls the store.

A store calls `notify(job_id, version)` on its own writes and whenever its backend tells it of
another process's write (Redis pub/sub, or SQLite's data_version counter). Readers wait for a
job's version to pass the one they have seen, from a thread or from asyncio.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

Waiter = tuple[int, Callable[[int], None]]

# While a job changes fast (25 photos starting at once make ~75 versions in a third of a
# second) a follower reads it at most every 25 ms, and every 5 ms per photo for a big job: a
# read costs in proportion to the photos, so this bounds what one followed job costs a second
# whatever its size (a 25-photo job: 8 reads a second). A change after a quiet spell is read
# at once.
MIN_READ_INTERVAL = 0.025
READ_INTERVAL_PER_ITEM = 0.005


def read_interval(items: int) -> float:
    """The least time between two reads of a job with this many items that keeps changing."""
    return max(MIN_READ_INTERVAL, READ_INTERVAL_PER_ITEM * items)


class ChangeHub:
    def __init__(self, current_version: Callable[[str], int | None]):
        self._current_version = current_version
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Waiter]] = defaultdict(list)
        self.on_first_waiter: Callable[[], None] | None = None

    def watched_jobs(self) -> list[str]:
        with self._lock:
            return list(self._waiters)

    @property
    def waiter_count(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    def notify(self, job_id: str, version: int) -> None:
        with self._lock:
            waiters = self._waiters.get(job_id)
            if not waiters:
                return
            due = [w for w in waiters if w[0] < version]
            rest = [w for w in waiters if w[0] >= version]
            if rest:
                self._waiters[job_id] = rest
            else:
                del self._waiters[job_id]
        for _, callback in due:
            callback(version)

    def _add(self, job_id: str, waiter: Waiter) -> None:
        with self._lock:
            self._waiters[job_id].append(waiter)
        if self.on_first_waiter:
            self.on_first_waiter()

    def _remove(self, job_id: str, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(job_id)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[job_id]

    def wait(self, job_id: str, since: int, timeout: float) -> int | None:
        """Block until the job's version exceeds `since`; the new version, or None on timeout
        (or when the job does not exist)."""
        event = threading.Event()
        seen: list[int] = []

        def wake(version: int) -> None:
            seen.append(version)
            event.set()

        waiter: Waiter = (since, wake)
        self._add(job_id, waiter)
        try:
            current = self._current_version(job_id)
            if current is None:
                return None
            if current > since:
                return current
            if event.wait(timeout):
                return seen[0]
            return None
        finally:
            self._remove(job_id, waiter)

    async def wait_async(self, job_id: str, since: int, timeout: float) -> int | None:
        """The asyncio twin of `wait`: costs one future per waiting reader, no thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()

        def wake(version: int) -> None:
            loop.call_soon_threadsafe(_resolve, future, version)

        waiter: Waiter = (since, wake)
        self._add(job_id, waiter)
        try:
            current = await asyncio.to_thread(self._current_version, job_id)
            if current is None:
                return None
            if current > since:
                return current
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                return None
        finally:
            self._remove(job_id, waiter)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)

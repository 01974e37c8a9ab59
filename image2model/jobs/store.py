"""The job store interface, shared by the SQLite and Redis backends.

Writers are the job service (create, cancel, delete) and worker tasks (claim, progress,
results). Item updates are compare-and-set on the item's state and owning worker, so a
worker that was presumed dead and replaced can no longer overwrite its successor's work,
and a cancel cannot race a claim.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from image2model.jobs.changes import ChangeHub
from image2model.jobs.model import Item, ItemState, Job


def jsonable(value: Any) -> Any:
    """Turn dataclasses and enums inside a patch into plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class DecodedItems:
    """Items decoded from their stored JSON, kept by that text: readers read a job again on
    every change (each SSE stream, each task), and usually one item of 25 has changed, so
    only that one is decoded again. Each caller gets its own copy of the Item."""

    LIMIT = 5000  # entries (about 1.5 KB each); all are dropped at once past it

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], tuple[str, Item]] = {}

    def item(self, job_id: str, key: str, raw: str) -> Item:
        found = self._by_key.get((job_id, key))
        if found is None or found[0] != raw:
            found = (raw, Item.from_dict(json.loads(raw)))
            if len(self._by_key) >= self.LIMIT:
                self._by_key.clear()
            self._by_key[(job_id, key)] = found
        copy = Item.__new__(Item)
        copy.__dict__.update(found[1].__dict__)
        return copy


class StoreUnavailable(Exception):
    """The job store cannot be reached (Redis down or hanging, disk gone): callers wait and
    try again, or answer 503, instead of treating it as a bug."""


def patch_item(
    current: dict[str, Any],
    patch: dict[str, Any],
    expect_state: Iterable[ItemState] | None,
    expect_worker: str | None,
) -> dict[str, Any] | None:
    """Apply a patch if the item is in an expected state and owned by the expected worker."""
    if expect_state is not None and current["state"] not in {str(s) for s in expect_state}:
        return None
    if expect_worker is not None and current.get("worker") != expect_worker:
        return None
    updated = dict(current)
    updated.update(jsonable(patch))
    return updated


class JobStore(ABC):
    """Persistent job records plus change notification."""

    def __init__(self, retention_seconds: float):
        self.retention_seconds = retention_seconds
        self.changes = ChangeHub(self.version)
        self.decoded = DecodedItems()

    # --- records -------------------------------------------------------------------------
    @abstractmethod
    def create(self, job: Job) -> None: ...

    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def version(self, job_id: str) -> int | None: ...

    @abstractmethod
    def item(self, job_id: str, index: int) -> Item | None:
        """One item alone, for a task to see cheaply whether it has anything to do."""

    @abstractmethod
    def update_item(
        self,
        job_id: str,
        index: int,
        patch: dict[str, Any],
        *,
        expect_state: Iterable[ItemState] | None = None,
        expect_worker: str | None = None,
        unless_cancelled: bool = False,
    ) -> Item | None:
        """Patch one item atomically; None when the job is gone or a condition failed
        (`unless_cancelled`: also when the job was cancelled, checked in the same step, so a
        success cannot slip past a cancel)."""

    @abstractmethod
    def touch(self, job_id: str, index: int, worker: str, now: float) -> bool:
        """Refresh a running item's heartbeat without waking readers; False if the worker
        no longer owns the item."""

    @abstractmethod
    def request_cancel(self, job_id: str) -> bool: ...

    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool | None:
        """Whether the job was cancelled (None: it is gone); cheap, workers ask it often."""

    @abstractmethod
    def delete(self, job_id: str) -> None: ...

    # --- queries for housekeeping -------------------------------------------------------
    @abstractmethod
    def running_items(self) -> list[tuple[str, Item]]: ...

    @abstractmethod
    def queued_items(self) -> list[tuple[str, Item]]:
        """Items waiting for a worker; the reaper checks each has a queue task."""

    @abstractmethod
    def queued_items_with_share(self) -> list[tuple[str, str, Item]]:
        """(job id, the job's fair share, item) of every item waiting (jobs/fairness.py)."""

    @abstractmethod
    def move_turns(self, job_id: str, turns: dict[int, int]) -> list[int]:
        """Give items new turns in the fair queue, where they still wait; the indices moved.
        Readers are not woken: a turn is not part of what they show."""

    @abstractmethod
    def queued_count(self) -> int:
        """How many items wait for a worker, counted without reading them (every job start asks)."""

    # --- worker processes' liveness ------------------------------------------------------
    @abstractmethod
    def mark_alive(self, process: str, now: float, ttl: float, info: dict[str, Any]) -> None:
        """Say this worker process is alive until now + ttl."""

    @abstractmethod
    def alive_processes(self, now: float) -> dict[str, dict[str, Any]]:
        """The worker processes alive at `now`, with the info each gave."""

    @abstractmethod
    def mark_gone(self, process: str) -> None:
        """A process that stops cleanly says so, so nobody waits for its liveness to expire."""

    @abstractmethod
    def job_ids_created_before(self, timestamp: float) -> list[str]: ...

    @abstractmethod
    def all_job_ids(self) -> list[str]: ...

    @abstractmethod
    def recent_job_ids(self, limit: int) -> list[str]:
        """The newest jobs first, at most `limit` (what an operator looks at)."""

    # --- learned model durations --------------------------------------------------------
    @abstractmethod
    def record_duration(self, model: str, seconds: float) -> None: ...

    @abstractmethod
    def typical_duration(self, model: str) -> float | None: ...

    # --- spending guard: images accepted per sliding hour --------------------------------
    @abstractmethod
    def reserve_images(self, count: int, limit: int, window_seconds: float, now: float,
                       holder: str = "") -> bool:
        """Atomically count `count` images against a rolling window; False (and nothing
        counted) when that would pass `limit`. `holder` (a job id) can give some back."""

    @abstractmethod
    def release_images(self, holder: str, count: int) -> None:
        """Give back up to `count` of `holder`'s reserved images: photos that were never sent."""

    @abstractmethod
    def images_reserved(self, window_seconds: float, now: float) -> int:
        """How many images the rolling window holds now."""

    # --- secrets: the server secret, and users' own FAL keys (sealed) --------------------
    @abstractmethod
    def shared_secret(self, candidate: str) -> str:
        """The secret every process of this deployment shares: the first candidate stored wins."""

    @abstractmethod
    def put_job_key(self, job_id: str, sealed: str) -> None:
        """A user's FAL key for one job, already sealed; kept apart from the job record, so no
        status or listing can ever carry it."""

    @abstractmethod
    def job_key(self, job_id: str) -> str | None: ...

    @abstractmethod
    def drop_job_key(self, job_id: str) -> None:
        """Forget the key (the job ended, or was deleted)."""

    @abstractmethod
    def ping(self) -> bool: ...

    def close(self) -> None:
        """Release connections and background threads."""

    # --- waiting ------------------------------------------------------------------------
    def wait_for_change(self, job_id: str, since: int, timeout: float) -> int | None:
        return self.changes.wait(job_id, since, timeout)

    async def wait_for_change_async(self, job_id: str, since: int, timeout: float) -> int | None:
        return await self.changes.wait_async(job_id, since, timeout)


DELETED_VERSION = 2**62  # announced when a job is deleted, so every waiter wakes and finds it gone
EWMA_WEIGHT = 0.3  # how much one new run moves a model's typical duration


def blend_duration(previous: float | None, seconds: float) -> float:
    if previous is None:
        return seconds
    return (1 - EWMA_WEIGHT) * previous + EWMA_WEIGHT * seconds

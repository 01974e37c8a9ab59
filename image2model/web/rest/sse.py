"""Server-Sent Events for one job: a `progress` event on every change, then one of
`completed`, `failed` or `cancelled`, then the end. Each is followed by the same snapshot under
the original image2model's name (`task_progress`, `task_completed`, `task_failed`), and preceded
by one `file_update` per item that changed (see original_events.py).

Every event carries the job's version as its `id:`, and its data is the full status snapshot
(the same shape as GET /status/tasks/{id}), so a client that reconnects with Last-Event-ID
misses nothing: if the job moved on it gets the latest snapshot at once, and the terminal event
if the job ended meanwhile.

Cost: one `JobWatch` per watched job, shared by all of that job's streams. The watch waits on
the job store's change events (an asyncio future, no thread, no polling), reads and encodes
the job once per change, and wakes its streams with an asyncio.Event. A thousand streams on
one job cost one store waiter and one read per change; each stream is a coroutine and a timer.
Writes that change nothing a client can see (a worker refreshing its heartbeat) wake nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from image2model.errors import AppError
from image2model.jobs.changes import read_interval
from image2model.jobs.model import Job, JobState
from image2model.jobs.service import JobService, Liveness, job_status
from image2model.web.rest.original_events import file_fields, gone_fields, item_key, job_fields, original_event

TERMINAL_EVENTS = {
    JobState.SUCCEEDED: "completed",
    JobState.PARTIAL: "completed",  # finished with results, some items failed (see items[].error)
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}
HEARTBEAT = ": keep-alive\n\n"

log = logging.getLogger(__name__)


def encode(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def with_fields(encoded: str, fields: dict[str, Any]) -> str:
    """An encoded object with more keys, without encoding the rest of it again (a 25-photo
    status is most of an event's cost)."""
    extra = encode(fields)
    return encoded if extra == "{}" else f"{encoded[:-1]},{extra[1:]}"


@dataclass(frozen=True)
class Snapshot:
    job: Job
    data: str  # the status as JSON, encoded once per version
    visible: dict[str, Any]  # the status without the version: what a client can tell apart
    original: str  # the status with the original API's fields, for its event names
    file_keys: tuple[tuple[Any, ...], ...]  # per item: what a file list shows (a change: a file_update)
    _file_updates: dict[int, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, job: Job, live: Liveness = Liveness()) -> Snapshot:
        status = job_status(job, live)
        data = encode(status)
        file_keys = tuple(item_key(item) for item in status["items"])
        original = with_fields(data, job_fields(status))
        status.pop("version")
        return cls(job, data, status, original, file_keys)

    def file_update(self, index: int) -> str:
        """Item `index`'s file_update, encoded when a stream first needs it (most versions
        change one item of many, and no stream sends the others)."""
        found = self._file_updates.get(index)
        if found is None:
            found = self._file_updates[index] = encode(file_fields(self.visible, self.visible["items"][index]))
        return found

    @property
    def version(self) -> int:
        return self.job.version

    @property
    def event(self) -> str:
        return TERMINAL_EVENTS.get(self.job.state, "progress")

    @property
    def terminal(self) -> bool:
        return self.job.state.terminal


def format_event(event: str, data: str, event_id: int | None = None, retry_ms: int | None = None) -> str:
    lines = [f"retry: {retry_ms}"] if retry_ms is not None else []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return "\n".join(lines) + "\n\n"


@dataclass
class JobWatch:
    """The latest snapshot of one job, kept current by one task while anyone streams it."""

    job_id: str
    snapshot: Snapshot | None  # None: the job was deleted or expired
    streams: int = 0
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, snapshot: Snapshot | None) -> None:
        if snapshot is not None and self.snapshot is not None:
            if snapshot.version <= self.snapshot.version:
                return
            if snapshot.visible == self.snapshot.visible:
                self.snapshot = snapshot  # newer, but nothing to tell: wake nobody
                return
        self.snapshot = snapshot
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()

    @property
    def over(self) -> bool:
        return self.snapshot is None or self.snapshot.terminal


class Watchers:
    """The shared watches of one app (one event loop)."""

    def __init__(self, service: JobService, recheck_seconds: float):
        self.service = service
        self.recheck_seconds = recheck_seconds  # quiet spells end in a read: was the job deleted?
        self._watches: dict[str, JobWatch] = {}

    @property
    def open_streams(self) -> int:
        return sum(w.streams for w in self._watches.values())

    @property
    def watched_jobs(self) -> int:
        return len(self._watches)

    @contextlib.asynccontextmanager
    async def watch(self, job: Job) -> AsyncIterator[JobWatch]:
        watch = self._watches.get(job.id)
        if watch is None:
            watch = self._watches[job.id] = JobWatch(job.id, Snapshot.of(job, self.service.liveness(job)))
        else:
            watch.publish(Snapshot.of(job, self.service.liveness(job)))
        watch.streams += 1
        if (watch.task is None or watch.task.done()) and not watch.over:
            watch.task = asyncio.create_task(self._follow(watch), name=f"sse-watch:{job.id}")
        try:
            yield watch
        finally:
            watch.streams -= 1
            if watch.streams == 0:
                self._watches.pop(job.id, None)
                if watch.task is not None:
                    watch.task.cancel()

    def job_deleted(self, job_id: str) -> None:
        """Deletes raise no change event; the deleting route tells this process's streams."""
        watch = self._watches.get(job_id)
        if watch is not None:
            watch.publish(None)

    async def _follow(self, watch: JobWatch) -> None:
        read_at, failures = 0.0, 0
        while not watch.over:
            assert watch.snapshot is not None
            try:
                # a change or a quiet spell: either way a fresh read says what is true now
                await self.service.wait_for_change_async(watch.job_id, watch.snapshot.version,
                                                         self.recheck_seconds)
                await asyncio.sleep(max(0.0, read_at + read_interval(len(watch.snapshot.job.items)) - time.monotonic()))
                read_at = time.monotonic()
                watch.publish(await asyncio.to_thread(self._read, watch.job_id))
                if failures:
                    log.info("watching job %s again after %d failed reads", watch.job_id, failures)
                    failures = 0
            except Exception:  # noqa: BLE001 - the store hiccupped: keep the streams, try again
                # the cause once, then a line a minute: an outage must not flood the log
                failures += 1
                if failures == 1:
                    log.warning("watching job %s failed; retrying every second", watch.job_id, exc_info=True)
                elif failures % 60 == 0:
                    log.warning("watching job %s still failing after %d reads", watch.job_id, failures)
                await asyncio.sleep(1.0)

    def _read(self, job_id: str) -> Snapshot | None:
        try:
            job = self.service.get(job_id)
            return Snapshot.of(job, self.service.liveness(job))
        except AppError:  # deleted or expired
            return None


EVENT_ID = re.compile(r"[0-9]{1,18}")  # ASCII digits: "²" and "¹²³" pass str.isdigit() but not int()


def parse_last_event_id(value: str | None) -> int | None:
    """The job version a reconnecting client has; anything else counts as no id."""
    if value is None or not EVENT_ID.fullmatch(value.strip()):
        return None
    return int(value.strip())


def stream_is_over(job: Job, last_event_id: int | None) -> bool:
    """The client already has the terminal event: answer 204 so EventSource stops retrying."""
    return job.state.terminal and last_event_id is not None and last_event_id >= job.version


async def job_events(watchers: Watchers, job: Job, last_event_id: int | None, heartbeat_seconds: float,
                     retry_ms: int) -> AsyncIterator[str]:
    """The event stream for one job (access was checked by the route)."""
    sent = last_event_id if last_event_id is not None and last_event_id <= job.version else -1
    retry: int | None = retry_ms  # sent once, with the first event
    sent_visible: dict[str, Any] | None = None
    sent_files: dict[int, tuple[Any, ...]] = {}
    async with watchers.watch(job) as watch:
        while True:
            snapshot, woken = watch.snapshot, watch.changed
            if snapshot is None:
                message = "The job was deleted or expired."
                gone = {"error": {"code": "job_not_found", "message": message, "details": {}}}
                yield (format_event("error", encode(gone), retry_ms=retry)
                       + format_event(original_event("error"), encode({**gone, **gone_fields(message)})))
                return
            if snapshot.version > sent and snapshot.visible != sent_visible:
                blocks = []
                for index, key in enumerate(snapshot.file_keys):
                    if sent_files.get(index) != key:
                        blocks.append(format_event("file_update", snapshot.file_update(index)))
                        sent_files[index] = key
                blocks.append(format_event(snapshot.event, snapshot.data, snapshot.version))
                blocks.append(format_event(original_event(snapshot.event), snapshot.original))
                if retry is not None:
                    blocks[0] = f"retry: {retry}\n" + blocks[0]
                yield "".join(blocks)  # one write: a client never gets half of a version
                sent, sent_visible, retry = snapshot.version, snapshot.visible, None
            if snapshot.terminal:
                return
            try:
                await asyncio.wait_for(woken.wait(), heartbeat_seconds)
            except TimeoutError:
                yield HEARTBEAT

"""What an operator sees: one snapshot of the whole deployment, read from the job store.

The store is shared by every process and machine, so this is the cluster's picture however
many workers run: the admin page shows it, and /metrics reports its gauges. Job-level figures
(states, failures) cover the most recent jobs only, so a look stays cheap on a busy server.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from image2model.config import Settings
from image2model.jobs.model import Job, JobState
from image2model.jobs.store import JobStore
from image2model.worker.liveness import owner_process

RECENT_JOBS = 200
FAILURE_WINDOW_SECONDS = 3600.0
SPENDING_WINDOW_SECONDS = 3600.0  # the spending guard's window (JobService._reserve_spending)


@dataclass(frozen=True)
class WorkerView:
    process: str
    host: str
    pid: int | None
    threads: int | None
    items_in_hand: int
    last_seen: float | None


@dataclass(frozen=True)
class FailureGroup:
    code: str
    count: int
    messages: list[str]  # the distinct messages, newest first (a few)
    last_at: float


@dataclass(frozen=True)
class Queue:
    """Cheap to read: what /metrics asks on every scrape."""

    depth: int
    oldest_wait_seconds: float
    running: int
    workers: list[WorkerView]
    fal_images_this_hour: int
    fal_images_limit: int


@dataclass(frozen=True)
class Overview:
    taken_at: float
    queue: Queue
    jobs_by_state: dict[str, int]  # of the recent jobs
    failures: list[FailureGroup]  # of the last hour, among the recent jobs
    jobs: list[Job] = field(default_factory=list)  # the recent jobs, newest first


def queue_view(store: JobStore, settings: Settings, now: float | None = None) -> Queue:
    now = time.time() if now is None else now
    queued = store.queued_items()
    running = store.running_items()
    in_hand = Counter(owner_process(item.worker) for _, item in running)
    workers = [WorkerView(process, str(info.get("host", "?")), info.get("pid"), info.get("workers"),
                          in_hand.get(process, 0), info.get("seen_at"))
               for process, info in sorted(store.alive_processes(now).items())]
    return Queue(depth=len(queued),
                 oldest_wait_seconds=max((now - item.queued_at for _, item in queued), default=0.0),
                 running=len(running), workers=workers,
                 fal_images_this_hour=store.images_reserved(SPENDING_WINDOW_SECONDS, now),
                 fal_images_limit=settings.fal_images_per_hour)


def overview(store: JobStore, settings: Settings, now: float | None = None, recent: int = RECENT_JOBS) -> Overview:
    now = time.time() if now is None else now
    jobs = [job for job in (store.get(job_id) for job_id in store.recent_job_ids(recent)) if job is not None]
    states = Counter(job.state.value for job in jobs)
    return Overview(taken_at=now, queue=queue_view(store, settings, now),
                    jobs_by_state={state.value: states.get(state.value, 0) for state in JobState},
                    failures=failure_groups(jobs, now - FAILURE_WINDOW_SECONDS), jobs=jobs)


def failure_groups(jobs: list[Job], since: float) -> list[FailureGroup]:
    """Failed images since `since`, grouped by error code, the most frequent first."""
    found: dict[str, list[tuple[float, str]]] = {}
    for job in jobs:
        for item in job.items:
            if item.error is not None and (item.finished_at or 0.0) >= since:
                found.setdefault(item.error.code, []).append((item.finished_at or 0.0, item.error.message))
    groups = []
    for code, seen in found.items():
        seen.sort(reverse=True)
        messages = list(dict.fromkeys(message for _, message in seen))[:3]
        groups.append(FailureGroup(code, len(seen), messages, seen[0][0]))
    return sorted(groups, key=lambda g: (-g.count, g.code))


def job_row(job: Job) -> dict[str, Any]:
    """One job as the operator's table shows it."""
    done = sum(1 for item in job.items if item.state.terminal)
    return {"job_id": job.id, "created_at": job.created_at, "model": job.model, "state": job.state.value,
            "images": len(job.items), "done": done, "owner": job.owner or "page/open"}

"""What FAL says about a request while it runs, and what the item shows for it.

Pure functions and one small state holder, without I/O: the watcher feeds statuses in from
its event loop, and its ticker reads the progress out from another thread.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import fal_client

FAST_POLL_SECONDS = 0.1  # how soon a model that should be nearly done is asked again
PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")


class StreamUnavailable(Exception):
    """FAL's status stream cannot be used for this request; polling takes over."""


async def sse_data(lines: AsyncIterable[str]) -> AsyncIterator[str]:
    """The data of each server-sent event; comments and other fields are skipped."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def parse_status(text: str) -> fal_client.Status | None:
    """One status event as fal-client's own status objects (None for a kind we don't know)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a status event is not a JSON object")
    kind = data.get("status")
    if kind == "IN_QUEUE":
        return fal_client.Queued(position=int(data.get("queue_position") or 0))
    if kind == "IN_PROGRESS":
        return fal_client.InProgress(logs=data.get("logs"))
    if kind == "COMPLETED":
        return fal_client.Completed(logs=data.get("logs"), metrics=data.get("metrics") or {},
                                    error=data.get("error"), error_type=data.get("error_type"))
    return None


@dataclass
class StatusWatch:
    """One request's latest status, streamed or polled, and the progress it means.

    Progress comes from the model's log percentages, else from elapsed time against the
    model's typical duration (which also tells polling when to speed up)."""

    typical: float
    since: float = field(default_factory=time.monotonic)
    seen_unfinished: float = 0.0  # how long after submit (or resume) FAL last said "not done"
    queue_position: int | None = None
    running: bool = False
    last_percent: float | None = None
    last_logs: list[dict[str, Any]] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.since

    def saw(self, status: fal_client.Status, asked_at: float) -> bool:
        """Take one status, asked for `asked_at` seconds after the start; True once done."""
        if isinstance(status, fal_client.Completed):
            return True
        self.seen_unfinished = max(self.seen_unfinished, asked_at)
        if isinstance(status, fal_client.Queued):
            self.queue_position = status.position
        elif isinstance(status, fal_client.InProgress):
            self.running = True
            if status.logs:  # a stream sends only new lines; a poll sends them all
                self.last_logs = status.logs
                logged = percent_from_logs(status.logs)
                self.last_percent = logged if logged is not None else self.last_percent
        return False

    def progress(self) -> tuple[float, str] | None:
        """What the item shows now (None before FAL said anything)."""
        if self.running:
            return running_progress(self.elapsed(), self.typical, self.last_percent, self.last_logs)
        if self.queue_position is not None:
            return 5, f"Waiting in FAL's queue (position {self.queue_position + 1})"
        return None


def percent_from_logs(logs: list[dict[str, Any]] | None) -> float | None:
    for entry in reversed(logs or []):
        match = PERCENT.search(str(entry.get("message", "")))
        if match and float(match.group(1)) <= 100:
            return float(match.group(1))
    return None


def poll_interval(base: float, elapsed: float, typical: float) -> float:
    """Poll at the configured pace, and fast once the model should be nearly done, so a
    finished model is noticed within a tenth of a second without hammering FAL all along."""
    if elapsed >= 0.85 * typical:
        return min(base, FAST_POLL_SECONDS)
    return base


def running_progress(elapsed: float, typical: float, logged: float | None,
                     logs: list[dict[str, Any]] | None) -> tuple[float, str]:
    """Progress 5..88 while FAL runs: the model's own percentage when it logs one, else an
    estimate from elapsed time against the typical duration that never claims to be done."""
    last_line = ""
    if logs:
        last_line = str(logs[-1].get("message", "")).strip().splitlines()[0][:80] if logs[-1].get("message") else ""
    if logged is not None:
        return 5 + 83 * logged / 100, last_line or f"Generating ({logged:.0f}%)"
    fraction = elapsed / max(typical, 1.0)
    if fraction < 1:
        left = typical - elapsed
        return 5 + 75 * fraction, last_line or f"Generating, about {left:.0f} s left"
    return 80 + 8 * (1 - math.exp(-(fraction - 1))), last_line or "Generating, taking longer than usual"

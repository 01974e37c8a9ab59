"""The job record: plain dataclasses that round-trip through JSON.

Both stores keep exactly these records, so every reader (page, Gradio API, REST, SSE) sees the
same shape. A job's aggregate state and progress are derived from its items, never stored, so
they cannot drift.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class ItemState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED})


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # finished, some items failed
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class Mode(StrEnum):
    PER_IMAGE = "per_image"  # one model per image
    MULTI_VIEW = "multi_view"  # one model from several views of one object


@dataclass
class ResultFile:
    name: str  # file name inside the job's results directory, e.g. "shoe.glb"
    kind: str  # "model" or "preview"
    size: int
    content_type: str


@dataclass
class ItemError:
    code: str
    message: str


@dataclass
class Item:
    index: int
    name: str  # the original file name (or "a + b + c" for a multi-view item)
    stem: str  # unique base name for this item's results: "shoe" gives "shoe.glb"
    inputs: list[str]  # stored input file names, in view order
    state: ItemState = ItemState.QUEUED
    progress: float = 0.0
    message: str = "Waiting for a worker"
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    attempts: int = 0  # how many times a worker has taken this item
    worker: str | None = None
    request_id: str | None = None  # FAL's request id, stored before waiting on it
    # What we know of a paid submit before (or instead of) its request id: the uploaded input
    # URLs, when the submit was sent (the intent), and plain notes of what happened to it.
    fal_submit: dict[str, Any] = field(default_factory=dict)
    turn: int | None = None  # its round in the fair queue (worker/queue.py); None: its index
    files: list[ResultFile] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    error: ItemError | None = None

    def in_upload_names(self, message: str) -> str:
        """`message` with each stored input it quotes ('01-cat.jpg') named as uploaded
        ('cat.jpg'): the person never saw the stored names."""
        names = [self.name] if len(self.inputs) == 1 else self.name.split(" + ")
        if len(names) != len(self.inputs):  # a view's own name held " + ": keep the stored names
            return message
        for stored, name in zip(self.inputs, names):
            message = message.replace(f"'{stored}'", f"'{name}'")
        return message

    @property
    def model_file(self) -> ResultFile | None:
        return next((f for f in self.files if f.kind == "model"), None)

    @property
    def preview_file(self) -> ResultFile | None:
        return next((f for f in self.files if f.kind == "preview"), None)

    @property
    def may_be_paid(self) -> bool:
        """Whether FAL may have taken (and billed) this item: it has a request id, or a submit
        went out and was not proved lost. The spending guard gives back every other item."""
        return bool(self.request_id or self.fal_submit.get("intent_at"))

    @property
    def elapsed(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Item:
        data = dict(data)
        data["state"] = ItemState(data["state"])
        data["files"] = [ResultFile(**f) for f in data.get("files") or []]
        data["error"] = ItemError(**data["error"]) if data.get("error") else None
        return cls(**data)


# The owner of jobs made without an API key: on the page, through the Gradio API or MCP, or
# through an open REST API. The page and the Gradio API read only these, so with API_KEYS set
# a key's jobs are not theirs to read or cancel.
OPEN_OWNER = ""


@dataclass
class Job:
    id: str
    model: str
    mode: Mode
    params: dict[str, Any]
    items: list[Item]
    owner: str = OPEN_OWNER  # who created it (an API key's id); OPEN_OWNER for open access
    share: str = ""  # whose fair share of the queue it runs in (jobs/fairness.py); "": its own
    own_fal_key: bool = False  # runs on a key the person gave (kept sealed apart, until the job ends)
    created_at: float = field(default_factory=time.time)
    cancel_requested: bool = False
    version: int = 0  # bumped on every change; readers wait for it to move

    @property
    def state(self) -> JobState:
        states = [item.state for item in self.items]
        if not all(s.terminal for s in states):
            if all(s == ItemState.QUEUED for s in states):
                return JobState.QUEUED
            return JobState.RUNNING
        if all(s == ItemState.SUCCEEDED for s in states):
            return JobState.SUCCEEDED
        if self.cancel_requested and ItemState.CANCELLED in states:  # a cancel after the end changes nothing
            return JobState.CANCELLED
        if not any(s == ItemState.SUCCEEDED for s in states):
            return JobState.FAILED
        return JobState.PARTIAL

    @property
    def progress(self) -> float:
        if not self.items:
            return 0.0
        done = [100.0 if i.state.terminal else i.progress for i in self.items]
        return round(sum(done) / len(done), 1)

    def item(self, index: int) -> Item:
        return self.items[index]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("items")
        return data

    @classmethod
    def with_items(cls, job: dict[str, Any], items: list[Item]) -> Job:
        job = dict(job)
        job["mode"] = Mode(job["mode"])
        return cls(items=sorted(items, key=lambda i: i.index), **job)

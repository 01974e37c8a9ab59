"""What a provider sees of the item it runs, and how it reports trouble.

A provider turns one item's input images into a model file. It reports progress, stores a
remote request id before waiting on it, and asks whether to stop; everything durable goes
through the `ItemRun` the worker gives it, so providers never touch the job store directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol

from image2model.jobs.model import Mode
from image2model.providers.catalog import ModelSpec


# Said while a photo waits for a CPU core: the page shows such a photo as queued, not working.
WAITING_FOR_CPU = "Waiting for a free CPU core"


class ItemFailed(Exception):
    """The item cannot succeed; `retryable` failures may succeed if tried again later."""

    def __init__(self, code: str, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class ItemCancelled(Exception):
    """The job was cancelled while this item ran."""


class ItemRun(Protocol):
    job_id: str
    index: int
    spec: ModelSpec
    mode: Mode
    params: dict[str, Any]
    inputs: list[Path]  # the stored upload(s), in view order
    work_dir: Path  # for prepared copies of the inputs
    model_target: Path  # where the model file must be written (atomically)
    preview_target: Path  # where a preview image may be written
    request_id: str | None  # a remote request already accepted for this item (resume it)
    fal_key: str  # the person's own FAL key for this job; "" runs on the server's
    submit_record: dict[str, Any]  # what is known of a paid submit before its id (see reconcile.py)
    max_result_bytes: int
    poll_seconds: float

    def progress(self, percent: float, message: str) -> None: ...

    def remember_request(self, request_id: str, submit_record: dict[str, Any] | None = None) -> None:
        """Store the request id durably (with the submit record, when given) before going on."""

    def remember_submit(self, record: dict[str, Any]) -> None:
        """Store the submit record durably before going on (it protects money)."""

    def check_stop(self) -> None:
        """Raise ItemCancelled or ItemFailed('deadline_exceeded') when the item must stop."""

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake early and raise as check_stop does."""

    def typical_seconds(self) -> float: ...

    def write_file(self, target: Path, chunks: Any, max_bytes: int | None = None) -> int: ...

    def settle(self, collect: Callable[[], ProviderOutput]) -> None:
        """For a provider whose `run` returned WATCHING: end the item now, from any thread.
        `collect` runs on one of the runner's finishing threads and returns the output, or
        raises as `run` would."""


@dataclass(frozen=True)
class ProviderOutput:
    has_preview: bool = False
    run_seconds: float | None = None  # how long the model itself ran, to learn typical times
    extra_stats: dict[str, Any] | None = None
    # Plain words a person should read with the result (e.g. "nothing stood out from the
    # background"); it becomes the item's message instead of a bare "Done".
    note: str | None = None


class Watching:
    """What `run` returns when the item goes on without the worker thread: its provider
    watches it and calls `item.settle` once, whatever the end."""


WATCHING = Watching()


class Provider(Protocol):
    # A slot per item in flight (FAL_CONCURRENCY), taken before an item is claimed; None
    # when the provider bounds its own work.
    slots: threading.Semaphore | None

    def run(self, item: ItemRun) -> ProviderOutput | Watching: ...

    def cancel(self, item: ItemRun) -> None:
        """Best-effort: tell the remote side to stop this item's request."""

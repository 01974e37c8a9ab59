"""Turn the public job status (`job_status(job)`) into what the page shows.

Pure functions of the status dict, so the page shows exactly what REST and the Gradio API
report, and these can be tested without a browser.
"""

from __future__ import annotations

import html
import math
import logging
from typing import Any

from image2model.errors import AppError
from image2model.jobs.service import NO_WORKER_MESSAGE
from image2model.providers.base import WAITING_FOR_CPU
from image2model.units import size_text
from image2model.web.envelope import outage_error

log = logging.getLogger(__name__)

VIEWER_HALF_FOV = 0.4  # radians: half the vertical field of view of Gradio's (Babylon) viewer
FRAMING_MARGIN = 1.1
TABLE_HEADERS = ["Image", "State", "%", "Message", "Time"]
# Shares of the table's width: the message gets the most, and with wrapping every column
# stays on a phone's screen (the fixed widths Gradio picks by itself cut off the last two).
TABLE_WIDTHS = ["19%", "18%", "12%", "37%", "14%"]
STATE_WORDS = {"queued": "Waiting", "running": "Working", "succeeded": "Done", "failed": "Failed",
               "cancelled": "Cancelled"}
JOB_WORDS = {"queued": "Waiting for a worker", "running": "Working", "succeeded": "Finished",
             "partial": "Finished, but some images failed", "failed": "Failed", "cancelled": "Cancelled"}
UNEXPECTED = "Something went wrong on the server. Please try again; if it keeps happening, tell whoever runs it."


def friendly(exc: BaseException) -> str:
    """Words for a person: our own errors carry them, and so does an outage (the job store
    away, a full disk), logged in one line; anything else is logged, not shown."""
    if isinstance(exc, AppError):
        return exc.message
    outage = outage_error(exc)
    if outage is not None:
        log.warning("%s in the page: %s", outage.code, exc)
        return outage.message
    log.exception("unexpected error in the page", exc_info=exc)
    return UNEXPECTED


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def item_message(item: dict[str, Any]) -> str:
    """A failed item shows why; the others show the worker's latest message."""
    if item.get("error"):
        return item["error"]["message"]
    return item.get("message") or ""


def is_waiting(item: dict[str, Any]) -> bool:
    """Not started yet: in our queue, or taken by a worker that waits for a free core."""
    return item["state"] == "queued" or (item["state"] == "running" and item.get("message") == WAITING_FOR_CPU)


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def queue_words(position: int, typical: float | None, parallel: int) -> str:
    """ "Queued: 3rd in line, about 4 s" (the estimate when the model's usual time is known)."""
    words = "next in line" if position == 1 else f"{ordinal(position)} in line"
    if typical:
        words += f", starts in about {duration(max(1.0, -(-position // max(1, parallel)) * typical))}"
    return words


def table_rows(status: dict[str, Any] | None, typical: float | None = None, parallel: int = 1) -> list[list[str]]:
    """Name, state, progress, message and time of each photo. Photos not started yet say
    "Queued" with their place in line instead of a percentage and a running clock."""
    if not status:
        return []
    rows, waiting = [], 0
    for item in status["items"]:
        if is_waiting(item) and not status["finished"]:
            waiting += 1
            message = item_message(item) if item["message"] == NO_WORKER_MESSAGE else queue_words(waiting, typical, parallel)
            rows.append([item["name"], "Queued", "", message, ""])
            continue
        if item["state"] == "cancelled":  # no share done nor time taken: it made nothing
            rows.append([item["name"], STATE_WORDS["cancelled"], "", item_message(item), ""])
            continue
        rows.append([item["name"], STATE_WORDS.get(item["state"], item["state"]), f"{item['progress']:.0f}%",
                     item_message(item), duration(item.get("elapsed"))])
    return rows


def progress_html(status: dict[str, Any] | None) -> str:
    """Which job, an overall bar, and a one-line summary under it."""
    if not status:
        return ""
    percent = float(status["progress"])
    counts = status["counts"]
    total = len(status["items"])
    summary = f"{JOB_WORDS.get(status['state'], status['state'])}: {counts['succeeded']} of {total} " \
              f"model{'s' if total != 1 else ''} ready"
    if counts["failed"]:
        summary += f", {counts['failed']} failed"
    if counts["cancelled"]:
        summary += f", {counts['cancelled']} cancelled"
    done_text = "" if status["finished"] else f"{percent:.0f}% &middot; "
    hint = "" if status["finished"] else (
        '<p class="i2m-hint">You can close this page: the job keeps running, and this page\'s '
        "address (or Recent jobs) brings you back to it.</p>")
    return (f'<div class="i2m-job" data-state="{html.escape(status["state"])}">'
            f'<p class="i2m-job-title">Your models</p>'
            f'<div class="i2m-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{percent:.0f}"><div class="i2m-progress-bar" style="width:{percent:.1f}%"></div></div>'
            f'<p class="i2m-progress-text">{done_text}{html.escape(summary)}</p>{hint}'
            f'<details class="i2m-job-id"><summary>Job number</summary><code>{html.escape(status["job_id"])}</code>'
            f'<span> (for the API, or to tell whoever runs this site)</span></details></div>')


def finished_items(status: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Items with a model file, in job order."""
    if not status:
        return []
    return [item for item in status["items"] if model_file(item)]


def model_file(item: dict[str, Any]) -> dict[str, Any] | None:
    return next((f for f in item.get("files") or [] if f["kind"] == "model"), None)


def preview_file(item: dict[str, Any]) -> dict[str, Any] | None:
    return next((f for f in item.get("files") or [] if f["kind"] == "preview"), None)


def shows_cutout(item: dict[str, Any]) -> bool:
    """The item's preview is the offline model's cut-out ("what the model saw"), not a view of
    the model: only the offline model records where its mask came from."""
    return preview_file(item) is not None and "mask_source" in (item.get("stats") or {})


def viewer_camera(item: dict[str, Any]) -> tuple[None, None, float | None]:
    """The viewer's camera (alpha, beta, radius) for this model: far enough back that its
    bounding sphere fits the view's height. Gradio's viewer frames a model by its width, so
    a tall, thin one (a bottle, a lamp) was cut off at the top and bottom. Angles are left
    to the viewer."""
    extents = (item.get("stats") or {}).get("extents")
    if not extents:
        return None, None, None
    radius = 0.5 * math.sqrt(sum(float(e) ** 2 for e in extents))
    return None, None, round(FRAMING_MARGIN * radius / math.sin(VIEWER_HALF_FOV), 4) or None


def stats_text(item: dict[str, Any] | None) -> str:
    if not item:
        return ""
    stats = item.get("stats") or {}
    parts = []
    if "vertices" in stats:
        parts.append(f"{stats['vertices']:,} vertices")
    if "faces" in stats:
        parts.append(f"{stats['faces']:,} faces")
    file = model_file(item)
    if file:
        parts.append(size_text(file["size"]))
    if item.get("elapsed") is not None:
        parts.append(f"made in {duration(item['elapsed'])}")
    name = file["name"] if file else item["name"]
    return f"**{html.escape(name)}** &middot; " + " &middot; ".join(parts)


def notice_html(message: str, kind: str = "error") -> str:
    """A message box: kind is "error" (something to fix) or "info"."""
    if not message:
        return ""
    role = "alert" if kind == "error" else "status"
    return f'<div class="i2m-notice i2m-{kind}" role="{role}">{html.escape(message)}</div>'

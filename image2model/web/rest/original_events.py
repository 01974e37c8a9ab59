"""The original image2model's SSE vocabulary, sent beside ours so its clients work unchanged.

Its frontend listens only to `task_progress`, `task_completed`, `task_failed` and
`file_update`, and reads `progress`, `total_files`/`total`, `current` (files done), `message`,
`error` (text) and, on completion, `result.job_id`. Each of our snapshots is also sent under
the original name, with those fields added to the same status; and each item that changed gets
one `file_update` (the per-file progress the original backend never managed to send).
"""

from __future__ import annotations

from typing import Any

ORIGINAL_NAMES = {"progress": "task_progress", "completed": "task_completed", "failed": "task_failed",
                  "cancelled": "task_failed", "error": "task_failed"}
FILE_STATUS = {"queued": "pending", "running": "processing", "succeeded": "completed", "failed": "failed",
               "cancelled": "cancelled"}
DONE_STATES = ("succeeded", "failed", "cancelled")


def original_event(event: str) -> str:
    return ORIGINAL_NAMES[event]


def job_fields(status: dict[str, Any]) -> dict[str, Any]:
    """The original's fields for our status: none of them is a key of ours, so they are sent
    as our status with these added (nothing of ours is changed)."""
    items = status["items"]
    total = len(items)
    done = sum(1 for item in items if item["state"] in DONE_STATES)
    ready, failed = status["counts"]["succeeded"], status["counts"]["failed"]
    fields: dict[str, Any] = {
        "status": _job_word(status["state"]), "current": done, "total": total, "total_files": total,
        "message": _job_message(status, ready, failed, total),
    }
    if status["finished"]:
        fields["result"] = {"job_id": status["job_id"], "total_files": total, "successful_files": ready,
                            "failed_files": failed}
        fields["summary"] = {"total_files": total, "successful_files": ready, "failed_files": failed}
    if status["state"] in ("failed", "cancelled"):
        fields["error"] = fields["message"]
    return fields


def gone_fields(message: str) -> dict[str, Any]:
    """The job was deleted or expired while watched."""
    return {"status": "failed", "error": message, "message": message}


def file_fields(status: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """One `file_update`: an item as the original's per-file list wants it, plus our item."""
    return {"job_id": status["job_id"], "task_id": status["task_id"], "file_index": item["index"],
            "filename": item["name"], "status": FILE_STATUS[item["state"]], "progress": item["progress"],
            "message": item["error"]["message"] if item["error"] else item["message"], "item": item}


def item_key(item: dict[str, Any]) -> tuple[Any, ...]:
    """What a per-file list shows: a change here is worth a `file_update`."""
    return (item["state"], item["progress"], item["message"], tuple(f["name"] for f in item["files"]),
            item["error"]["code"] if item["error"] else None)


def _job_word(state: str) -> str:
    return {"queued": "queued", "running": "processing", "succeeded": "completed", "partial": "completed",
            "failed": "failed", "cancelled": "cancelled"}[state]


def _job_message(status: dict[str, Any], ready: int, failed: int, total: int) -> str:
    state = status["state"]
    if state == "cancelled":
        return f"The job was cancelled; {ready} of {total} models were ready."
    if state == "failed":
        reasons = [item["error"]["message"] for item in status["items"] if item["error"]]
        first = f": {reasons[0]}" if reasons else "."
        return f"No model could be made{first}" if total == 1 else f"All {total} images failed{first}"
    if state in ("succeeded", "partial"):
        return f"{ready} of {total} models ready" + (f"; {failed} failed." if failed else ".")
    running = [item for item in status["items"] if item["state"] == "running"]
    if running:
        return f"{ready} of {total} models ready; {running[0]['name']}: {running[0]['message']}"
    return status["items"][0]["message"] if status["items"] else "Waiting"

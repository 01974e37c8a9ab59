"""What follows an item's final write, wherever it was written (a worker, a reaper, a cancel).

Counted once per job: every writer of a last item reads the job back, and only the item that
ended last (by finish time, then index) counts the job's end, so two workers finishing the last
two items at once count it once between them.
"""

from __future__ import annotations

import time

from image2model.jobs.model import ItemState
from image2model.jobs.store import JobStore
from image2model.metrics import ITEMS_FAILED, ITEMS_FINISHED, JOB_DURATION, JOBS_FINISHED


def item_ended(store: JobStore, job_id: str, index: int) -> None:
    """Count the item; give back its share of the hourly spending guard when FAL never took
    it (cancelled or failed before its submit: else upload and cancel could lock a server out
    of FAL for an hour at no cost); when the job is over, forget the person's own FAL key (it
    is kept only while the job can still use it) and count the job's end."""
    job = store.get(job_id)
    if job is None or not 0 <= index < len(job.items):
        return
    item = job.items[index]
    if item.state != ItemState.SUCCEEDED and not item.may_be_paid:
        store.release_images(job_id, len(item.inputs))  # nothing held (offline, own key): no change
    ITEMS_FINISHED.labels(job.model, item.state.value).inc()
    if item.error is not None:
        ITEMS_FAILED.labels(job.model, item.error.code).inc()
    if not job.state.terminal:
        return
    if job.own_fal_key:
        store.drop_job_key(job_id)
    last = max(job.items, key=lambda i: (i.finished_at or 0.0, i.index))
    if last.index == index:
        state = job.state.value
        JOBS_FINISHED.labels(job.model, state).inc()
        JOB_DURATION.labels(job.model, state).observe(max(0.0, (last.finished_at or time.time()) - job.created_at))

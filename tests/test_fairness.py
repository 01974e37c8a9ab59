"""Every job gets its turn (issue 15): items are taken first photos first across jobs, so a
small job queued behind a big one starts at the next free worker, in both queues."""

from __future__ import annotations

import pytest

from image2model.jobs.model import JobState
from tests.engine_helpers import uploads_for, wait_done

BOTH = pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)


@BOTH
def test_first_photos_of_every_job_run_before_second_ones(runtime_factory, tmp_path, backend) -> None:  # noqa: ANN001
    """One worker, three jobs queued before it starts: a 4-photo job, a 1-photo job, a 2-photo
    job. First come, first served ran all four photos of the first job before the others."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")
    jobs = {}
    for tag, count in (("big", 4), ("small", 1), ("late", 2)):
        uploads = uploads_for(tmp_path / tag, [f"{tag}{n}.png" for n in range(count)])
        jobs[tag] = runtime.service.create_job(uploads, model="local/relief").id
    runtime.start_consumer()
    starts = []
    for tag, job_id in jobs.items():
        done = wait_done(runtime.service, job_id)
        assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
        starts += [(item.started_at, tag, item.index) for item in done.items]
    order = [(tag, index) for _, tag, index in sorted(starts)]
    assert order == [("big", 0), ("small", 0), ("late", 0), ("big", 1), ("late", 1), ("big", 2), ("big", 3)], order


@BOTH
def test_an_item_queued_again_keeps_its_place_by_position(runtime_factory, tmp_path, backend) -> None:  # noqa: ANN001
    """The queue holds each task with its priority (minus the item's place in its job), also
    for a task queued again by the reaper: what huey would run next is what we expect."""
    from image2model.worker.queue import pending_item_tasks

    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")
    big = runtime.service.create_job(uploads_for(tmp_path / "b", ["b0.png", "b1.png", "b2.png"]),
                                     model="local/relief").id
    small = runtime.service.create_job(uploads_for(tmp_path / "s", ["s0.png"]), model="local/relief").id
    assert pending_item_tasks(runtime.huey) == {(big, 0), (big, 1), (big, 2), (small, 0)}
    runtime.enqueue(big, 1)  # as the reaper does: a second task is harmless
    taken = []
    while (message := runtime.huey.storage.dequeue()) is not None:
        task = runtime.huey.deserialize_task(message)
        taken.append((task.args[0], task.args[1]))
    assert taken[:2] == [(big, 0), (small, 0)] and sorted(taken[2:]) == sorted([(big, 1), (big, 1), (big, 2)]), taken

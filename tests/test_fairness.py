"""Every job gets its turn (issue 15): items are taken first photos first across jobs, so a
small job queued behind a big one starts at the next free worker, in both queues; and one
person's many jobs do not crowd out another person's one (jobs/fairness.py)."""

from __future__ import annotations

import pytest

import httpx

from image2model.jobs.fairness import share_of
from image2model.jobs.model import JobState
from image2model.web.security import owner_id
from image2model.worker.queue import pending_item_tasks
from tests.engine_helpers import uploads_for, wait_done
from tests.rest_helpers import png, post_images

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
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")
    big = runtime.service.create_job(uploads_for(tmp_path / "b", ["b0.png", "b1.png", "b2.png"]),
                                     model="local/relief").id
    small = runtime.service.create_job(uploads_for(tmp_path / "s", ["s0.png"]), model="local/relief").id
    assert pending_item_tasks(runtime.huey) == {(big, 0), (big, 1), (big, 2), (small, 0)}
    runtime.enqueue(big, 1)  # as the reaper does: a second task is harmless
    taken = drain_queue(runtime)
    assert taken[:2] == [(big, 0), (small, 0)] and sorted(taken[2:]) == sorted([(big, 1), (big, 1), (big, 2)]), taken


def drain_queue(runtime, priorities: dict | None = None) -> list[tuple[str, int]]:  # noqa: ANN001
    """Take every task off the queue in the order huey would run them (and note each one's
    priority in `priorities`)."""
    taken = []
    while (message := runtime.huey.storage.dequeue()) is not None:
        task = runtime.huey.deserialize_task(message)
        taken.append((task.args[0], task.args[1]))
        if priorities is not None:
            priorities[taken[-1]] = task.priority
    return taken


@BOTH
def test_one_persons_many_jobs_do_not_crowd_out_another_persons_one(runtime_factory, tmp_path, backend) -> None:  # noqa: ANN001
    """Ann queues three 3-photo jobs, then Bo one. Taking turns by job alone, Bo's photos
    would come last of every round (his last photo twelfth of twelve); by share, Ann's later
    jobs are spread out (turns 0, 2, 4 and 0, 3, 6) and Bo's photos go with her first job's."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")

    def queue(share: str, tag: str) -> str:
        uploads = uploads_for(tmp_path / tag, [f"{tag}{n}.png" for n in range(3)])
        return runtime.service.create_job(uploads, model="local/relief", share=share).id

    ann = [queue("ip:10.0.0.1", f"ann{n}") for n in range(3)]
    bo = queue("ip:10.0.0.2", "bo")
    assert [item.turn for item in runtime.store.get(ann[2]).items] == [0, 3, 6]
    assert [item.turn for item in runtime.store.get(bo).items] == [0, 1, 2]
    names = {ann[0]: "a1", ann[1]: "a2", ann[2]: "a3", bo: "bo"}
    order = [(names[job], index) for job, index in drain_queue(runtime)]
    assert order == [("a1", 0), ("a2", 0), ("a3", 0), ("bo", 0), ("a1", 1), ("bo", 1),
                     ("a1", 2), ("a2", 1), ("bo", 2), ("a3", 1), ("a2", 2), ("a3", 2)], order


@BOTH
def test_an_item_queued_again_keeps_its_turn(runtime_factory, tmp_path, backend) -> None:  # noqa: ANN001
    """The reaper and a deferred task queue an item with its stored turn, not its index."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")
    first = runtime.service.create_job(uploads_for(tmp_path / "a", ["a0.png", "a1.png"]), model="local/relief",
                                       share="key:ann").id
    second = runtime.service.create_job(uploads_for(tmp_path / "b", ["b0.png", "b1.png"]), model="local/relief",
                                        share="key:ann").id
    other = runtime.service.create_job(uploads_for(tmp_path / "c", ["c0.png", "c1.png"]), model="local/relief",
                                       share="key:cy").id
    drain_queue(runtime)
    assert pending_item_tasks(runtime.huey) == set()
    assert sorted(runtime.runner._requeue_orphans(now=10**10)) == sorted(  # the reaper's round, much later
        [(first, 0), (first, 1), (second, 0), (second, 1), (other, 0), (other, 1)])
    priorities: dict = {}
    drain_queue(runtime, priorities)
    assert priorities == {(first, 0): 0, (first, 1): -1, (second, 0): 0, (second, 1): -2,  # turn 2, not 1
                          (other, 0): 0, (other, 1): -1}, priorities


def test_rest_jobs_take_turns_by_api_key(live_server_factory) -> None:  # noqa: ANN001
    """Through the REST API each key is one share: Ann's second job is spread out, Bo's is not."""
    ann, bo = "ann-key-5f0c1d9e8b7a6f5e", "bo-key-0a1b2c3d4e5f6a7b8c"
    server = live_server_factory(fal_key="", api_keys=f"{ann}, {bo}", embedded_worker=False,
                                 rate_limit_api="off", rate_limit_upload="off")
    made = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for tag, key in (("ann1", ann), ("ann2", ann), ("bo", bo)):
            response = post_images(client, [("x.png", png(1)), ("y.png", png(2))],
                                   headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 202, response.text
            made[tag] = server.runtime.store.get(response.json()["job_id"])
    assert [i.turn for i in made["ann1"].items] == [0, 1] and [i.turn for i in made["ann2"].items] == [0, 2]
    assert [i.turn for i in made["bo"].items] == [0, 1]
    assert made["ann1"].share == made["ann2"].share == share_of(f"key:{owner_id(ann)}")
    assert made["bo"].share == share_of(f"key:{owner_id(bo)}") != made["ann1"].share
    assert ann not in made["ann1"].share and owner_id(ann) not in made["ann1"].share  # a fingerprint only

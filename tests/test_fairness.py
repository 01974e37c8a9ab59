"""Every job gets its turn (issue 15): items are taken first photos first across jobs, so a
small job queued behind a big one starts at the next free worker, in both queues; and one
person's many jobs do not crowd out another person's one (jobs/fairness.py)."""

from __future__ import annotations

import pytest

import httpx

from image2model.jobs.fairness import share_of
from image2model.jobs.model import JobState
from image2model.web.security import owner_id
from image2model.worker.queue import enqueue_items, pending_item_tasks
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


@BOTH
def test_tasks_queued_together_keep_their_turns_and_their_order(runtime_factory, backend) -> None:  # noqa: ANN001
    """A job's tasks go into the queue in one write (one transaction, one ZADD), so its photos
    start together. Within the write, turns still decide, and equal turns keep the order they
    were given in (here against the order of their job ids, which Redis sorts members by
    after the score and the time stamp huey puts first)."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")
    entries = [(f"job-{'zyxwvutsrqponmlkjihgfedcba'[n % 26]}{n:02d}", n % 3, n // 3) for n in range(40)]
    enqueue_items(runtime.huey, runtime.tasks.run_item, entries)
    priorities: dict = {}
    taken = drain_queue(runtime, priorities)
    expected = [(job_id, index) for job_id, index, _ in sorted(entries, key=lambda e: e[2])]  # stable: by turn
    assert taken == expected, taken[:6]
    assert {priorities[(job_id, index)] for job_id, index, turn in entries if turn == 5} == {-5}


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
def test_one_persons_many_jobs_get_one_turn_a_round_like_anothers_one(runtime_factory, tmp_path, backend) -> None:  # noqa: ANN001
    """Ann queues three 3-photo jobs, then Bo one, before the one worker starts. By job
    alone, Ann would get three photos a round to Bo's one. By share, they alternate while
    both wait, and Ann's three jobs take turns within hers; every photo runs once (the tasks
    left holding a moved photo's old turn are dropped)."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")

    def queue(share: str, tag: str) -> str:
        uploads = uploads_for(tmp_path / tag, [f"{tag}{n}.png" for n in range(3)])
        return runtime.service.create_job(uploads, model="local/relief", share=share).id

    ann = [queue("ip:10.0.0.1", f"ann{n}") for n in range(3)]
    bo = queue("ip:10.0.0.2", "bo")
    assert [[item.turn for item in runtime.store.get(job).items] for job in ann] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert [item.turn for item in runtime.store.get(bo).items] == [0, 1, 2]
    runtime.start_consumer()
    names = {ann[0]: "a1", ann[1]: "a2", ann[2]: "a3", bo: "bo"}
    starts = []
    for job_id, name in names.items():
        done = wait_done(runtime.service, job_id)
        assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
        assert [item.attempts for item in done.items] == [1, 1, 1], f"{name}: a photo ran twice"
        starts += [(item.started_at, name, item.index) for item in done.items]
    order = [(name, index) for _, name, index in sorted(starts)]
    assert order == [("a1", 0), ("bo", 0), ("a2", 0), ("bo", 1), ("a3", 0), ("bo", 2),
                     ("a1", 1), ("a2", 1), ("a3", 1), ("a1", 2), ("a2", 2), ("a3", 2)], order


@BOTH
def test_a_new_job_moves_only_its_shares_waiting_photos(runtime_factory, tmp_path, backend) -> None:  # noqa: ANN001
    """A photo already running keeps its turn, another share's photos keep theirs, and a new
    job's turns count from the lowest turn still waiting, not from zero: someone arriving
    while round 5 waits is served in round 5, not ahead of everyone."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")

    def queue(share: str, tag: str, count: int) -> str:
        uploads = uploads_for(tmp_path / tag, [f"{tag}{n}.png" for n in range(count)])
        return runtime.service.create_job(uploads, model="local/relief", share=share).id

    cy = queue("key:cy", "cy", 8)
    for index in range(5):  # as if a worker had taken cy's first five photos
        assert runtime.store.update_item(cy, index, {"state": "running"}, expect_state=["queued"]) is not None
    ann = queue("key:ann", "ann", 2)
    assert [item.turn for item in runtime.store.get(ann).items] == [5, 6]
    ann2 = queue("key:ann", "ann2", 2)
    assert [item.turn for item in runtime.store.get(ann).items] == [5, 7]
    assert [item.turn for item in runtime.store.get(ann2).items] == [6, 8]
    assert [item.turn for item in runtime.store.get(cy).items] == list(range(8))
    pending = sorted(task.args for task in runtime.huey.pending())
    assert (ann, 1, 6) in pending and (ann, 1, 7) in pending, pending  # the old task and the one with the new turn


def test_rest_jobs_take_turns_by_api_key(live_server_factory) -> None:  # noqa: ANN001
    """Through the REST API each key is one share: Ann's two jobs share her turns, Bo has his own."""
    ann, bo = "ann-key-5f0c1d9e8b7a6f5e", "bo-key-0a1b2c3d4e5f6a7b8c"
    server = live_server_factory(fal_key="", api_keys=f"{ann}, {bo}", embedded_worker=False,
                                 rate_limit_api="off", rate_limit_upload="off")
    made = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for tag, key in (("ann1", ann), ("ann2", ann), ("bo", bo)):
            response = post_images(client, [("x.png", png(1)), ("y.png", png(2))],
                                   headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 202, response.text
            made[tag] = response.json()["job_id"]
    made = {tag: server.runtime.store.get(job_id) for tag, job_id in made.items()}
    assert [i.turn for i in made["ann1"].items] == [0, 2] and [i.turn for i in made["ann2"].items] == [1, 3]
    assert [i.turn for i in made["bo"].items] == [0, 1]
    assert made["ann1"].share == made["ann2"].share == share_of(f"key:{owner_id(ann)}")
    assert made["bo"].share == share_of(f"key:{owner_id(bo)}") != made["ann1"].share
    assert ann not in made["ann1"].share and owner_id(ann) not in made["ann1"].share  # a fingerprint only


@BOTH
def test_jobs_stored_at_once_take_turns_but_are_queued_only_by_their_upload(runtime_factory, tmp_path,  # noqa: ANN001
                                                                            backend) -> None:  # noqa: ANN001
    """The REST upload stores a job, answers, then queues it (queue=False). Two uploads of one
    person in that gap still share her turns (not both photos at turns 0 and 1), and neither
    job's photos are queued before its own answer; once queued, they carry their stored turns."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")
    first, second = (runtime.service.create_job(uploads_for(tmp_path / tag, [f"{tag}0.png", f"{tag}1.png"]),
                                                model="local/relief", share="key:ann", queue=False)
                     for tag in ("a", "b"))
    assert [item.turn for item in runtime.store.get(first.id).items] == [0, 2]
    assert [item.turn for item in runtime.store.get(second.id).items] == [1, 3]
    assert runtime.huey.pending() == []
    assert runtime.service.queue_items(first) and runtime.service.queue_items(second)  # as the uploads do
    stored = {(job.id, item.index): item.turn for job in (first, second) for item in runtime.store.get(job.id).items}
    queued = {(task.args[0], task.args[1]): task.args[2] for task in runtime.huey.pending()}
    assert queued == stored, (queued, stored)


@BOTH
def test_a_cancelled_job_leaves_no_empty_turns_in_its_share(runtime_factory, tmp_path, backend) -> None:  # noqa: ANN001
    """Ann cancels one of her two waiting jobs: the other's photos close up to one a round from
    the lowest turn waiting (1, 2, 3 rather than every other turn), with tasks carrying them."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")
    jobs = [runtime.service.create_job(uploads_for(tmp_path / tag, [f"{tag}{n}.png" for n in range(3)]),
                                       model="local/relief", share="key:ann").id for tag in ("a", "b")]
    assert [item.turn for item in runtime.store.get(jobs[1]).items] == [1, 3, 5]
    runtime.service.cancel(jobs[0])
    assert [item.turn for item in runtime.store.get(jobs[1]).items] == [1, 2, 3]
    queued = {task.args for task in runtime.huey.pending() if task.args[0] == jobs[1]}
    assert {(jobs[1], index, turn) for index, turn in enumerate([1, 2, 3])} <= queued, queued


@BOTH
def test_a_turn_moved_without_its_task_is_queued_again_by_the_reaper(runtime_factory, tmp_path, backend) -> None:  # noqa: ANN001
    """A process killed between storing a photo's new turn and queuing the task that carries it
    leaves only the old task, which is dropped as stale: the reaper then queues the photo with
    its stored turn, and every photo is made once."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")
    job_id = runtime.service.create_job(uploads_for(tmp_path / "a", ["a0.png", "a1.png"]), model="local/relief",
                                        share="key:ann").id
    assert runtime.store.move_turns(job_id, {1: 7}) == [1]  # the kill: no task carries turn 7
    runtime.start_consumer()
    done = wait_done(runtime.service, job_id, timeout=30)
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
    assert [item.attempts for item in done.items] == [1, 1]
    assert [item.turn for item in done.items] == [0, 7]


@BOTH
def test_a_task_queued_by_an_older_release_still_runs(runtime_factory, tmp_path, backend) -> None:  # noqa: ANN001
    """Tasks queued before turns rode along with them carry (job id, index) only: they run."""
    runtime = runtime_factory(start_consumer=False, workers=1, fal_key="")
    job_id = runtime.service.create_job(uploads_for(tmp_path / "a", ["a0.png", "a1.png"]), model="local/relief",
                                        queue=False).id
    for index in (0, 1):
        runtime.tasks.run_item(job_id, index)
    assert sorted(task.args for task in runtime.huey.pending()) == [(job_id, 0), (job_id, 1)]
    runtime.start_consumer()
    done = wait_done(runtime.service, job_id, timeout=30)
    assert done.state == JobState.SUCCEEDED and [item.attempts for item in done.items] == [1, 1]

"""FAL requests in flight are bounded by FAL_CONCURRENCY, not by worker threads (issue 15):
waiting on FAL holds no thread, one watcher per process follows every open request, and a
shutdown hands the watched requests back to be resumed, never sent twice."""

from __future__ import annotations

import signal
import threading

from image2model.jobs.model import ItemState, JobState
from image2model.runtime import Runtime
from tests.conftest import start_consumer_process
from tests.engine_helpers import kill, uploads_for, wait_done, wait_until

WAITING_FOR_A_SLOT = "Waiting for a free place at FAL"


def app_threads() -> int:
    """Threads of this process but the fake FAL's (its server runs a thread per connection)."""
    return sum(1 for t in threading.enumerate() if "process_request_thread" not in t.name)


def test_waiting_on_fal_holds_no_worker_thread(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """Two worker threads, twelve photos: all twelve are at FAL at the same time (a thread per
    request would have allowed two), and the process did not grow a thread per request."""
    fake_fal.set_latency(0.2, 2.5)
    runtime = runtime_factory(workers=2, fal_concurrency=50)
    threads_before = app_threads()
    job = runtime.service.create_job(uploads_for(tmp_path, [f"p{n}.png" for n in range(12)]), model="fal-ai/trellis")
    wait_until(lambda: len(fake_fal.submits) == 12, timeout=30)
    grown = app_threads() - threads_before
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
    assert fake_fal.peak_in_flight() == 12
    assert grown <= 5, f"{grown} new threads for 12 open requests"  # the watcher's two, heartbeats, slack
    assert [i.attempts for i in done.items] == [1] * 12


def test_fal_concurrency_caps_the_requests_in_flight(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """FAL_CONCURRENCY=2 with eight worker threads and six photos: never more than two at FAL at
    once, the others say they wait for a place (still queued), and all six finish."""
    fake_fal.set_latency(0.1, 0.8)
    runtime = runtime_factory(workers=8, fal_concurrency=2)
    job = runtime.service.create_job(uploads_for(tmp_path, [f"p{n}.png" for n in range(6)]), model="fal-ai/trellis")
    waiting_seen = set()
    current = runtime.service.get(job.id)
    while not current.state.terminal:
        waiting_seen |= {i.index for i in current.items
                         if i.state == ItemState.QUEUED and WAITING_FOR_A_SLOT in i.message}
        runtime.service.wait_for_change(job.id, current.version, 2.0)
        current = runtime.service.get(job.id)
    assert current.state == JobState.SUCCEEDED, [i.error for i in current.items]
    assert fake_fal.peak_in_flight() == 2
    assert len(fake_fal.submits) == 6
    assert waiting_seen, "no photo said it was waiting for a place at FAL"
    assert [i.attempts for i in current.items] == [1] * 6, "waiting for a place must not count as a try"


def test_photos_waiting_for_a_place_do_not_multiply_their_tasks(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """A photo waits for a place past the reaper's grace for queued items with no task: its
    task is deferred in the queue, where the reaper sees it, so it is not queued again and
    again (a task held by a waiting thread is seen by no reaper)."""
    from image2model.worker.queue import RUN_ITEM_TASK

    fake_fal.set_latency(0.0, 4.0)
    runtime = runtime_factory(workers=4, fal_concurrency=1)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png", "b.png", "c.png"]), model="fal-ai/trellis")
    most = 0
    current = runtime.service.get(job.id)
    while not current.state.terminal:
        tasks = [t.args[1] for t in [*runtime.huey.pending(), *runtime.huey.scheduled()] if t.name == RUN_ITEM_TASK]
        most = max([most, *(tasks.count(index) for index in set(tasks))])
        runtime.service.wait_for_change(job.id, current.version, 0.2)
        current = runtime.service.get(job.id)
    assert current.state == JobState.SUCCEEDED, [i.error for i in current.items]
    assert fake_fal.peak_in_flight() == 1 and len(fake_fal.submits) == 3
    assert most <= 2, f"a waiting photo had {most} queue tasks"


def test_a_stopping_process_hands_its_watched_requests_back(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """The embedded consumer stops while FAL runs three photos for it: they go back on the queue
    at once with their request ids, and the next process follows the same requests."""
    fake_fal.set_latency(0.1, 3.0)
    first = runtime_factory(workers=2)
    job = first.service.create_job(uploads_for(tmp_path, ["a.png", "b.png", "c.png"]), model="fal-ai/trellis")
    wait_until(lambda: all(i.request_id for i in first.service.get(job.id).items), timeout=30)
    request_ids = [i.request_id for i in first.service.get(job.id).items]
    first.stop_consumer()
    paused = first.service.get(job.id)
    assert [i.state for i in paused.items] == [ItemState.QUEUED] * 3, [i.message for i in paused.items]
    assert all("resume" in i.message for i in paused.items)
    second = Runtime(first.settings)  # the same store (a second runtime_factory would flush Redis)
    try:
        second.start_consumer()
        done = wait_done(second.service, job.id)
    finally:
        second.close()
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
    assert [i.request_id for i in done.items] == request_ids
    assert len(fake_fal.submits) == 3


def test_graceful_stops_never_use_up_a_photos_attempts(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """Found from outside (sixth round): each graceful stop counted as a lost worker, so the
    third restart failed a photo FAL was still making (worker_lost). Four stops in a row: the
    photo resumes its one request each time and is made."""
    fake_fal.set_latency(0.1, 6.0)
    runtime = runtime_factory(workers=2, max_item_attempts=3)
    job = runtime.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
    for _ in range(4):
        wait_until(lambda: runtime.service.get(job.id).items[0].state == ItemState.RUNNING
                   and runtime.service.get(job.id).items[0].request_id, timeout=30)
        runtime.stop_consumer()
        paused = runtime.service.get(job.id).items[0]
        assert paused.state == ItemState.QUEUED and paused.attempts == 0, (paused.state, paused.attempts)
        runtime.start_consumer()
    done = wait_done(runtime.service, job.id)
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
    assert len(fake_fal.submits) == 1


def test_a_sigtermed_consumer_hands_its_watched_requests_back(settings_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """A `huey_consumer` told to stop (SIGTERM) while FAL runs its photos: its shutdown hook
    puts them back on the queue at once, instead of leaving them for the reaper."""
    fake_fal.set_latency(0.1, 30.0)
    settings = settings_factory(stale_after_seconds=120.0, worker_ttl_seconds=60.0)  # no reaper help
    web = Runtime(settings)
    consumer = start_consumer_process(settings, fake_fal.base_url)
    try:
        job = web.service.create_job(uploads_for(tmp_path, ["a.png", "b.png"]), model="fal-ai/trellis")
        wait_until(lambda: all(i.request_id for i in web.service.get(job.id).items), timeout=30)
        consumer.send_signal(signal.SIGTERM)
        consumer.wait(30)
        items = web.service.get(job.id).items
        assert [i.state for i in items] == [ItemState.QUEUED] * 2, [i.message for i in items]
        assert all(i.request_id for i in items) and len(fake_fal.submits) == 2
    finally:
        kill(consumer)
        web.close()

"""A worker killed (SIGKILL) or frozen (SIGSTOP) mid-item loses nothing, and FAL sees exactly
one submit per input."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

from image2model.config import Settings
from image2model.jobs.model import ItemState, Job, JobState
from image2model.runtime import Runtime
from image2model.worker.liveness import owner_process
from tests.conftest import start_consumer_process
from tests.engine_helpers import kill, uploads_for, wait_done, wait_until


def two_fal_items_on_a_consumer(settings: Settings, fake_fal, tmp_path: Path):  # noqa: ANN001, ANN201
    """A web side (no consumer) and one `huey_consumer` process running a two-image FAL job,
    both requests already accepted by FAL."""
    web = Runtime(settings)
    first = start_consumer_process(settings, fake_fal.base_url)
    uploads = uploads_for(tmp_path, ["vase.png", "lamp.png"])
    job = web.service.create_job(uploads, model="fal-ai/trellis")
    wait_until(lambda: all(i.request_id for i in web.service.get(job.id).items), timeout=30)
    return web, first, job, uploads


def test_sigkilled_consumer_is_replaced_and_the_fal_request_resumed(settings_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.2, 4.0)
    settings = settings_factory()
    web, first, job, uploads = two_fal_items_on_a_consumer(settings, fake_fal, tmp_path)
    second: subprocess.Popen | None = None
    try:
        kill(first)  # no warning, no cleanup: the items stay "running" with a request id
        stuck = web.service.get(job.id)
        assert [i.state for i in stuck.items] == [ItemState.RUNNING] * 2
        request_ids = [i.request_id for i in stuck.items]

        second = start_consumer_process(settings, fake_fal.base_url)

        def finished_after_reaping() -> Job | None:
            # The reaper puts the dead consumer's items back on the queue. The new consumer's
            # housekeeping runs it, and this loop runs it too: whichever comes first takes an item.
            web.runner.reap()
            current = web.service.get(job.id)
            return current if current.state.terminal else None

        done = wait_until(finished_after_reaping, timeout=60, interval=0.2)
        assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
        assert [i.request_id for i in done.items] == request_ids  # resumed, not resubmitted
        assert [i.attempts for i in done.items] == [2, 2]
        assert len(fake_fal.submits) == 2
        for upload in uploads:
            assert fake_fal.submit_counts_by_sha256[hashlib.sha256(upload.path.read_bytes()).hexdigest()] <= 1
        assert sum(fake_fal.submit_counts_by_sha256.values()) == 2
        for item in done.items:
            assert web.files.result_path(job.id, item.model_file.name).stat().st_size > 0
        assert not [p for p in web.files.results_dir(job.id).iterdir() if p.name.startswith(".part-")]
    finally:
        kill(first)
        if second is not None:
            kill(second)
        web.close()


def test_an_item_whose_worker_keeps_dying_fails_clearly(settings_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """The attempt limit stops a poison item from cycling forever."""
    settings = settings_factory(max_item_attempts=1)
    web = Runtime(settings)
    try:
        job = web.service.create_job(uploads_for(tmp_path, ["a.png"]), model="fal-ai/trellis")
        # simulate a worker that took the item and died
        web.store.update_item(job.id, 0, {"state": ItemState.RUNNING, "worker": "dead", "attempts": 1,
                                          "heartbeat_at": 0.0})
        assert web.runner.reap() == []
        item = web.service.get(job.id).items[0]
        assert item.state == ItemState.FAILED and item.error.code == "worker_lost"
        assert "stopped 1 times" in item.error.message
    finally:
        web.close()


def test_a_frozen_consumer_is_taken_over_by_another_within_seconds(settings_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """No consumer is special: the live one takes over once the frozen one's liveness lapses
    (SIGSTOP: its pid still exists, like a machine cut off from the network)."""
    fake_fal.set_latency(0.1, 4.0)
    settings = settings_factory(stale_after_seconds=120.0)  # the heartbeat rule alone would take minutes
    web, first, job, uploads = two_fal_items_on_a_consumer(settings, fake_fal, tmp_path)
    second: subprocess.Popen | None = None
    try:
        frozen_owner = {owner_process(i.worker) for i in web.service.get(job.id).items}
        second = start_consumer_process(settings, fake_fal.base_url)
        wait_until(lambda: len(web.store.alive_processes(time.time())) == 2, timeout=30)
        first.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()

        def taken_over() -> bool:
            items = web.service.get(job.id).items
            return all(i.state == ItemState.SUCCEEDED or owner_process(i.worker) not in frozen_owner
                       for i in items)

        wait_until(taken_over, timeout=30, interval=0.1)
        took = time.monotonic() - frozen_at
        assert took < settings.worker_ttl_seconds + 3 * settings.reap_seconds + 3, f"takeover took {took:.1f} s"
        first.send_signal(signal.SIGCONT)  # it wakes up and must not overwrite its successor's work
        done = wait_done(web.service, job.id, timeout=60)
        assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
        assert [fake_fal.submit_counts_by_sha256[hashlib.sha256(u.path.read_bytes()).hexdigest()] for u in uploads] == [1, 1]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
        kill(first)
        if second is not None:
            kill(second)
        web.close()

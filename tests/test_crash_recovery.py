"""A worker killed with SIGKILL mid-item loses nothing, and FAL sees exactly one submit."""

from __future__ import annotations

import hashlib
import subprocess

from image2model.jobs.model import ItemState, Job, JobState
from image2model.runtime import Runtime
from tests.conftest import start_consumer_process
from tests.engine_helpers import kill, uploads_for, wait_until


def test_sigkilled_consumer_is_replaced_and_the_fal_request_resumed(settings_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.2, 4.0)
    settings = settings_factory()
    web = Runtime(settings)  # the web side: creates jobs, runs no consumer
    first = start_consumer_process(settings, fake_fal.base_url)
    second: subprocess.Popen | None = None
    try:
        uploads = uploads_for(tmp_path, ["vase.png", "lamp.png"])
        job = web.service.create_job(uploads, model="fal-ai/trellis")
        wait_until(lambda: all(i.request_id for i in web.service.get(job.id).items), timeout=30)
        kill(first)  # no warning, no cleanup: the items stay "running" with a request id
        stuck = web.service.get(job.id)
        assert [i.state for i in stuck.items] == [ItemState.RUNNING] * 2
        request_ids = [i.request_id for i in stuck.items]

        second = start_consumer_process(settings, fake_fal.base_url)

        def finished_after_reaping() -> Job | None:
            # The reaper puts items with stale heartbeats back on the queue. The new consumer
            # runs it as a periodic task at its start, and this loop runs it too: whichever
            # comes first takes an item (each item's heartbeat went stale at its own moment).
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

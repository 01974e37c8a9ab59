"""Following a job that changes fast: the page's `follow_job` and the SSE watcher read a big job
at a bounded rate, and the last thing they say is the job's final state."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
from httpx_sse import connect_sse

from image2model.runtime import Runtime
from image2model.web.page.api import follow_job
from tests.conftest import make_settings
from tests.engine_helpers import uploads_for
from tests.rest_helpers import OPEN_LIMITS

PHOTOS = 25
WRITES_PER_PHOTO = 4
READS_PER_SECOND = 8  # at most, for a 25-photo job that keeps changing


def burst(runtime: Runtime, job_id: str) -> None:
    """What 25 photos starting at once write (four messages each), then a cancel that ends it."""
    time.sleep(0.2)  # the follower is waiting by now
    for step in range(WRITES_PER_PHOTO):
        for index in range(PHOTOS):
            runtime.store.update_item(job_id, index, {"message": f"step {step} of photo {index}"})
    runtime.service.cancel(job_id)


WRITES = PHOTOS * WRITES_PER_PHOTO + 1


def reads_allowed(reads: list[float], started: float) -> float:
    """How many reads the bounded rate allows over the time the follower took."""
    return (reads[-1] - started) * READS_PER_SECOND + 2  # the first read, and the last one


def test_the_page_reads_a_fast_changing_job_at_a_bounded_rate(tmp_path) -> None:  # noqa: ANN001
    runtime = Runtime(make_settings(tmp_path / "data"))  # no worker: the items wait for the writes below
    try:
        job = runtime.service.create_job(uploads_for(tmp_path, [f"p{n}.png" for n in range(PHOTOS)]),
                                         model="fal-ai/trellis")
        writer = threading.Thread(target=burst, args=(runtime, job.id))

        async def follow() -> tuple[list[float], dict]:
            reads, last = [], {}
            async for status in follow_job(runtime.service, job.id):
                reads.append(time.monotonic())
                last = status
            return reads, last

        started = time.monotonic()
        writer.start()
        reads, final = asyncio.run(follow())
        writer.join()
        reads = reads[1:]  # the first is the job as it was
        assert len(reads) <= reads_allowed(reads, started) < WRITES, (len(reads), reads_allowed(reads, started))
        assert final["state"] == "cancelled" and {i["state"] for i in final["items"]} == {"cancelled"}
    finally:
        runtime.close()


def test_the_sse_stream_reads_a_fast_changing_job_at_a_bounded_rate(live_server_factory, tmp_path) -> None:  # noqa: ANN001
    server = live_server_factory(embedded_worker=False, **OPEN_LIMITS)
    runtime = server.runtime
    job = runtime.service.create_job(uploads_for(tmp_path, [f"p{n}.png" for n in range(PHOTOS)]),
                                     model="fal-ai/trellis")
    writer = threading.Thread(target=burst, args=(runtime, job.id))
    reads, final = [], {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        started = time.monotonic()
        with connect_sse(client, "GET", f"/api/v1/status/tasks/{job.id}/stream") as source:
            writer.start()
            for event in source.iter_sse():
                if event.event in ("progress", "cancelled"):
                    reads.append(time.monotonic())
                    final = json.loads(event.data)
    writer.join()
    reads = reads[1:]  # the first is the job as it was
    assert len(reads) <= reads_allowed(reads, started) < WRITES, (len(reads), reads_allowed(reads, started))
    assert final["state"] == "cancelled" and {i["state"] for i in final["items"]} == {"cancelled"}

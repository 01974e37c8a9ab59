"""The SSE progress stream, read with a real SSE client (httpx-sse) from a live server."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from httpx_sse import aconnect_sse, connect_sse

from image2model.web.rest.schemas import JobStatus
from tests.conftest import _flush, start_consumer_process
from tests.engine_helpers import wait_until
from tests.rest_helpers import (  # noqa: F401 - backend is a fixture
    OPEN_LIMITS, assert_error, backend, png, post_images, start_server, wait_job,
)


OUR_EVENTS = ("progress", "completed", "failed", "cancelled", "error")


def read_events(client: httpx.Client, job_id: str, headers: dict[str, str] | None = None,
                names: tuple[str, ...] | None = OUR_EVENTS) -> list:
    """The stream's events under our names (all of them with names=None)."""
    with connect_sse(client, "GET", f"/api/v1/status/tasks/{job_id}/stream", headers=dict(headers or {})) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [e for e in source.iter_sse() if names is None or e.event in names]


def test_progress_events_then_completed_each_with_an_id(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    # FAL takes its time, so there is progress to see between the start and the end: two tiny
    # offline builds can both finish between two reads of a loaded machine
    fake_fal.set_latency(0.6, 1.2)
    server = live_server_factory(**OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = post_images(client, [("a.png", png(1)), ("b.png", png(2))],
                             model="fal-ai/trellis").json()["job_id"]
        everything = read_events(client, job_id, names=None)  # returns because the stream ends by itself
    events = [e for e in everything if e.event in OUR_EVENTS]
    names = [e.event for e in events]
    assert names[-1] == "completed" and set(names[:-1]) == {"progress"}, names
    # each is followed by the original's name for it, with our status whole and its fields added
    for ours, theirs in zip(everything, everything[1:]):
        if ours.event in OUR_EVENTS:
            assert theirs.event == {"progress": "task_progress", "completed": "task_completed"}[ours.event]
            status, original = json.loads(ours.data), json.loads(theirs.data)
            assert {k: original[k] for k in status} == status
            assert original["total_files"] == 2 and original["current"] == sum(
                i["state"] == "succeeded" for i in status["items"])
            assert list(original)[:len(status)] == list(status)
    assert json.loads(everything[-1].data)["result"]["successful_files"] == 2
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids)), "ids must be the job's increasing versions"
    statuses = [JobStatus.model_validate(json.loads(e.data)) for e in events]
    assert statuses[-1].state == "succeeded" and statuses[-1].version == ids[-1]
    assert [s.progress for s in statuses] == sorted(s.progress for s in statuses)
    assert any(0 < s.progress < 100 for s in statuses), "no intermediate progress was pushed"


def test_reconnect_with_last_event_id_gets_what_it_missed(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.6, 1.2)
    server = live_server_factory(**OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = post_images(client, [("a.png", png())], model="fal-ai/trellis").json()["job_id"]
        with connect_sse(client, "GET", f"/api/v1/status/tasks/{job_id}/stream") as source:
            first = next(e for e in source.iter_sse() if e.event in OUR_EVENTS)  # then the client drops it
        assert first.event == "progress"
        seen = int(first.id)
        # while disconnected the job moves on
        wait_until(lambda: server.runtime.service.get(job_id).version > seen + 2, timeout=20)
        missed = read_events(client, job_id, {"Last-Event-ID": str(seen)})
        assert int(missed[0].id) > seen + 2, "the latest state should come at once, not from the start"
        assert all(int(e.id) > seen for e in missed)
        assert missed[-1].event == "completed"
        final = int(missed[-1].id)
        # after the end: nothing more to say, and 204 tells EventSource to stop reconnecting
        after = client.get(f"/api/v1/status/tasks/{job_id}/stream", headers={"Last-Event-ID": str(final)})
        assert after.status_code == 204
        # a client that missed the end entirely gets the terminal event straight away
        late = read_events(client, job_id, {"Last-Event-ID": str(seen)})
        assert [e.event for e in late] == ["completed"] and int(late[0].id) == final


def test_redis_mode_pushes_events_from_a_worker_in_another_process(fake_fal, redis_server, tmp_path) -> None:  # noqa: ANN001
    """Distributed mode: the web process runs no worker; a real huey_consumer process does the
    work, and its progress reaches the stream through Redis pub/sub."""
    _flush(redis_server)
    fake_fal.set_latency(0.6, 1.2)  # progress to see between the start and the end
    server = start_server(tmp_path / "data", redis_url=redis_server, embedded_worker=False, fal_key="test-key")
    consumer = start_consumer_process(server.runtime.settings, fake_fal.base_url, workers=2)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            job_id = post_images(client, [("a.png", png(1)), ("b.png", png(2))],
                                 model="fal-ai/trellis").json()["job_id"]
            events = read_events(client, job_id)
        assert [e.event for e in events][-1] == "completed"
        assert len(events) > 2 and any(0 < json.loads(e.data)["progress"] < 100 for e in events)
    finally:
        consumer.terminate()
        consumer.wait(20)
        server.stop()
        server.runtime.close()


def test_heartbeat_comment_while_nothing_changes(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    fake_fal.set_latency(30, 30)
    server = live_server_factory(sse_heartbeat_seconds=0.2, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = post_images(client, [("a.png", png())], model="fal-ai/trellis").json()["job_id"]
        wait_until(lambda: "queue" in server.runtime.service.get(job_id).items[0].message.lower(), timeout=20)
        lines: list[str] = []
        started = time.monotonic()
        with client.stream("GET", f"/api/v1/status/tasks/{job_id}/stream") as response:
            for line in response.iter_lines():
                lines.append(line)
                if lines.count(": keep-alive") >= 3:
                    break
        assert time.monotonic() - started < 5
        # the client went away: its stream is noticed at the next heartbeat and released
        watchers = server.app.state.rest_api.watchers
        wait_until(lambda: watchers.open_streams == 0 and watchers.watched_jobs == 0, timeout=5)
        client.post(f"/api/v1/jobs/{job_id}/cancel")
        wait_job(server, job_id, timeout=20)


def test_failed_and_cancelled_end_the_stream(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_retries=0, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        fake_fal.fail(422, on="submit")
        failed = post_images(client, [("a.png", png())], model="fal-ai/trellis").json()["job_id"]
        events = read_events(client, failed)
        assert events[-1].event == "failed"
        assert json.loads(events[-1].data)["items"][0]["error"]["code"]

        fake_fal.clear_failures()
        fake_fal.set_latency(30, 30)
        running = post_images(client, [("b.png", png(2))], model="fal-ai/trellis").json()["job_id"]
        threading.Timer(0.5, lambda: httpx.post(f"{server.url}/api/v1/jobs/{running}/cancel")).start()
        events = read_events(client, running)
        assert events[-1].event == "cancelled"
        assert json.loads(events[-1].data)["state"] == "cancelled"


def test_deleting_a_job_ends_its_stream(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    fake_fal.set_latency(30, 30)
    server = live_server_factory(**OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = post_images(client, [("a.png", png())], model="fal-ai/trellis").json()["job_id"]
        wait_until(lambda: server.runtime.service.get(job_id).items[0].request_id, timeout=20)
        threading.Timer(0.5, lambda: httpx.delete(f"{server.url}/api/v1/jobs/{job_id}")).start()
        started = time.monotonic()
        events = read_events(client, job_id)
    assert events[-1].event in ("cancelled", "error")
    assert time.monotonic() - started < 10, "the stream should end when the job is deleted"


def test_unknown_job_is_a_404_envelope_not_an_open_stream(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", **OPEN_LIMITS)
    response = httpx.get(f"{server.url}/api/v1/status/tasks/{'f' * 32}/stream", timeout=5)
    assert_error(response, 404, "job_not_found")


STREAMS = 1000


def test_a_thousand_open_streams_cost_no_threads(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    """Each stream is one asyncio future on the store's change events: no thread per stream,
    no polling, and one store read per change however many streams watch."""
    fake_fal.set_latency(30, 30)
    server = live_server_factory(**OPEN_LIMITS)
    job_id = post_images(httpx.Client(base_url=server.url), [("a.png", png())], model="fal-ai/trellis").json()["job_id"]
    wait_until(lambda: "queue" in server.runtime.service.get(job_id).items[0].message.lower(), timeout=20)
    threads_before = threading.active_count()

    async def one(client: httpx.AsyncClient, opened: asyncio.Event, counter: list[int]) -> str:
        async with aconnect_sse(client, "GET", f"/api/v1/status/tasks/{job_id}/stream") as source:
            last = ""
            async for event in source.aiter_sse():
                if event.event not in OUR_EVENTS:
                    continue
                if not last:
                    counter[0] += 1
                    if counter[0] == STREAMS:
                        opened.set()
                last = event.event
            return last

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            opened, counter = asyncio.Event(), [0]
            tasks = [asyncio.create_task(one(client, opened, counter)) for _ in range(STREAMS)]
            await asyncio.wait_for(opened.wait(), 60)
            await asyncio.sleep(0.3)
            waiting = server.runtime.store.changes.waiter_count
            assert waiting <= 2, f"{waiting} store waiters: streams of one job should share one"
            assert server.app.state.rest_api.watchers.open_streams == STREAMS
            # only the bounded worker pools (anyio's 40 for the opening reads, asyncio's few)
            assert threading.active_count() - threads_before <= 50, "streams must not take threads"
            await asyncio.to_thread(httpx.post, f"{server.url}/api/v1/jobs/{job_id}/cancel")
            return await asyncio.wait_for(asyncio.gather(*tasks), 60)

    started = time.monotonic()
    finals = asyncio.run(main())
    assert finals == ["cancelled"] * STREAMS
    assert server.app.state.rest_api.watchers.watched_jobs == 0
    assert time.monotonic() - started < 60


# Header values travel as bytes, read as latin-1: b"\xb2" arrives as "²", which passes
# str.isdigit() and fails int(); "¹²³" likewise. Sent as bytes, so no client re-encodes them.
BAD_EVENT_IDS = ["abc", "-1", "99999999999999999999999", "1.5", "²".encode("latin-1"),
                 "¹²³".encode("latin-1"), "7²".encode("latin-1")]


@pytest.mark.parametrize("value", BAD_EVENT_IDS, ids=[repr(v) for v in BAD_EVENT_IDS])
def test_a_bad_last_event_id_is_ignored(live_server_factory, value) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = post_images(client, [("a.png", png())]).json()["job_id"]
        wait_job(server, job_id)
        events = read_events(client, job_id, {"Last-Event-ID": value})
    assert [e.event for e in events] == ["completed"]

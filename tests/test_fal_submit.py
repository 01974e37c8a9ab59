"""A paid submit whose answer is lost is found again, never sent twice blindly (issue 10, 1-2).

FAL accepts the submit and bills it, then the answer is lost: the connection drops, the
gateway answers 500, or nothing comes back. The item looks the request up in FAL's request
history (the fake's Platform API) by its input URLs and carries on with it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import time

import fal_client
import fal_client.client as fal_internals
import httpx
import pytest

from image2model.jobs.model import ItemState, JobState
from tests.engine_helpers import uploads_for, wait_done


def submit_posts(fake_fal) -> list:  # noqa: ANN001
    """Every POST of a submit that reached the fake, answered or not (fake_fal.submits holds only those it took)."""
    return [r for r in fake_fal.requests_log if r[0] == "POST" and r[1].startswith("/queue/")]


def photo_fal_always_refuses(runtime_factory, fake_fal, tmp_path, **settings):  # noqa: ANN001, ANN003, ANN201
    """One photo's end when FAL answers every submit with its own 503 (a request id, so maybe taken)."""
    fake_fal.fail(503, on="submit")
    runtime = runtime_factory(**settings)
    job = runtime.service.create_job(uploads_for(tmp_path, ["cup.png"]), model="fal-ai/trellis")
    item = wait_done(runtime.service, job.id, timeout=90).items[0]
    assert item.state == ItemState.FAILED
    return item


def one_submit_per_input(fake_fal, uploads) -> None:  # noqa: ANN001
    for upload in uploads:
        digest = hashlib.sha256(upload.path.read_bytes()).hexdigest()
        assert fake_fal.submit_counts_by_sha256[digest] == 1, f"{upload.name} was submitted again"


@pytest.mark.parametrize("mode", ["drop", "500", "hang"])
def test_a_lost_submit_answer_is_found_in_fal_history_not_paid_twice(runtime_factory, fake_fal, tmp_path,
                                                                     mode) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.1, 0.5)
    fake_fal.lose_submit_answers(mode, times=3, hang_seconds=10)
    runtime = runtime_factory(fal_submit_timeout_seconds=1.0)
    uploads = uploads_for(tmp_path, ["cup.png", "vase.png", "bowl.png"])
    job = runtime.service.create_job(uploads, model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id, timeout=60)
    assert done.state == JobState.SUCCEEDED, [i.error for i in done.items]
    assert len(fake_fal.submits) == 3
    one_submit_per_input(fake_fal, uploads)
    submitted = {s["request_id"] for s in fake_fal.submits}
    for item in done.items:
        assert item.request_id in submitted  # the accepted request was adopted
        assert any("found it in FAL's history" in n["text"] for n in item.fal_submit["events"])
    assert fake_fal.history_calls >= 3
    status = runtime.service.status(done)
    assert "found it in FAL's history" in status["items"][0]["notes"][0]


def test_a_submit_fal_never_got_is_sent_again_once_history_proves_it(runtime_factory, fake_fal,
                                                                     tmp_path) -> None:  # noqa: ANN001
    fake_fal.fail(500, on="submit", times=1)  # refused before FAL queued anything
    runtime = runtime_factory(fal_reconcile_seconds=2.0)
    uploads = uploads_for(tmp_path, ["cup.png"])
    job = runtime.service.create_job(uploads, model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id, timeout=60)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert len(fake_fal.submits) == 1
    notes = done.items[0].fal_submit["events"]
    assert any("never arrived (nothing was paid)" in n["text"] for n in notes)
    assert len(fake_fal.uploads) == 1, "the resubmit reuses the uploaded input"


def test_a_submit_fal_keeps_refusing_with_5xx_is_retried_fal_retries_times_then_fails(
        runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """Each refusal is checked in FAL's history (a 5xx may hide an accepted request), then
    counts as one retry: the photo fails as fal_unavailable after FAL_RETRIES, not at the item
    deadline after sending it again for as long as FAL keeps failing."""
    item = photo_fal_always_refuses(runtime_factory, fake_fal, tmp_path, fal_retries=2, fal_reconcile_seconds=2.0)
    assert item.error.code == "fal_unavailable", item.error
    assert "never arrived" in item.error.message and "gave up after 2 retries" in item.error.message
    posts = submit_posts(fake_fal)
    assert len(posts) == 3 and fake_fal.submits == []
    assert len(fake_fal.uploads) == 1, "each try reuses the uploaded input"


def test_a_front_door_5xx_is_retried_at_once_without_looking_in_the_history(runtime_factory, fake_fal,
                                                                           tmp_path) -> None:  # noqa: ANN001
    """An nginx page without x-fal-request-id never reached FAL (fal-client's own test): no
    wait of FAL_RECONCILE_SECONDS before the retry, nothing to look up."""
    fake_fal.fail(503, on="submit", times=2, ingress=True)
    runtime = runtime_factory(fal_retries=3, fal_reconcile_seconds=300.0)
    started = time.monotonic()
    job = runtime.service.create_job(uploads_for(tmp_path, ["cup.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id, timeout=60)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert time.monotonic() - started < 30
    assert fake_fal.history_calls == 0 and len(fake_fal.submits) == 1
    posts = submit_posts(fake_fal)
    assert len(posts) == 3
    assert any("never reached FAL" in n["text"] for n in done.items[0].fal_submit["events"])


def test_time_running_out_while_the_history_is_checked_says_it_may_be_charged(runtime_factory, fake_fal,
                                                                            tmp_path) -> None:  # noqa: ANN001
    """FAL's own 5xx (with a request id) may hide an accepted request; when the photo's time
    runs out while that is being checked, it says so, not that the model was slow."""
    item = photo_fal_always_refuses(runtime_factory, fake_fal, tmp_path, fal_reconcile_seconds=300.0,
                                    item_deadline_seconds=5.0)
    assert item.error.code == "fal_submit_uncertain", item.error
    assert "time limit ran out while FAL's request history was checked" in item.error.message
    assert "may have been charged" in item.error.message


def test_history_that_lists_running_requests_proves_absence_at_once(runtime_factory, fake_fal,
                                                                    tmp_path) -> None:  # noqa: ANN001
    fake_fal.history_lists_unfinished = True
    fake_fal.set_latency(0.0, 30.0)
    runtime = runtime_factory(fal_reconcile_seconds=120.0)
    other = runtime.service.create_job(uploads_for(tmp_path / "o", ["other.png"]), model="fal-ai/trellis")
    deadline = time.monotonic() + 20
    while not runtime.service.get(other.id).items[0].request_id and time.monotonic() < deadline:
        time.sleep(0.05)  # one unfinished request is listed: FAL shows requests before they end
    fake_fal.set_latency(0.0, 0.2)
    fake_fal.fail(503, on="submit", times=1)
    started = time.monotonic()
    job = runtime.service.create_job(uploads_for(tmp_path, ["cup.png"]), model="fal-ai/trellis")
    done = wait_done(runtime.service, job.id, timeout=60)
    assert done.state == JobState.SUCCEEDED, done.items[0].error
    assert time.monotonic() - started < 30, "absence was not taken as proven though FAL lists running requests"
    runtime.service.cancel(other.id)


@pytest.mark.parametrize("why", ["payloads_off", "history_refused", "history_down"])
def test_when_fal_history_cannot_tell_the_item_fails_plainly_and_is_not_resent(runtime_factory, fake_fal,
                                                                               tmp_path, why) -> None:  # noqa: ANN001
    fake_fal.lose_submit_answers("500", times=1)
    if why == "payloads_off":
        fake_fal.store_payloads = False
        fake_fal.history_lists_unfinished = True
    elif why == "history_refused":
        fake_fal.fail(403, on="history")
    else:
        fake_fal.fail(502, on="history")
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["cup.png"]), model="fal-ai/trellis")
    item = wait_done(runtime.service, job.id, timeout=60).items[0]
    assert item.state == ItemState.FAILED
    assert item.error.code == "fal_submit_uncertain"
    assert "it may have been charged" in item.error.message and "not sent again" in item.error.message
    assert len(fake_fal.submits) == 1
    assert any("could not tell" in n["text"] for n in item.fal_submit["events"])


def test_when_fal_history_cannot_tell_a_setting_can_resend(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    fake_fal.lose_submit_answers("drop", times=1)
    fake_fal.fail(403, on="history")
    runtime = runtime_factory(fal_uncertain_submit="resubmit")
    job = runtime.service.create_job(uploads_for(tmp_path, ["cup.png"]), model="fal-ai/trellis")
    item = wait_done(runtime.service, job.id, timeout=60).items[0]
    assert item.state == ItemState.SUCCEEDED, item.error
    assert len(fake_fal.submits) == 2  # the price of the setting, and the item says so
    assert any("may be charged twice" in n["text"] for n in item.fal_submit["events"])


def test_the_submit_is_one_post_even_when_the_connection_drops(runtime_factory, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """fal-client retries a dropped submit by itself (each try FAL accepted is paid); ours never."""
    fake_fal.lose_submit_answers("drop", times=1)
    runtime = runtime_factory()
    job = runtime.service.create_job(uploads_for(tmp_path, ["cup.png"]), model="fal-ai/trellis")
    wait_done(runtime.service, job.id, timeout=60)
    posts = submit_posts(fake_fal)
    assert len(posts) == 1


def test_fal_client_internals_we_rely_on_are_still_there(fake_fal) -> None:  # noqa: ANN001
    """We submit with one plain POST to fal-client's queue URL (pinned fal-client 1.0.3), and
    build handles with its get_handle: if either moves, this fails before production does."""
    assert importlib.metadata.version("fal-client") == "1.0.3", "re-check these internals, then the pin"
    assert isinstance(fal_internals.QUEUE_URL_FORMAT, str)
    handle = fal_client.SyncClient(key="k").get_handle("fal-ai/trellis", "abc")
    assert handle.status_url.startswith(fal_internals.QUEUE_URL_FORMAT + "fal-ai/trellis/requests/abc")
    assert handle.cancel_url.endswith("/requests/abc/cancel")
    assert handle.response_url.endswith("/requests/abc")
    gateway = httpx.Response(503, text="<html><center>nginx</center></html>")
    assert fal_internals._is_ingress_error(gateway) is True  # the proxy: the request never reached FAL
    assert fal_internals._is_ingress_error(httpx.Response(503, text="nginx", headers={"x-fal-request-id": "r"})) \
        is False

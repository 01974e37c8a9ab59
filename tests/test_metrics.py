"""GET /metrics: each metric family moves when the thing it counts happens.

The counters are this process's (the tests' servers share one registry), so every check is a
difference between two scrapes around the event. The gauges are the cluster's, read from the
store at scrape time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.engine_helpers import wait_until
from tests.rest_helpers import OPEN_LIMITS, assert_error, png, post_images, wait_job

TOKEN = "metrics-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRELLIS = "fal-ai/trellis"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= set(found))


def finished_jobs(client: httpx.Client) -> float:
    return value(scrape(client), "image2model_jobs_finished_total")


def run_to_the_end(server, client: httpx.Client, job_id: str) -> None:  # noqa: ANN001
    """Until the job is over and its end counted (the worker counts it just after its last write)."""
    counted = finished_jobs(client)
    wait_job(server, job_id)
    wait_until(lambda: finished_jobs(client) > counted, timeout=5)


def moved(client: httpx.Client, action: Callable[[], object]) -> Callable[..., float]:
    """Run the action; a function giving how far a sample moved meanwhile."""
    before = scrape(client)
    action()
    after = scrape(client)
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


def test_metrics_are_off_without_a_token_and_need_it(live_server_factory) -> None:  # noqa: ANN001
    closed = live_server_factory(fal_key="", **OPEN_LIMITS)
    assert_error(httpx.get(closed.url + "/metrics"), 404, "not_found", "METRICS_TOKEN")
    server = live_server_factory(fal_key="", metrics_token=TOKEN, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert_error(client.get("/metrics"), 401, "invalid_metrics_token")
        assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "invalid_metrics_token")
        samples = scrape(client)
    assert value(samples, "image2model_workers_alive") == 1  # the embedded consumer
    assert ("image2model_spending_images_limit", ()) in samples


def test_a_fal_job_moves_the_job_item_request_and_duration_families(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.1, 0.3)
    server = live_server_factory(metrics_token=TOKEN, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        def run_job() -> None:
            job_id = post_images(client, [("a.png", png(1)), ("b.png", png(2))], model=TRELLIS).json()["job_id"]
            run_to_the_end(server, client, job_id)

        delta = moved(client, run_job)
        samples = scrape(client)
    assert delta("image2model_jobs_created_total", model=TRELLIS) == 1
    assert delta("image2model_items_created_total", model=TRELLIS) == 2
    assert delta("image2model_items_finished_total", model=TRELLIS, state="succeeded") == 2
    assert delta("image2model_jobs_finished_total", model=TRELLIS, state="succeeded") == 1
    assert delta("image2model_job_seconds_count", model=TRELLIS, state="succeeded") == 1
    assert delta("image2model_queue_wait_seconds_count", model=TRELLIS) == 2
    assert delta("image2model_fal_run_seconds_count", model=TRELLIS) == 2
    assert delta("image2model_download_seconds_count") >= 2
    assert delta("image2model_fal_requests_total", method="POST", status_class="2xx") >= 2  # the submits
    assert delta("image2model_fal_requests_total", method="GET", status_class="2xx") >= 4
    # the spending guard counted both photos against its limit
    assert value(samples, "image2model_spending_images_hour") == 2
    assert value(samples, "image2model_spending_images_limit") == server.runtime.settings.fal_images_per_hour


def test_failures_retries_resumes_and_reconciliations_are_counted(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.1, 0.3)
    server = live_server_factory(metrics_token=TOKEN, fal_reconcile_seconds=0.5, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        def one_job() -> None:
            run_to_the_end(server, client, post_images(client, [("a.png", png())], model=TRELLIS).json()["job_id"])

        fake_fal.fail(422, on="submit", times=1)
        refused = moved(client, one_job)
        assert refused("image2model_items_failed_total", model=TRELLIS, code="fal_invalid_input") == 1
        assert refused("image2model_items_finished_total", model=TRELLIS, state="failed") == 1
        assert refused("image2model_fal_requests_total", method="POST", status_class="4xx") == 1

        fake_fal.fail(503, on="result", times=1)  # transient: retried, and the request resumed
        retried = moved(client, one_job)
        assert retried("image2model_item_retries_total", model=TRELLIS, code="fal_unavailable") == 1
        assert retried("image2model_fal_resumes_total") == 1
        assert retried("image2model_fal_requests_total", status_class="5xx") == 1

        fake_fal.history_lists_unfinished = True
        fake_fal.lose_submit_answers("500", times=1)  # accepted, answer lost: found in the history
        found = moved(client, one_job)
        assert found("image2model_fal_reconciliations_total", outcome="adopted") == 1


def test_refused_uploads_are_counted_by_reason(live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", metrics_token=TOKEN, rate_limit_upload="4/minute",
                                 rate_limit_api="100000/minute")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        def refusals() -> None:
            assert post_images(client, [("a.txt", b"not an image")], content_type="text/plain").status_code == 415
            assert post_images(client, [("a.png", png())], model="no/such").status_code == 422
            # refused while reading the request, before the job service (found from outside: not counted)
            assert post_images(client, [("a.png", png())], params="[1]").status_code == 422
            assert post_images(client, [("a.png", png())], params="{}", face_limit="many").status_code == 422
            assert post_images(client, [("a.png", png())]).status_code == 429

        delta = moved(client, refusals)
    reasons = {"unsupported_file_type": 1, "unknown_model": 1, "invalid_parameter": 2, "rate_limited": 1}
    got = {reason: delta("image2model_uploads_refused_total", reason=reason) for reason in reasons}
    assert got == reasons, got


def test_gauges_show_the_queue_workers_and_open_streams(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    # no worker at all: what is queued stays queued, and the queue's age grows
    server = live_server_factory(metrics_token=TOKEN, embedded_worker=False, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        idle = scrape(client)
        job_id = post_images(client, [("a.png", png(1)), ("b.png", png(2)), ("c.png", png(3))],
                             model=TRELLIS).json()["job_id"]
        wait_until(lambda: value(scrape(client), "image2model_queue_oldest_wait_seconds") > 0.2, timeout=5)
        waiting = scrape(client)
        opened = threading.Event()

        def follow() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as other, \
                    other.stream("GET", f"/api/v1/status/tasks/{job_id}/stream") as stream:
                lines = stream.iter_lines()
                next(lines)  # the first event is here: the stream is open (and stays: `lines` lives)
                opened.set()
                streaming.wait(10)  # held open until the scrape is done

        streaming = threading.Event()
        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert opened.wait(10)
        during = scrape(client)
        streaming.set()
        reader.join(10)
        client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert value(idle, "image2model_queue_depth") == 0 and value(idle, "image2model_workers_alive") == 0
    assert value(idle, "image2model_open_streams") == 0
    assert value(waiting, "image2model_queue_depth") == 3
    assert value(during, "image2model_open_streams") == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_offline_job_is_timed_as_an_offline_build(live_server_factory, backend) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", metrics_token=TOKEN, **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        delta = moved(client, lambda: run_to_the_end(server, client, post_images(client, [("a.png", png())]).json()["job_id"]))
    assert delta("image2model_offline_build_seconds_count") == 1
    assert delta("image2model_fal_run_seconds_count") == 0


def test_redis_mode_each_huey_consumer_serves_its_own_metrics(  # noqa: ANN001
        fake_fal, redis_server, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import _flush, free_port, make_settings, start_consumer_process
    from tests.rest_helpers import start_server

    _flush(redis_server)
    port = free_port()
    monkeypatch.setenv("WORKER_METRICS_PORT", str(port))
    server = start_server(tmp_path / "data", redis_url=redis_server, embedded_worker=False, fal_key="test-key",
                          metrics_token=TOKEN)
    consumer = start_consumer_process(make_settings(tmp_path / "data", redis_server), fake_fal.base_url)
    try:
        worker_url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: _reachable(worker_url), timeout=30, interval=0.2)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            wait_until(lambda: value(scrape(client), "image2model_workers_alive") == 1, timeout=30, interval=0.2)
            job_id = post_images(client, [("a.png", png())], model=TRELLIS).json()["job_id"]
            wait_until(lambda: server.runtime.service.get(job_id).state.terminal, timeout=60, interval=0.2)
            web = scrape(client)

        def worker_count() -> float:
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(httpx.get(worker_url).text) for s in f.samples}
            return value(samples, "image2model_items_finished_total", model=TRELLIS, state="succeeded")

        wait_until(lambda: worker_count() == 1, timeout=5)
        # the web process made the job; the worker made the model and counted it
        assert value(web, "image2model_jobs_created_total", model=TRELLIS) >= 1
    finally:
        consumer.terminate()
        consumer.wait(20)
        server.stop()
        server.runtime.close()


def _reachable(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

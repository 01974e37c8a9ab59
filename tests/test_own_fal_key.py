"""Each person's own FAL key: REST (X-Fal-Key), the Gradio API (fal_key) and the page's field.

A job made with a person's key runs on that key only (the fake FAL records which key each call
carried), is not counted by the server's spending guard, and the key never shows up: not in
logs, not in the store's plain records or any file of the data directory, not in a status
answer or the page's HTML. It is sealed while the job runs and gone once the job ends.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client, handle_file

from image2model.examples import EXAMPLES_DIR
from image2model.runtime import Runtime
from tests.conftest import make_settings, start_consumer_process
from tests.engine_helpers import wait_until
from tests.rest_helpers import OPEN_LIMITS, assert_error, png, post_images, wait_job

OWN_KEY = "8f2c1d6e-0b7a-4e21-9c3d-5a6b7c8d9e0f:5d41402abc4b2a76b9719d911017c592"
SERVER_KEY = "test-key"  # make_settings' FAL_KEY
TRELLIS = "fal-ai/trellis"


def calls_with(fake_fal: Any, key: str) -> list[tuple[str, str]]:
    return [(method, path) for method, path, used in fake_fal.keys_used if used == key]


def store_dump(runtime: Runtime) -> str:
    """Every plain record the job store holds, as text."""
    if not runtime.settings.use_redis:
        with sqlite3.connect(runtime.settings.data_dir / "jobs.db") as conn:
            return "\n".join(conn.iterdump())
    import redis

    client = redis.Redis.from_url(runtime.settings.redis_url, decode_responses=True)
    parts = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        value: Any = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
                      "zset": lambda k: client.zrange(k, 0, -1), "list": lambda k: client.lrange(k, 0, -1)
                      }.get(kind, lambda k: "")(key)
        parts.append(f"{key} {value}")
    return "\n".join(parts)


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_rest_job_runs_on_the_callers_key_only_and_leaves_no_trace(  # noqa: ANN001
        fake_fal, live_server_factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake_fal.set_latency(0.3, 0.6)
    server = live_server_factory(fal_images_per_hour=1, **OPEN_LIMITS)  # the server's guard: 1 image an hour
    runtime = server.runtime
    with httpx.Client(base_url=server.url, timeout=30) as client:
        images = [("a.png", png(1)), ("b.png", png(2))]
        answer = post_images(client, images, headers={"X-Fal-Key": OWN_KEY}, model=TRELLIS)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        # while it runs the key is held, sealed, apart from the job record
        sealed = runtime.store.job_key(job_id)
        assert sealed and OWN_KEY not in sealed and runtime.open_key(sealed) == OWN_KEY
        stream = client.get(f"/api/v1/status/tasks/{job_id}/stream").text  # to the end of the job
        job = wait_job(server, job_id)
        assert job.state.value == "succeeded" and job.own_fal_key
        # the person's key paid for every FAL call of this job; the server's for none
        submits = [c for c in calls_with(fake_fal, OWN_KEY) if c[0] == "POST" and c[1].startswith("/queue/")]
        assert len(submits) == 2
        assert calls_with(fake_fal, SERVER_KEY) == []
        assert runtime.store.images_reserved(3600, job.created_at + 1) == 0, "counted by the server's guard"
        # ... so the server's own budget is still there, and a server-paid job uses it up
        assert post_images(client, [("c.png", png(3))], model=TRELLIS).status_code == 202
        assert_error(post_images(client, [("d.png", png(4))], model=TRELLIS), 429, "spending_limit")
        # gone once the job ended (the worker drops it right after writing the last item)
        wait_until(lambda: runtime.store.job_key(job_id) is None, timeout=5, interval=0.05)
        seen = [answer.text, stream, client.get(f"/api/v1/status/tasks/{job_id}").text,
                client.get(f"/api/v1/download/{job_id}/all").text, client.get("/").text, client.get("/config").text,
                json.dumps(runtime.service.status(job))]
    assert '"own_fal_key":true' in seen[2]
    assert not [text for text in seen if OWN_KEY in text]
    assert OWN_KEY not in store_dump(runtime)
    assert files_holding(runtime.settings.data_dir, OWN_KEY) == []
    logged = [repr(record.__dict__) for record in caplog.records]
    assert logged and not [line for line in logged if OWN_KEY in line]


def test_a_rejected_key_fails_the_job_with_fals_reason_in_plain_words(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    fake_fal.rejected_keys.add(OWN_KEY)
    server = live_server_factory(**OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        job_id = post_images(client, [("a.png", png())], headers={"X-Fal-Key": OWN_KEY}, model=TRELLIS).json()["job_id"]
        job = wait_job(server, job_id)
    error = job.items[0].error
    assert job.state.value == "failed" and error is not None and error.code == "fal_key_rejected"
    assert "did not accept the FAL key you gave" in error.message
    assert "No user found for Key ID and Secret" in error.message  # FAL's own reason
    assert OWN_KEY not in error.message
    wait_until(lambda: server.runtime.store.job_key(job_id) is None, timeout=5, interval=0.05)


@pytest.mark.parametrize("bad", ["has a space:in it", "short", "x" * 300, "key\nwith:newline-0123456789"])
def test_a_key_that_is_not_one_is_refused_without_repeating_it(live_server_factory, bad: str) -> None:  # noqa: ANN001
    server = live_server_factory(**OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = post_images(client, [("a.png", png())], headers={"X-Fal-Key": bad.replace("\n", " ")},
                             model=TRELLIS)
        error = assert_error(answer, 422, "invalid_fal_key", "does not look like a FAL key")
    assert bad not in error["message"]
    assert server.runtime.store.all_job_ids() == []


def test_with_no_server_key_a_callers_key_opens_the_fal_models(fake_fal, live_server_factory) -> None:  # noqa: ANN001
    server = live_server_factory(fal_key="", **OPEN_LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert_error(post_images(client, [("a.png", png())], model=TRELLIS), 422, "model_unavailable", "X-Fal-Key")
        own = post_images(client, [("a.png", png())], headers={"X-Fal-Key": OWN_KEY}, model=TRELLIS)
        assert own.status_code == 202, own.text
        assert wait_job(server, own.json()["job_id"]).state.value == "succeeded"
        # the offline model needs no key: it is neither used nor kept
        offline = post_images(client, [("a.png", png())], headers={"X-Fal-Key": OWN_KEY}, model="local/relief")
        assert "Your FAL key was not used or kept" in offline.json()["notes"][0]
        assert not server.runtime.service.get(offline.json()["job_id"]).own_fal_key
        assert server.runtime.store.job_key(offline.json()["job_id"]) is None
    assert calls_with(fake_fal, OWN_KEY)


def test_the_gradio_api_takes_fal_key(fake_fal, live_server_factory, tmp_path: Path) -> None:  # noqa: ANN001
    server = live_server_factory(**OPEN_LIMITS)
    client = Client(server.url, download_files=str(tmp_path / "downloads"), verbose=False)
    status, files = client.predict([handle_file(str(EXAMPLES_DIR / "duck.png"))], TRELLIS, "per_image", {}, OWN_KEY,
                                   api_name="/generate")
    assert status["state"] == "succeeded" and status["own_fal_key"] is True and len(files) == 1
    assert calls_with(fake_fal, OWN_KEY) and not calls_with(fake_fal, SERVER_KEY)
    assert OWN_KEY not in json.dumps(status)
    # callers that send no key keep working as before, on the server's key
    plain, _ = client.predict([handle_file(str(EXAMPLES_DIR / "mug.png"))], TRELLIS, "per_image", {},
                              api_name="/generate")
    assert plain["state"] == "succeeded" and plain["own_fal_key"] is False and calls_with(fake_fal, SERVER_KEY)


def test_a_worker_with_another_secret_says_so_instead_of_sending_a_garbled_key(fake_fal, tmp_path: Path) -> None:  # noqa: ANN001
    web = Runtime(make_settings(tmp_path / "data", secret_key="the-web-machines-secret-0123456789"))
    worker = Runtime(make_settings(tmp_path / "data", secret_key="another-machines-secret-0123456789"))
    try:
        source = tmp_path / "a.png"
        source.write_bytes(png())
        from image2model.jobs.service import Upload

        job = web.service.create_job([Upload("a.png", source)], model=TRELLIS, fal_key=OWN_KEY)
        worker.runner.run(job.id, 0)
        item = web.service.get(job.id).items[0]
        assert item.error is not None and item.error.code == "fal_key_unreadable", item
        assert "SECRET_KEY" in item.error.message
        assert fake_fal.submits == [] and web.store.job_key(job.id) is None
    finally:
        web.close()
        worker.close()


def test_redis_mode_a_worker_on_another_machine_uses_the_key(fake_fal, redis_server, tmp_path: Path) -> None:  # noqa: ANN001
    """No SECRET_KEY anywhere: the web process and a separate huey_consumer agree on the
    deployment's secret through Redis, so the consumer can open the sealed key."""
    from tests.conftest import _flush
    from tests.rest_helpers import start_server

    _flush(redis_server)
    server = start_server(tmp_path / "web", redis_url=redis_server, embedded_worker=False, fal_key=SERVER_KEY)
    consumer = start_consumer_process(make_settings(tmp_path / "web", redis_server), fake_fal.base_url)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job_id = post_images(client, [("a.png", png())], headers={"X-Fal-Key": OWN_KEY},
                                 model=TRELLIS).json()["job_id"]
            wait_until(lambda: server.runtime.service.get(job_id).state.terminal, timeout=60, interval=0.2)
        job = server.runtime.service.get(job_id)
        assert job.state.value == "succeeded", job.items[0].error
        assert calls_with(fake_fal, OWN_KEY) and not calls_with(fake_fal, SERVER_KEY)
        assert OWN_KEY not in store_dump(server.runtime)
    finally:
        consumer.terminate()
        consumer.wait(20)
        server.stop()
        server.runtime.close()


@pytest.mark.parametrize("order", ["worker_first", "web_first"])
def test_after_redis_lost_its_data_a_new_worker_opens_what_the_old_web_process_seals(
        fake_fal, redis_server, tmp_path: Path, order: str) -> None:  # noqa: ANN001
    """No SECRET_KEY: Redis restarts empty (the stored secret is gone) while a web process
    keeps running, and a new consumer starts. Whichever of the two needs the secret first
    stores it, and the other follows, so keys given after the loss still work."""
    from tests.conftest import _flush

    _flush(redis_server)
    web = Runtime(make_settings(tmp_path / "data", redis_server))
    try:
        assert web.open_key(web.seal_key(OWN_KEY)) == OWN_KEY  # the web process read the secret
        _flush(redis_server)  # Redis lost everything
        worker = Runtime(make_settings(tmp_path / "data", redis_server))
        try:
            if order == "worker_first":  # the new consumer stores a secret of its own first
                assert worker.secret != web.secret and worker.open_key(worker.seal_key("x")) == "x"
            assert worker.open_key(web.seal_key(OWN_KEY)) == OWN_KEY
            assert web.open_key(worker.seal_key(OWN_KEY)) == OWN_KEY
        finally:
            worker.close()
    finally:
        web.close()

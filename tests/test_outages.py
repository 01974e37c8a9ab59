"""Outages answered plainly (issue 10, 8-9): Redis down or hanging, no live worker, a full disk."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
import pytest
from httpx_sse import connect_sse

from image2model.jobs.service import Upload
from image2model.runtime import Runtime
from tests.conftest import make_settings, start_consumer_process
from tests.engine_helpers import wait_done, wait_until
from tests.live_server import LiveServer
from tests.netutil import free_port, stop_process, wait_for_port
from tests.rest_helpers import assert_error, encode, picture, png, post_images

OPEN = {"rate_limit_api": "off", "rate_limit_upload": "off"}


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        print("SKIP: redis-server binary not found")
        pytest.skip("redis-server binary not found")
    return binary


def start_redis(port: int, workdir: str) -> subprocess.Popen:
    proc = subprocess.Popen([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc


@pytest.fixture
def own_redis():  # noqa: ANN201
    """A Redis this test may stop, freeze and start again on the same port."""
    port, workdir = free_port(), tempfile.mkdtemp(prefix="i2m-redis-outage-")
    box = {"proc": start_redis(port, workdir), "port": port, "dir": workdir}
    yield box
    proc = box["proc"]
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
    stop_process(proc)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("outage", ["down", "hanging"])
def test_redis_down_or_hanging_gives_503_with_the_envelope(own_redis, tmp_path, outage) -> None:  # noqa: ANN001
    settings = make_settings(tmp_path / "data", f"redis://127.0.0.1:{own_redis['port']}/0",
                             embedded_worker=True, fal_key="", **OPEN)
    server = LiveServer(Runtime(settings), free_port()).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job_id = post_images(client, [("a.png", png())]).json()["job_id"]
            assert client.get("/ready").status_code == 200
            if outage == "down":
                stop_process(own_redis["proc"])
            else:
                own_redis["proc"].send_signal(signal.SIGSTOP)
            started = time.monotonic()
            ready = client.get("/ready")
            assert ready.status_code == 503 and time.monotonic() - started < 4
            assert "job store is unreachable" in ready.json()["error"]["message"]
            error = assert_error(client.get(f"/api/v1/status/tasks/{job_id}"), 503, "store_unavailable",
                                 "not reachable")
            assert error["details"] == {}
            assert time.monotonic() - started < 15, "a hanging Redis held the requests"
            if outage == "down":
                own_redis["proc"] = start_redis(own_redis["port"], own_redis["dir"])
            else:
                own_redis["proc"].send_signal(signal.SIGCONT)
            wait_until(lambda: client.get("/ready").status_code == 200, timeout=30, interval=0.5)
            assert client.get(f"/api/v1/status/tasks/{job_id}").status_code == 200
    finally:
        server.stop()
        server.runtime.close()


def test_with_no_live_consumer_ready_and_the_job_say_so(redis_server, fake_fal, tmp_path) -> None:  # noqa: ANN001
    import redis

    redis.Redis.from_url(redis_server).flushdb()
    settings = make_settings(tmp_path / "data", redis_server, embedded_worker=False, **OPEN)
    server = LiveServer(Runtime(settings), free_port()).start()
    consumer: subprocess.Popen | None = None
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ready = client.get("/ready")
            assert ready.status_code == 503 and "no worker is running" in ready.json()["error"]["message"]
            job_id = post_images(client, [("a.png", png())], model="fal-ai/trellis").json()["job_id"]
            item = client.get(f"/api/v1/status/tasks/{job_id}").json()["items"][0]
            assert item["state"] == "queued" and "no worker is running" in item["message"]
            with connect_sse(client, "GET", f"/api/v1/status/tasks/{job_id}/stream") as source:
                first = json.loads(next(e for e in source.iter_sse() if e.event == "progress").data)
            assert "no worker is running" in first["items"][0]["message"], "the live stream hides it"
            consumer = start_consumer_process(settings, fake_fal.base_url)
            wait_until(lambda: client.get("/ready").status_code == 200, timeout=30, interval=0.3)
            wait_until(lambda: client.get(f"/api/v1/status/tasks/{job_id}").json()["state"] == "succeeded",
                       timeout=60, interval=0.3)
    finally:
        if consumer is not None:
            stop_process(consumer)
        server.stop()
        server.runtime.close()


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    """A real 16 MB filesystem (tmpfs), so "disk full" is the kernel's ENOSPC, not a stand-in."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"SKIP: cannot mount a small tmpfs here ({done.stderr.strip()})")
        pytest.skip("mounting a tmpfs needs root and mount rights")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Fill a filesystem to the brim, but for `leave_bytes`."""
    filler = directory / f"filler-{uuid.uuid4().hex}"
    free = shutil.disk_usage(directory).free - leave_bytes
    with open(filler, "wb") as out:
        chunk = b"\0" * 1048576
        try:
            while free > 0:
                out.write(chunk[: min(len(chunk), free)])
                free -= len(chunk)
            out.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_refuses_uploads_plainly_and_harms_nothing(live_server_factory, small_disk) -> None:  # noqa: ANN001
    server = live_server_factory(data_dir=small_disk / "data", fal_key="", min_free_disk_mb=1, **OPEN)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        first = post_images(client, [("before.png", png())])
        assert first.status_code == 202, first.text
        job_id = first.json()["job_id"]
        wait_until(lambda: client.get(f"/api/v1/status/tasks/{job_id}").json()["state"] == "succeeded",
                   timeout=60, interval=0.2)
        filler = fill(small_disk)
        big = [(f"p{n}.png", png(seed=n, size=(900, 700))) for n in range(3)]
        refused = post_images(client, big)
        error = assert_error(refused, 507, "disk_full", "disk is full")
        assert "Nothing you sent before was lost" in error["message"]
        ready = client.get("/ready")
        assert ready.status_code == 503 and "disk is (nearly) full" in ready.json()["error"]["message"]
        # what was there before is untouched and still served
        status = client.get(f"/api/v1/status/tasks/{job_id}").json()
        glb = status["items"][0]["files"][0]["url"]
        assert client.get(glb).status_code == 200
        filler.unlink()
        assert post_images(client, big).status_code == 202, "space came back but uploads stayed refused"


def speckled_png() -> bytes:
    """A 1600x1200 object whose model is well over 384 KB: its texture is noise, which JPEG
    cannot shrink (a plain one makes a model small enough to fit)."""
    img = picture((1600, 1200))
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    inside = np.asarray(img.convert("L")) < 250
    speckled = np.where(inside[..., None], noise, np.asarray(img))
    return encode(Image.fromarray(speckled))


def test_an_item_that_cannot_save_its_model_fails_with_disk_full(live_server_factory, small_disk) -> None:  # noqa: ANN001
    server = live_server_factory(data_dir=small_disk / "data", fal_key="", min_free_disk_mb=0, **OPEN)
    runtime = server.runtime
    runtime.stop_consumer()  # so the disk fills between the upload and the model's save
    with httpx.Client(base_url=server.url, timeout=60) as client:
        job_id = post_images(client, [("photo.png", speckled_png())]).json()["job_id"]
        filler = fill(small_disk, leave_bytes=384 * 1024)  # room for the job store, not for a model
        runtime.start_consumer()
        wait_until(lambda: client.get(f"/api/v1/status/tasks/{job_id}").json()["state"] == "failed",
                   timeout=60, interval=0.2)
        item = client.get(f"/api/v1/status/tasks/{job_id}").json()["items"][0]
        assert item["error"]["code"] == "disk_full" and "disk is full" in item["error"]["message"]
        results = runtime.files.results_dir(job_id)
        assert not results.exists() or not list(results.iterdir()), "a half-written model was left"
        filler.unlink()


def test_a_live_stream_outlives_a_redis_restart_and_logs_the_cause_once(own_redis, fake_fal, tmp_path, caplog) -> None:  # noqa: ANN001
    fake_fal.set_latency(0.0, 8.0)  # the job runs through the outage
    settings = make_settings(tmp_path / "data", f"redis://127.0.0.1:{own_redis['port']}/0",
                             embedded_worker=True, sse_heartbeat_seconds=0.5, **OPEN)  # quiet: read again
    server = LiveServer(Runtime(settings), free_port()).start()
    events: list[str] = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            job_id = post_images(client, [("a.png", png())], model="fal-ai/trellis").json()["job_id"]

            def follow() -> None:
                with connect_sse(client, "GET", f"/api/v1/status/tasks/{job_id}/stream") as source:
                    events.extend(e.event for e in source.iter_sse())

            reader = threading.Thread(target=follow)
            with caplog.at_level(logging.INFO, logger="image2model.web.rest.sse"):
                reader.start()
                wait_until(lambda: "progress" in events, timeout=20)
                stop_process(own_redis["proc"])
                time.sleep(4)  # four failed reads of the watched job at least
                own_redis["proc"] = start_redis(own_redis["port"], own_redis["dir"])
                reader.join(60)
            assert not reader.is_alive(), "the stream did not end after the outage"
            assert events[-1] == "task_completed" and "completed" in events, events[-6:]
        failing = [r for r in caplog.records if r.getMessage().startswith(f"watching job {job_id} failed")]
        assert len(failing) == 1 and failing[0].exc_info, [r.getMessage() for r in caplog.records][-10:]
        assert any(r.getMessage().startswith(f"watching job {job_id} again after") for r in caplog.records)
    finally:
        server.stop()
        server.runtime.close()


def test_the_gradio_api_rides_out_a_redis_restart(own_redis, fake_fal, tmp_path) -> None:  # noqa: ANN001
    """/generate keeps streaming through a Redis outage and ends with the model; /job_status
    during the outage says in words that the job store is away (not a generic error)."""
    from gradio_client import Client, handle_file

    fake_fal.set_latency(0.0, 8.0)  # the job runs through the outage
    settings = make_settings(tmp_path / "data", f"redis://127.0.0.1:{own_redis['port']}/0",
                             embedded_worker=True, **OPEN)
    server = LiveServer(Runtime(settings), free_port()).start()
    photo = tmp_path / "cup.png"
    photo.write_bytes(png())
    client = Client(server.url, download_files=str(tmp_path / "downloads"), verbose=False)
    try:
        job = client.submit([handle_file(str(photo))], "fal-ai/trellis", "", {}, api_name="/generate")
        wait_until(lambda: job.outputs() and job.outputs()[-1][0]["state"] == "running", timeout=20)
        job_id = job.outputs()[-1][0]["job_id"]
        stop_process(own_redis["proc"])
        with pytest.raises(Exception) as refused:
            client.predict(job_id, api_name="/job_status")
        assert "job store is not reachable" in str(refused.value), refused.value
        time.sleep(3)  # three failed reads of the followed job at least
        own_redis["proc"] = start_redis(own_redis["port"], own_redis["dir"])
        status, files = job.result(timeout=60)
        assert status["state"] == "succeeded", status["items"][0]
        assert [Path(f).name for f in files] == ["cup.glb"]
    finally:
        client.close()
        server.stop()
        server.runtime.close()


def test_the_page_says_the_store_is_away_and_catches_up_after_a_redis_restart(  # noqa: ANN001
        own_redis, fake_fal, browser, tmp_path) -> None:
    """Seen from outside (fourth round): the page showed "Something went wrong" during a
    Redis blip and stayed at "Working" after the job was done. Now it says, in calm words,
    that the store is away, then shows the finished model."""
    from image2model.web.page.blocks import STORE_AWAY
    from tests.test_browser import rows, wait_for, wait_states

    fake_fal.set_latency(0.0, 8.0)
    settings = make_settings(tmp_path / "data", f"redis://127.0.0.1:{own_redis['port']}/0",
                             embedded_worker=True, **OPEN)
    server = LiveServer(Runtime(settings), free_port()).start()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job_id = post_images(client, [("cup.png", png())], model="fal-ai/trellis").json()["job_id"]
        page = context.new_page()
        page.goto(f"{server.url}/?job={job_id}")
        wait_states(page, {"Working"}, 1, timeout=20)
        stop_process(own_redis["proc"])
        notice = page.locator("#notice")
        wait_for(page, lambda: STORE_AWAY[:40] in notice.inner_text(), 20, "the note that the store is away")
        assert "Something went wrong" not in notice.inner_text()
        page.reload()  # opened again during the outage: the same calm note, and it follows the job
        page.wait_for_selector("#generate")
        notice = page.locator("#notice")
        wait_for(page, lambda: STORE_AWAY[:40] in notice.inner_text(), 20, "the note after a reload")
        assert "Redis" not in page.content() and "Error" not in notice.inner_text()
        own_redis["proc"] = start_redis(own_redis["port"], own_redis["dir"])
        wait_states(page, {"Done"}, 1, timeout=60)
        wait_for(page, lambda: not notice.is_visible(), 10, "the note to go once the store is back")
        assert "Finished: 1 of 1 model ready" in page.locator("#progress").inner_text(), rows(page)
    finally:
        context.close()
        server.stop()
        server.runtime.close()


def test_a_worker_that_does_not_share_the_data_dir_fails_photos_in_words(redis_server, tmp_path, caplog) -> None:  # noqa: ANN001
    """Found from outside (fifth round): a consumer with another DATA_DIR than the web app
    failed every photo as a bare internal_error. Now the photo says what is wrong, and the
    worker's log says where it looked."""
    import redis

    redis.Redis.from_url(redis_server).flushdb()
    web = Runtime(make_settings(tmp_path / "web-data", redis_server, fal_key="", embedded_worker=False))
    worker = Runtime(make_settings(tmp_path / "other-data", redis_server, fal_key=""))
    try:
        photo = tmp_path / "cup.png"
        photo.write_bytes(png())
        job = web.service.create_job([Upload("cup.png", photo)], model="local/relief")
        with caplog.at_level(logging.ERROR, logger="image2model.worker.runner"):
            worker.start_consumer()
            done = wait_done(web.service, job.id, timeout=60)
        (item,) = done.items
        assert item.error is not None and item.error.code == "input_missing", item.error
        assert "DATA_DIR" in item.error.message and "other-data" not in item.error.message  # no paths to users
        assert any("other-data" in r.getMessage() and "DATA_DIR" in r.getMessage() for r in caplog.records)
    finally:
        worker.close()
        web.close()

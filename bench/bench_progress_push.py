"""P2 progress push: the time from a job store write to its arrival at an SSE client and at a
gradio_client `/generate` job; p50 and p95. Target: p50 <= 50 ms.

The app runs a FAL job that stays running (the fake FAL finishes only after an hour, and its
log says nothing new meanwhile, so the worker writes nothing), and this script writes marked
progress messages into the job's item
through the same store the workers use, as a worker on another process or machine would.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx
from gradio_client import Client, handle_file
from httpx_sse import connect_sse

from bench.common import (AppProcess, distinct_images, fake_fal, median, parse_args, percentile, redis_server,
                          report, temp_dir)
from image2model.jobs.model import ItemState
from image2model.runtime import make_store
from tests.conftest import make_settings

MARK = "bench-mark "


def markers(status: dict) -> list[str]:
    return [i["message"] for i in status.get("items", []) if i["message"].startswith(MARK)]


def write_marks(store, job_id: str, count: int, gap: float, sent: dict[int, float]) -> None:  # noqa: ANN001
    """Writes at jittered intervals, so they cannot fall into step with any polling period."""
    rng = random.Random(7)
    for seq in range(count):
        time.sleep(gap * rng.uniform(0.5, 1.5))
        sent[seq] = time.perf_counter()
        store.update_item(job_id, 0, {"message": f"{MARK}{seq}"}, expect_state=[ItemState.RUNNING])


def wait_running(app: AppProcess, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{app.url}/api/v1/status/tasks/{job_id}").json()["items"][0]["state"] != "running":
        if time.monotonic() > deadline:
            raise TimeoutError("the item never started")
        time.sleep(0.05)


def via_sse(app: AppProcess, store, image: Path, count: int) -> list[float]:  # noqa: ANN001
    files = [("files", (image.name, image.read_bytes(), "image/png"))]
    job_id = httpx.post(app.url + "/api/v1/upload/", files=files, data={"model": "fal-ai/trellis"}).json()["job_id"]
    wait_running(app, job_id)
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    writer = threading.Thread(target=write_marks, args=(store, job_id, count, 0.1, sent))
    # A read timeout lets the loop end even when two writes landed in one event (the later
    # one replaces the earlier), so not every mark arrives.
    with httpx.Client(base_url=app.url, timeout=httpx.Timeout(10.0, read=1.0)) as client, \
            connect_sse(client, "GET", f"/api/v1/status/tasks/{job_id}/stream") as source:
        writer.start()
        try:
            for event in source.iter_sse():
                now = time.perf_counter()
                if event.event == "progress" and event.data:  # ours; not file_update or task_progress
                    for message in markers(json.loads(event.data)):
                        got.setdefault(int(message[len(MARK):]), now)
                if len(got) >= count or not writer.is_alive() and len(sent) == count and len(got) >= count:
                    break
        except httpx.ReadTimeout:
            pass  # quiet for a second after the last write: done
    writer.join()
    httpx.post(f"{app.url}/api/v1/jobs/{job_id}/cancel")
    return [(got[s] - sent[s]) * 1000 for s in sorted(got) if s in sent]


def via_gradio(app: AppProcess, store, image: Path, count: int) -> list[float]:  # noqa: ANN001
    client = Client(app.url, verbose=False, download_files=False)
    job = client.submit([handle_file(str(image))], "fal-ai/trellis", "", {}, api_name="/generate")
    deadline = time.monotonic() + 60
    while not job.outputs():
        if time.monotonic() > deadline:
            raise TimeoutError("/generate sent nothing")
        time.sleep(0.01)
    job_id = job.outputs()[0][0]["job_id"]
    wait_running(app, job_id)
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    writer = threading.Thread(target=write_marks, args=(store, job_id, count, 0.1, sent))
    writer.start()
    seen = 0
    deadline = time.monotonic() + 60
    while len(got) < count and time.monotonic() < deadline:
        outputs = job.outputs()
        now = time.perf_counter()
        for status, _files in outputs[seen:]:
            for message in markers(status):
                got.setdefault(int(message[len(MARK):]), now)
        seen = len(outputs)
        time.sleep(0.002)
    writer.join()
    httpx.post(f"{app.url}/api/v1/jobs/{job_id}/cancel")
    client.close()
    return [(got[s] - sent[s]) * 1000 for s in sorted(got) if s in sent]


def measure(mode: str, count: int) -> list[dict]:
    rows = []
    with temp_dir("i2m-bench-p2-") as tmp, fake_fal(0.0, 3600.0) as fake:
        image = distinct_images(tmp / "in", 1)[0]
        env = {"FAL_POLL_SECONDS": "60", "RATE_LIMIT_API": "off", "RATE_LIMIT_UPLOAD": "off"}

        def run(app: AppProcess, redis_url: str) -> None:
            store = make_store(make_settings(tmp / "data", redis_url))
            try:
                for client, fn in (("sse", via_sse), ("gradio_client", via_gradio)):
                    latencies = fn(app, store, image, count)
                    rows.append({"mode": mode, "client": client, "samples": len(latencies),
                                 "p50_ms": round(median(latencies), 1), "p95_ms": round(percentile(latencies, 95), 1),
                                 "target_p50_ms": 50, "met": median(latencies) <= 50})
            finally:
                store.close()

        if mode == "redis":
            with redis_server() as url:
                app = AppProcess(tmp / "data", fake.base_url, redis_url=url, EMBEDDED_WORKER="true", **env)
                try:
                    run(app, url)
                finally:
                    app.stop()
        else:
            app = AppProcess(tmp / "data", fake.base_url, **env)
            try:
                run(app, "")
            finally:
                app.stop()
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count = 10 if args.quick else 100
    rows = measure("embedded", count) + measure("redis", count)
    report("P2-progress-push", "P2 progress push: store write -> client (ms)",
           ["mode", "client", "samples", "p50_ms", "p95_ms", "met"], rows, args.quick)


if __name__ == "__main__":
    main()

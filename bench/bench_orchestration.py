"""P1 orchestration: 25 distinct images on a FAL model whose every request takes L = 0.5 s in
the queue + 4 s running. Measures the wall time from the upload's response to the job's end
(the SSE `completed` event), and checks FAL saw exactly one submit per input. Target: wall
<= 1.05 x L.

Modes: embedded (`python app.py` alone, SQLite); Redis with one `huey_consumer` of 25 worker
threads; and Redis with one consumer per core sharing the 25 threads, the deployment the
README recommends (a Python process runs Python code on one core at a time).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from bench.common import (AppProcess, ConsumerProcess, distinct_images, fake_fal, median, parse_args,
                          redis_server, report, temp_dir)

TOTAL_WORKERS = 25


def run_once(app: AppProcess, images: list[Path], model: str) -> float:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    with httpx.Client(base_url=app.url, timeout=120) as client:
        response = client.post("/api/v1/upload/", files=files, data={"model": model})
        answered = time.perf_counter()
        response.raise_for_status()
        job_id = response.json()["job_id"]
        with connect_sse(client, "GET", f"/api/v1/status/tasks/{job_id}/stream") as source:
            for event in source.iter_sse():
                if event.event in ("completed", "failed", "cancelled"):
                    ended = time.perf_counter()
                    state = json.loads(event.data)["state"]
                    if state != "succeeded":
                        raise RuntimeError(f"job ended {state}")
                    return ended - answered
    raise RuntimeError("the stream ended without a final event")


def measure(mode: str, consumers: int, count: int, queue_s: float, run_s: float, runs: int) -> dict:
    with temp_dir("i2m-bench-p1-") as tmp, fake_fal(queue_s, run_s) as fake:
        images = distinct_images(tmp / "in", count)
        walls: list[float] = []
        if consumers:
            with redis_server() as url:
                app = AppProcess(tmp / "data", fake.base_url, redis_url=url, EMBEDDED_WORKER="false")
                threads = math.ceil(TOTAL_WORKERS / consumers)
                workers = [ConsumerProcess(tmp / "data", url, fake.base_url, workers=threads)
                           for _ in range(consumers)]
                try:
                    walls = [run_once(app, images, "fal-ai/trellis") for _ in range(runs)]
                finally:
                    for worker in workers:
                        worker.stop()
                    app.stop()
        else:
            app = AppProcess(tmp / "data", fake.base_url)
            try:
                walls = [run_once(app, images, "fal-ai/trellis") for _ in range(runs)]
            finally:
                app.stop()
        counts = list(fake.submit_counts_by_sha256.values())
    latency = queue_s + run_s
    wall = median(walls)
    return {"mode": mode, "images": count, "L_s": latency, "wall_s": round(wall, 3),
            "ratio": round(wall / latency, 3), "target_ratio": 1.05, "met": wall <= 1.05 * latency,
            "submits": sum(counts), "one_submit_per_input": len(counts) == count and set(counts) == {runs},
            "runs": runs, "walls_s": [round(w, 3) for w in walls]}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count, queue_s, run_s = (5, 0.1, 0.4) if args.quick else (25, 0.5, 4.0)
    runs = args.runs or (1 if args.quick else 5)
    cores = os.cpu_count() or 1
    setups = [("embedded", 0), ("redis, 1 consumer", 1)]
    if cores > 1:
        setups.append((f"redis, {cores} consumers (1 per core)", cores))
    rows = [measure(mode, consumers, count, queue_s, run_s, runs) for mode, consumers in setups]
    report("P1-orchestration", "P1 orchestration: upload answered -> job finished (median)",
           ["mode", "images", "L_s", "wall_s", "ratio", "met", "submits", "one_submit_per_input", "walls_s"],
           rows, args.quick)


if __name__ == "__main__":
    main()

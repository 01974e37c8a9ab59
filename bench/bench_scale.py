"""P9 scale: many FAL jobs at once through one process, a small job behind them, and P1 from the POST.

The fake FAL takes every request L = queue + run seconds and runs all of them at once (as FAL
does up to the account's concurrency), so the limit for any number of images is about L.
Each figure is measured from the start of the first upload's POST to the end of the last job
(the items' own finished_at), by clients that upload all jobs at once.

Rows, side by side in one run, in embedded mode (`python app.py` alone) and Redis mode (the
web process plus one `huey_consumer` with 25 threads):
- P1 from the POST: one 25-image job.
- 100 images in 4 jobs, and 250 in 10 (FAL_CONCURRENCY allows all), with the working
  process's RSS at the start and its peak.
- Beside P1 and the 250 images, scripts with no app (bench/plain_clients.py, each in a process
  of its own): a plain fal-client script (a thread a photo: upload, subscribe, download), and
  the machine's floor: only the five HTTP requests a photo costs, from one asyncio process.
- A 1-image job posted once 250 images are queued: how long after its upload it started, and
  its wall against L.
- 1,000 open requests (40 jobs) on one process: its RSS while all are at FAL.

Everything shares this machine's cores: the app's CPU seconds (web and worker processes) and
those of this process (the fake FAL and the clients) are printed beside each wall time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from bench.common import (AppProcess, ConsumerProcess, cpu_seconds, distinct_images, fake_fal, parse_args,
                          proc_status_kb, redis_server, report, temp_dir)
from bench.plain_clients import MODEL

OPEN_ENV = {"RATE_LIMIT_API": "off", "RATE_LIMIT_UPLOAD": "off", "FAL_IMAGES_PER_HOUR": "0",
            "MAX_WAITING_IMAGES": "0", "FAL_CONCURRENCY": "2000"}


class RssSampler:
    """A process's resident memory, sampled every 0.1 s while a row runs."""

    def __init__(self, pid: int):
        self.pid = pid
        self.start_mib = proc_status_kb(pid, "VmRSS") / 1024
        self.peak_mib = self.start_mib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_mib = max(self.peak_mib, proc_status_kb(self.pid, "VmRSS") / 1024)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"rss_start_mib": round(self.start_mib, 1), "rss_peak_mib": round(self.peak_mib, 1)}


def upload_and_follow(url: str, images: list[Path], posted: list[float]) -> dict[str, Any]:
    """POST one job, follow its SSE stream to the end, and return its final status."""
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    with httpx.Client(base_url=url, timeout=300) as client:
        posted.append(time.time())
        response = client.post("/api/v1/upload/", files=files, data={"model": MODEL})
        response.raise_for_status()
        job_id = response.json()["job_id"]
        answered = time.time()
        with connect_sse(client, "GET", f"/api/v1/status/tasks/{job_id}/stream") as source:
            for event in source.iter_sse():
                if event.event in ("completed", "failed", "cancelled"):
                    break
        status = client.get(f"/api/v1/status/tasks/{job_id}").json()
    if status["state"] != "succeeded":
        raise RuntimeError(f"job ended {status['state']}: {[i['error'] for i in status['items']][:3]}")
    status["answered_at"] = answered
    return status


def run_jobs(url: str, jobs: list[list[Path]]) -> tuple[float, list[dict[str, Any]]]:
    """All jobs uploaded at once; (seconds from the first POST to the last item's end, statuses)."""
    posted: list[float] = []
    with ThreadPoolExecutor(len(jobs)) as pool:
        statuses = list(pool.map(lambda images: upload_and_follow(url, images, posted), jobs))
    ended = max(item["finished_at"] for status in statuses for item in status["items"])
    return ended - min(posted), statuses


def plain_script(kind: str, fake, images: Path, count: int, latency: float, row: str) -> dict[str, Any]:  # noqa: ANN001
    """A bench/plain_clients.py script sending `count` photos at once, in its own process."""
    fake.reset()
    done = subprocess.run([sys.executable, "-m", "bench.plain_clients", kind, fake.base_url, str(images), str(count)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode:
        raise RuntimeError(f"plain_clients {kind} failed: {done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    name = {"fal-client": "plain fal-client script", "raw": "raw HTTP floor (no app)"}[kind]
    return {"mode": name, "row": row, "images": count, "wall_s": round(figures["wall_s"], 3),
            "ratio": round(figures["wall_s"] / latency, 3), "script_cpu_s": round(figures["cpu_s"], 2)}


def measure_mode(mode: str, tmp: Path, fake, sizes: dict[str, int], latency: float) -> list[dict[str, Any]]:  # noqa: ANN001
    images = distinct_images(tmp / "in", sizes["open"])
    per_job = sizes["per_job"]

    def jobs_of(count: int, offset: int = 0) -> list[list[Path]]:
        return [images[offset + n: offset + n + per_job] for n in range(0, count, per_job)]

    rows = []
    with ExitStack() as stack:
        if mode == "embedded":
            app = AppProcess(tmp / f"data-{mode}", fake.base_url, **OPEN_ENV)
            worker_pid = app.pid
        else:
            redis_url = stack.enter_context(redis_server())
            app = AppProcess(tmp / f"data-{mode}", fake.base_url, redis_url=redis_url, EMBEDDED_WORKER="false",
                             **OPEN_ENV)
            consumer = ConsumerProcess(tmp / f"data-{mode}", redis_url, fake.base_url, workers=25, **OPEN_ENV)
            stack.callback(consumer.stop)
            worker_pid = consumer.proc.pid
        stack.callback(app.stop)

        pids = sorted({app.pid, worker_pid})

        def row(name: str, count: int, offset: int = 0) -> dict[str, Any]:
            fake.reset()
            since, sampler = time.monotonic(), RssSampler(worker_pid)
            app_cpu, bench_cpu = sum(cpu_seconds(pid) for pid in pids), time.process_time()
            wall, _ = run_jobs(app.url, jobs_of(count, offset))
            return {"mode": mode, "row": name, "images": count, "wall_s": round(wall, 3),
                    "ratio": round(wall / latency, 3), "fal_peak_in_flight": fake.peak_in_flight(since),
                    "submits": len(fake.submits), **sampler.stop(),
                    "app_cpu_s": round(sum(cpu_seconds(pid) for pid in pids) - app_cpu, 2),
                    "fake_and_clients_cpu_s": round(time.process_time() - bench_cpu, 2)}

        run_jobs(app.url, jobs_of(per_job))  # warm-up: the first job pays for imports and connections
        rows.append({**row("P1 from the POST", per_job), "target_ratio": 1.05})
        rows.append({**row(f"{sizes['hundred']} images", sizes["hundred"]), "target_ratio": 1.2})
        rows.append({**row(f"{sizes['many']} images", sizes["many"]), "target_ratio": 1.2})
        rows.append(behind_many(mode, app.url, fake, jobs_of(sizes["many"]), images[sizes["many"]], latency))
        rows.append({**row(f"{sizes['open']} open requests", sizes["open"]), "target_rss_mib": 400})
    return rows


def behind_many(mode: str, url: str, fake, jobs: list[list[Path]], small: Path, latency: float) -> dict[str, Any]:  # noqa: ANN001
    """A 1-image job uploaded the moment the big ones are all queued."""
    fake.reset()
    posted: list[float] = []
    with ThreadPoolExecutor(len(jobs) + 1) as pool:
        big = [pool.submit(upload_and_follow, url, images, posted) for images in jobs]
        while len(posted) < len(jobs):
            time.sleep(0.01)
        small_posted: list[float] = []
        status = upload_and_follow(url, [small], small_posted)
        for future in big:
            future.result()
    item = status["items"][0]
    return {"mode": mode, "row": "1 image behind the others", "images": 1,
            "wall_s": round(item["finished_at"] - small_posted[0], 3),
            "ratio": round((item["finished_at"] - small_posted[0]) / latency, 3),
            "started_after_s": round(item["started_at"] - status["answered_at"], 3), "target_ratio": 1.1}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if args.quick:
        queue_s, run_s = 0.1, 1.0
        sizes = {"per_job": 5, "hundred": 10, "many": 20, "open": 40}
        modes = ["embedded"]
    else:
        queue_s, run_s = 0.5, 4.0
        sizes = {"per_job": 25, "hundred": 100, "many": 250, "open": 1000}
        modes = ["embedded", "redis"]
    latency = queue_s + run_s
    rows: list[dict[str, Any]] = []
    with temp_dir("i2m-bench-p9-") as tmp, fake_fal(queue_s, run_s) as fake:
        script = tmp / "script"
        distinct_images(script, sizes["many"])
        p1, many = (sizes["per_job"], "P1 (one job's photos)"), (sizes["many"], f"{sizes['many']} images")
        plain = [("fal-client", p1), ("raw", many)] if args.quick else \
            [("fal-client", p1), ("fal-client", many), ("raw", p1), ("raw", many)]
        for kind, (count, name) in plain:
            rows.append(plain_script(kind, fake, script, count, latency, name))
        for mode in modes:
            rows += measure_mode(mode, tmp, fake, sizes, latency)
    report("P9-scale", f"P9 scale: FAL latency L = {latency:g} s; wall from the first POST to the last item's end",
           ["mode", "row", "images", "wall_s", "ratio", "target_ratio", "started_after_s", "fal_peak_in_flight",
            "submits", "rss_start_mib", "rss_peak_mib", "app_cpu_s", "script_cpu_s", "fake_and_clients_cpu_s"], rows, args.quick)


if __name__ == "__main__":
    main()

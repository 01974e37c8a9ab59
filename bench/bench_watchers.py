"""P3 many watchers: 1,000 SSE streams open on one app process. Measures the process's RSS with
them open, its CPU over 30 quiet seconds, then the fan-out latency of one job's update to all
of them. Target: < 300 MB RSS; CPU near idle when quiet.
"""

from __future__ import annotations

import asyncio
import resource
import time

import httpx

from bench.common import (AppProcess, cpu_seconds, distinct_images, median, parse_args, percentile,
                          proc_status_kb, report, temp_dir)
from image2model.runtime import make_store
from tests.conftest import make_settings

# The update every stream must see: a progress no real item has. (Not the message: with no
# worker running, a queued item's status says so instead of its own message.)
MARK_PROGRESS = 12.345
MARK = str(MARK_PROGRESS).encode()


async def open_stream(host: str, port: int, path: str, arrived: dict[int, float], ready: asyncio.Event,
                      index: int, opened: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    first = True
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            if first and line.startswith(b"HTTP/1.1 200"):
                opened[0] += 1
                first = False
            if MARK in line and index not in arrived:
                arrived[index] = time.perf_counter()
                ready.set()
    finally:
        writer.close()


async def scenario(url: str, pid: int, job_id: str, store, streams: int, quiet: float) -> dict:  # noqa: ANN001
    host, port = url.removeprefix("http://").split(":")
    arrived: dict[int, float] = {}
    opened = [0]
    ready = asyncio.Event()
    rss_before = proc_status_kb(pid, "VmRSS")
    tasks = [asyncio.create_task(open_stream(host, int(port), f"/api/v1/status/tasks/{job_id}/stream", arrived,
                                             ready, n, opened)) for n in range(streams)]
    deadline = time.monotonic() + 120
    while opened[0] < streams and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    rss_open = proc_status_kb(pid, "VmRSS")
    cpu_start = cpu_seconds(pid)
    await asyncio.sleep(quiet)
    cpu_quiet = cpu_seconds(pid) - cpu_start
    written = time.perf_counter()
    await asyncio.to_thread(store.update_item, job_id, 0, {"progress": MARK_PROGRESS})
    deadline = time.monotonic() + 60
    while len(arrived) < streams and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    latencies = [(t - written) * 1000 for t in arrived.values()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams": streams, "opened": opened[0], "rss_before_mb": round(rss_before / 1024, 1),
            "rss_open_mb": round(rss_open / 1024, 1), "quiet_s": quiet,
            "cpu_quiet_pct": round(100 * cpu_quiet / quiet, 2), "reached": len(latencies),
            "fanout_p50_ms": round(median(latencies), 1), "fanout_max_ms": round(max(latencies, default=0), 1),
            "fanout_p95_ms": round(percentile(latencies, 95), 1),
            "target_rss_mb": 300, "met": rss_open / 1024 < 300 and len(latencies) == streams}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    streams, quiet = (50, 3.0) if args.quick else (1000, 30.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * streams + 256)), hard))
    with temp_dir("i2m-bench-p3-") as tmp:
        app = AppProcess(tmp / "data", RATE_LIMIT_API="off", RATE_LIMIT_UPLOAD="off", EMBEDDED_WORKER="false")
        store = make_store(make_settings(tmp / "data"))
        try:
            image = distinct_images(tmp / "in", 1)[0]
            files = [("files", (image.name, image.read_bytes(), "image/png"))]
            job_id = httpx.post(app.url + "/api/v1/upload/", files=files).json()["job_id"]
            row = asyncio.run(scenario(app.url, app.pid, job_id, store, streams, quiet))
        finally:
            store.close()
            app.stop()
    report("P3-watchers", f"P3 many watchers: {streams} SSE streams on one process",
           ["streams", "opened", "rss_before_mb", "rss_open_mb", "cpu_quiet_pct", "reached", "fanout_p50_ms",
            "fanout_max_ms", "met"], [row], args.quick)


if __name__ == "__main__":
    main()

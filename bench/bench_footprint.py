"""P7 footprint: RSS of the embedded app (web + in-process workers) right after start and after
a 25-image job, on the offline model and on a FAL model (through the fake FAL), the latter
once with the fake's small sample model and once with models the size FAL makes (about 30 MB,
327,680 faces each: every one is downloaded and checked), and then OBJ and STL of two of them
asked for at once (the peak meanwhile, and the slowest status answer another client got).
Target: <= 400 MB.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from bench.common import (AppProcess, distinct_images, fake_fal, parse_args, proc_status_kb, report, reset_peak_rss,
                          temp_dir)
from tests.fakefal import fal_sized_glb


def run_job(app: AppProcess, images: list, model: str) -> dict:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    response = httpx.post(app.url + "/api/v1/upload/", files=files, data={"model": model}, timeout=120)
    response.raise_for_status()
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 300
    while not (status := httpx.get(f"{app.url}/api/v1/status/tasks/{job_id}").json())["finished"]:
        if time.monotonic() > deadline:
            raise TimeoutError("job did not finish")
        time.sleep(0.25)
    if status["state"] != "succeeded":
        raise RuntimeError(f"job ended {status['state']}")
    return status


def convert_while_reading(app: AppProcess, status: dict, models: int = 2) -> dict:
    """OBJ and STL of the first `models` models asked for at once, while another client reads
    the job's status every 50 ms: the peak RSS meanwhile and the slowest status answer."""
    job_id = status["job_id"]
    names = [f["name"] for item in status["items"] for f in item["files"] if f["kind"] == "model"][:models]
    slowest, stop = [0.0], threading.Event()

    def read_status() -> None:
        with httpx.Client(base_url=app.url, timeout=60) as client:
            while not stop.wait(0.05):
                began = time.monotonic()
                client.get(f"/api/v1/status/tasks/{job_id}")
                slowest[0] = max(slowest[0], time.monotonic() - began)

    def download(name: str, fmt: str) -> None:
        httpx.get(f"{app.url}/api/v1/download/{job_id}/{name}", params={"format": fmt}, timeout=600).raise_for_status()

    reset_peak_rss(app.pid)
    reader = threading.Thread(target=read_status)
    reader.start()
    started = time.monotonic()
    with ThreadPoolExecutor(2 * len(names)) as pool:
        list(pool.map(lambda job: download(*job), [(n, f) for n in names for f in ("obj", "stl")]))
    seconds = time.monotonic() - started
    stop.set()
    reader.join()
    return {"conversions_s": round(seconds, 1), "conversions_peak_mb": round(proc_status_kb(app.pid, "VmHWM") / 1024),
            "status_max_ms": round(slowest[0] * 1000)}


def measure(model: str, count: int, size: tuple[int, int], result: bytes | None = None,
            conversions: bool = False) -> dict:
    with temp_dir("i2m-bench-p7-") as tmp, fake_fal(0.2, 1.0) as fake:
        fake.result_bytes = result
        images = distinct_images(tmp / "in", count, size)
        app = AppProcess(tmp / "data", fake.base_url if model != "local/relief" else None,
                         RATE_LIMIT_API="off", RATE_LIMIT_UPLOAD="off")
        try:
            httpx.get(app.url + "/", timeout=30)  # the page rendered once, as a visitor would
            time.sleep(1.0)
            after_start = proc_status_kb(app.pid, "VmRSS") / 1024
            started = time.monotonic()
            status = run_job(app, images, model)
            job_s = time.monotonic() - started
            time.sleep(1.0)
            after_job = proc_status_kb(app.pid, "VmRSS") / 1024
            peak = proc_status_kb(app.pid, "VmHWM") / 1024
            converted = convert_while_reading(app, status) if conversions else {}
        finally:
            app.stop()
    results = "offline" if model == "local/relief" else \
        f"{len(result) / 1e6:.0f} MB each" if result else "the fake's sample"
    return {"model": model, "results": results, "images": count, "job_s": round(job_s, 2), "after_start_mb": round(after_start), "after_job_mb": round(after_job),
            "peak_mb": round(peak), **converted, "target_mb": 400,
            "met": max(after_start, after_job, converted.get("conversions_peak_mb", 0)) <= 400}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count, size = (3, (128, 96)) if args.quick else (25, (1024, 768))
    fal_sized = fal_sized_glb(*((3, 64) if args.quick else ()))
    rows = [measure("local/relief", count, size), measure("fal-ai/trellis", count, size),
            measure("fal-ai/trellis", count, size, fal_sized, conversions=True)]
    report("P7-footprint", "P7 footprint of the embedded app (RSS)",
           ["model", "results", "images", "job_s", "after_start_mb", "after_job_mb", "peak_mb", "conversions_s",
            "conversions_peak_mb", "status_max_ms", "met"], rows,
           args.quick)


if __name__ == "__main__":
    main()

"""P8 offline throughput: N photos through the offline model in one embedded app, against the
CPU floor (each photo's build time on one core, summed, divided by the cores). Target: within
1.3 x the floor (issue 15). Side by side: the builds in processes of their own, one per core
(the default), and in the app's worker threads (OFFLINE_PROCESSES=0); and the machine's own
floor, a plain script with no app: a process pool of one process per core building the same
photos (two builds at once can cost each more CPU than one alone: cores that share a physical
core on a VM), timed just before the app's rows.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from bench.common import AppProcess, cpu_seconds, distinct_images, parse_args, report, temp_dir
from image2model.providers.relief import generate_relief, load_image


def cpu_floor(paths: list, cores: int) -> float:  # noqa: ANN001
    """Seconds the builds need on `cores` cores if nothing else costs anything (timed here, one by one)."""
    total = 0.0
    for path in paths:
        image = load_image(path)
        started = time.process_time()
        generate_relief(Image.Image.copy(image))
        total += time.process_time() - started
    return total / cores


def plain_build(path: Path) -> float:
    """One photo as a script would make it (read, build, write the GLB); its CPU seconds."""
    started = time.process_time()
    path.with_suffix(".glb").write_bytes(generate_relief(load_image(path)).glb)
    return time.process_time() - started


def plain_pool(paths: list[Path], cores: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for the photos in a pool of `cores` processes, no app."""
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(plain_build, paths[:cores]))  # each process warm
        started = time.monotonic()
        cpu = sum(pool.map(plain_build, paths))
        return time.monotonic() - started, cpu


def machine_ticks() -> tuple[int, int]:
    """(all, idle) CPU ticks of the machine so far (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields), fields[3] + fields[4]


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid`, from /proc (no procps needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the app process itself, and of its children (the build processes)."""
    return cpu_seconds(pid), sum(cpu_seconds(c) for c in children_of(pid))


def run_app(tmp: Path, images: list[Path], processes: str) -> tuple[float, list[str], dict[str, float]]:
    """Seconds from the first upload to the last job's end, the jobs' states, and where the
    machine's CPU went meanwhile."""
    app = AppProcess(tmp / f"data-{processes or 'default'}", None, RATE_LIMIT_API="off", RATE_LIMIT_UPLOAD="off",
                     FAL_KEY="", OFFLINE_PROCESSES=processes)
    try:
        warm = [("files", ("warm.png", images[0].read_bytes(), "image/png"))]  # build processes start once
        for _ in range(2):
            job = httpx.post(app.url + "/api/v1/upload/", files=warm * 2, data={"model": "local/relief"}).json()["job_id"]
            while not httpx.get(f"{app.url}/api/v1/status/tasks/{job}").json()["finished"]:
                time.sleep(0.05)
        jobs, started, own_cpu = [], time.time(), time.process_time()
        ticks, (app_cpu, build_cpu) = machine_ticks(), process_cpu(app.pid)
        with httpx.Client(base_url=app.url, timeout=120) as client:
            for start in range(0, len(images), 25):  # jobs of at most 25 photos, all queued at once
                files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images[start:start + 25]]
                jobs.append(client.post("/api/v1/upload/", files=files, data={"model": "local/relief"}).json()["job_id"])
            # The end is read from the items' own finished_at, so this client looks seldom and
            # takes next to no CPU from the builds it measures.
            while True:
                statuses = [client.get(f"/api/v1/status/tasks/{j}").json() for j in jobs]
                if all(status["finished"] for status in statuses):
                    break
                time.sleep(0.5)
        (total, idle), (app_after, build_after) = machine_ticks(), process_cpu(app.pid)
        took = max(item["finished_at"] for status in statuses for item in status["items"]) - started
        spent = {"app_cpu_s": round(app_after - app_cpu, 2), "build_processes_cpu_s": round(build_after - build_cpu, 2),
                 "bench_client_cpu_s": round(time.process_time() - own_cpu, 2),
                 "machine_idle": round((idle - ticks[1]) / max(1, total - ticks[0]), 3)}
        return took, [status["state"] for status in statuses], spent
    finally:
        app.stop()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count, size = (6, (320, 240)) if args.quick else (100, (640, 480))
    cores = os.cpu_count() or 1
    rows = []
    with temp_dir("i2m-bench-p8-") as tmp:
        images = distinct_images(tmp / "in", count, size=size)
        floor = cpu_floor(images, cores)

        def row(label: str, took: float, succeeded: bool, spent: dict) -> dict:
            return {"builds_in": label, "images": count, "cores": cores, "cpu_floor_s": round(floor, 2),
                    "took_s": round(took, 2), "x_floor": round(took / floor, 2), "target_x": 1.3,
                    "met": took <= 1.3 * floor and succeeded, **spent}

        took, cpu = plain_pool(images, cores)
        rows.append(row("plain script: a process pool, no app", took, True,
                        {"app_cpu_s": 0, "build_processes_cpu_s": round(cpu, 2), "bench_client_cpu_s": 0,
                         "machine_idle": None}))
        for label, processes in (("build processes (default)", ""), ("worker threads", "0")):
            took, states, spent = run_app(tmp, images, processes)
            rows.append(row(label, took, set(states) == {"succeeded"}, spent))
    report("P8-offline", f"P8 offline throughput: {count} photos, {cores} cores", list(rows[0]), rows, args.quick)


if __name__ == "__main__":
    main()

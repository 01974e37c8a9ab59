"""What every benchmark needs: start the real app and its helpers on 127.0.0.1, read a
process's memory and CPU from /proc, make images, and print a table plus one JSON line.

Each script stops everything it starts, also when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakefal import FakeFal, patch_fal_client, sample_glb, sample_png  # noqa: E402
from tests.netutil import free_port, private_redis_server, stop_process  # noqa: E402


def parse_args(description: str, extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--runs", type=int, default=None, help="repetitions (median is reported)")
    for flag, options in extra:
        parser.add_argument(flag, **options)
    return parser.parse_args()


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


# --- processes --------------------------------------------------------------------------
class AppProcess:
    """`python app.py` in its own process (fal-client pointed at the fake FAL when given)."""

    def __init__(self, data_dir: Path, fal_url: str | None = None, redis_url: str = "", **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = dict(os.environ)
        environment.update({
            "DATA_DIR": str(data_dir), "PORT": str(self.port), "REDIS_URL": redis_url,
            "FAL_KEY": "bench-key" if fal_url else "", "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING",
        })
        if fal_url:
            environment["I2M_TEST_FAKE_FAL_URL"] = fal_url
        environment.pop("GRADIO_SERVER_PORT", None)
        environment.update(env)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "app_process.py")], env=environment,
                                     cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.url + "/health")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)


class ConsumerProcess:
    """A separate `huey_consumer` (the Redis mode's worker machine), started and ready: its
    workers are waiting on the queue, so no figure includes a consumer still importing."""

    def __init__(self, data_dir: Path, redis_url: str, fal_url: str | None, workers: int = 25, **extra: str):
        env = dict(os.environ)
        env.update({"DATA_DIR": str(data_dir), "REDIS_URL": redis_url, "FAL_KEY": "bench-key",
                    "NO_PROXY": "127.0.0.1,localhost", "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"})
        env.update(extra)
        if fal_url:
            env["I2M_TEST_FAKE_FAL_URL"] = fal_url
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "consumer_process.py"), "-w", str(workers), "-k", "thread", "-q"],
            env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(redis_url, workers)

    def _wait_ready(self, redis_url: str, workers: int, timeout: float = 60.0) -> None:
        """Idle huey workers block in BZPOPMIN on the queue: wait until this many more do."""
        import redis

        client = redis.Redis.from_url(redis_url)
        waiting = lambda: sum(1 for c in client.client_list() if c.get("cmd") == "bzpopmin")  # noqa: E731
        before = waiting()
        deadline = time.monotonic() + timeout
        while waiting() < before + workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the huey consumer did not start")
            time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    with private_redis_server(binary) as url:
        yield url


@contextmanager
def fake_fal(queue_seconds: float = 0.0, run_seconds: float = 0.0) -> Iterator[FakeFal]:
    sample_glb(), sample_png()  # the fake makes its result files once: not part of any figure
    fake = FakeFal(queue_seconds, run_seconds).start()
    undo = patch_fal_client(fake.base_url)
    try:
        yield fake
    finally:
        undo()
        fake.stop()


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- /proc readings ---------------------------------------------------------------------
def proc_status_kb(pid: int, field: str) -> int:
    """VmRSS, VmHWM... of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def reset_peak_rss(pid: int) -> bool:
    """Linux 4.0+: writing 5 to clear_refs resets VmHWM, so a peak is measured from now."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- inputs -----------------------------------------------------------------------------
def distinct_images(directory: Path, count: int, size: tuple[int, int] = (256, 192)) -> list[Path]:
    """Images that differ from each other (so the fake counts one submit per input)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        rng = np.random.default_rng(n)
        img = np.full((size[1], size[0], 3), 245, np.uint8)
        h, w = size[1], size[0]
        img[h // 5: 4 * h // 5, w // 4: 3 * w // 4] = rng.integers(0, 200, 3)
        img[h // 2, : n + 1] = 0
        path = directory / f"object{n:02d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


# --- reporting --------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = proc_status_kb_meminfo()
    except OSError:
        mem_kb = 0
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 1048576, 1),
            "python": platform.python_version(), "yardstick_s": yardstick()}


def yardstick() -> float:
    """Seconds for a fixed pure-Python loop (best of 3): how fast this machine's core is
    today, so figures from different machines (or noisy neighbours) can be compared.
    0.066 s on the 2-core AMD EPYC VM where docs/benchmarks.md's issue 13 figures were taken."""
    best = float("inf")
    for _ in range(3):
        start, total = time.perf_counter(), 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return round(best, 3)


def proc_status_kb_meminfo() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), p)) if values else float("nan")


def report(benchmark: str, title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]],
           quick: bool, **extra: Any) -> None:
    """A readable table, then exactly one JSON line with every figure."""
    print(title)
    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(fmt(row.get(c)).rjust(w) for c, w in zip(columns, widths)))
    record = {"benchmark": benchmark, "quick": quick, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "results": list(rows), **extra}
    print(json.dumps(record))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)

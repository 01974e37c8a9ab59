"""Load test: locust (`locustfile.py`) headless against a private app with the fake FAL.

Starts the fake FAL server (in this process) and `python app.py` on 127.0.0.1, runs locust as
a subprocess for a fixed time and user count, waits for every job in the app's store to end,
prints locust's figures (read from its --json-file) as a table and one JSON line, and stops
what it started.
Exits 1 when a request or journey failed or a job did not end `succeeded`.

Page visitors use the offline model (`local/relief`, CPU work in the app), script users a FAL
model through the fake FAL (`fal-ai/trellis`, fake latency --fal-queue + --fal-run seconds).
Not named bench_*.py: the test suite runs it as tests/test_locust.py, not with --quick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, AppProcess, fake_fal, parse_args, report, temp_dir
from image2model.jobs.sqlite_store import SqliteJobStore

LOCUSTFILE = ROOT / "locustfile.py"


def run_locust(url: str, out: Path, users: int, spawn_rate: float, seconds: int, page_model: str,
               script_model: str) -> int:
    """locust headless in its own process (it monkeypatches with gevent). Its figures go to
    locust.json (with --json-file locust prints no summary table: ours replaces it); not --csv,
    which locust would write after the JSON export has reset the stats."""
    env = dict(os.environ, I2M_LOAD_PAGE_MODEL=page_model, I2M_LOAD_SCRIPT_MODEL=script_model,
               NO_PROXY="127.0.0.1,localhost")
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
               "-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds}s", "--stop-timeout", "60",
               "--only-summary", "--loglevel", "WARNING", "--json-file", str(out / "locust"),
               "--html", str(out / "locust.html")]
    sys.stdout.flush()
    return subprocess.run(command, check=False, cwd=ROOT, env=env, timeout=seconds + 180).returncode


def jobs_after(app: AppProcess, data_dir: Path, timeout: float = 120.0) -> dict[str, int]:
    """Every job in the app's store, by state, once all have ended (or the timeout passed)."""
    store = SqliteJobStore(data_dir / "jobs.db", retention_seconds=86400)
    deadline = time.monotonic() + timeout
    while True:
        states: dict[str, int] = {}
        for job_id in store.all_job_ids():
            answer = httpx.get(f"{app.url}/api/v1/status/tasks/{job_id}", timeout=30).json()
            state = answer["state"] if answer["finished"] else "unfinished"
            states[state] = states.get(state, 0) + 1
        if "unfinished" not in states or time.monotonic() > deadline:
            return states
        time.sleep(1.0)


def percentile(buckets: dict[str, int], p: float) -> float | None:
    """From locust's response-time histogram ({ms: count}, rounded as locust rounds them)."""
    total = sum(buckets.values())
    if not total:
        return None
    seen = 0
    for ms in sorted(buckets, key=float):
        seen += buckets[ms]
        if seen >= total * p / 100:
            return float(ms)
    return None


def rows_from(entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per locust entry, and the HTTP totals (JOURNEY entries are not HTTP requests)."""
    start = min(e["start_time"] for e in entries)
    end = max(e["last_request_timestamp"] or e["start_time"] for e in entries)
    span = max(end - start, 1e-9)
    rows, merged = [], {}
    for e in sorted(entries, key=lambda e: (e["method"] == "JOURNEY", e["name"])):
        rows.append({"type": e["method"], "name": e["name"], "requests": e["num_requests"],
                     "failures": e["num_failures"], "req_s": e["num_requests"] / span,
                     "p50_ms": percentile(e["response_times"], 50), "p95_ms": percentile(e["response_times"], 95),
                     "max_ms": e["max_response_time"]})
        if e["method"] != "JOURNEY":
            for ms, count in e["response_times"].items():
                merged[ms] = merged.get(ms, 0) + count
    http = [r for r in rows if r["type"] != "JOURNEY"]
    totals = {"requests": sum(r["requests"] for r in http), "failures": sum(r["failures"] for r in http),
              "req_s": sum(r["requests"] for r in http) / span, "p50_ms": percentile(merged, 50),
              "p95_ms": percentile(merged, 95), "seconds": span,
              "journeys": sum(r["requests"] for r in rows if r["type"] == "JOURNEY"),
              "journey_failures": sum(r["failures"] for r in rows if r["type"] == "JOURNEY")}
    rows.append({"type": "", "name": "all HTTP requests", **{k: totals[k] for k in ("requests", "failures", "req_s",
                                                                                   "p50_ms", "p95_ms")}})
    return rows, totals


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], [
        ("--users", {"type": int, "default": 20, "help": "simultaneous users (page : script : watcher = 1 : 1 : 2)"}),
        ("--spawn-rate", {"type": float, "default": 5.0, "help": "users started per second"}),
        ("--time", {"type": int, "default": 60, "help": "seconds of load (then running journeys finish)"}),
        ("--fal-queue", {"type": float, "default": 0.2, "help": "fake FAL: seconds in its queue"}),
        ("--fal-run", {"type": float, "default": 1.0, "help": "fake FAL: seconds running"}),
        ("--page-model", {"default": "local/relief"}),
        ("--script-model", {"default": "fal-ai/trellis"}),
        ("--out", {"default": "", "help": "keep locust's JSON, CSV and HTML report in this directory"}),
    ])
    users, seconds = (6, 10) if args.quick else (args.users, args.time)
    with temp_dir("i2m-bench-load-") as tmp, fake_fal(args.fal_queue, args.fal_run) as fake:
        out = Path(args.out).resolve() if args.out else tmp / "locust"
        out.mkdir(parents=True, exist_ok=True)
        # Its own Gradio temp dir: Gradio stores uploads at <dir>/<content hash>/<name>, and any
        # other Gradio process sharing the default /tmp/gradio deletes those files when it stops,
        # failing this app's /generate calls of the same photos (found by this load test).
        app = AppProcess(tmp / "data", fake.base_url, RATE_LIMIT_API="off", RATE_LIMIT_UPLOAD="off",
                         FAL_IMAGES_PER_HOUR="0", GRADIO_TEMP_DIR=str(tmp / "gradio"))
        try:
            code = run_locust(app.url, out, users, args.spawn_rate, seconds, args.page_model, args.script_model)
            jobs = jobs_after(app, tmp / "data")
        finally:
            app.stop()
        entries = json.loads((out / "locust.json").read_text())
    rows, totals = rows_from(entries)
    report("load", f"Load test: {users} users for {seconds} s (locust exit code {code})",
           ["type", "name", "requests", "failures", "req_s", "p50_ms", "p95_ms", "max_ms"], rows, args.quick,
           users=users, spawn_rate=args.spawn_rate, seconds=seconds, locust_exit_code=code, totals=totals,
           jobs=jobs, fake_fal={"queue_seconds": args.fal_queue, "run_seconds": args.fal_run},
           models={"page": args.page_model, "script": args.script_model}, out=str(out) if args.out else None)
    bad_jobs = sum(n for state, n in jobs.items() if state != "succeeded")
    sys.exit(1 if code or totals["failures"] or totals["journey_failures"] or bad_jobs or not jobs else 0)


if __name__ == "__main__":
    main()

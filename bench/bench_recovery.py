"""Recovery: how long after a crash or an outage until the job is done, against the target
"job done within L + 15 s of the restart" (L: one FAL request's time, queue + run).

Scenarios, each on real processes with the fake FAL:
- embedded app SIGKILLed while FAL runs the requests, then started again;
- embedded app SIGKILLed while FAL holds the submits unanswered (the paid-twice window), then
  started again: the requests are found in FAL's history;
- Redis mode, one of two consumers SIGKILLed while it holds the items: the other takes over;
- Redis mode, one of two consumers frozen (SIGSTOP, like a machine cut off): the other takes
  over once its liveness lapses;
- Redis stopped for 3 s (with its data on disk) and started again: items ride it out.
Every row also checks FAL saw one submit per input.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from bench.common import (AppProcess, ConsumerProcess, distinct_images, fake_fal, parse_args, report,
                          temp_dir)
from tests.netutil import free_port, stop_process, wait_for_port

TARGET_EXTRA_S = 15.0


def upload(url: str, images: list[Path]) -> str:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
    response = httpx.post(url + "/api/v1/upload/", files=files, data={"model": "fal-ai/trellis"}, timeout=120)
    response.raise_for_status()
    return response.json()["job_id"]


def status(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/api/v1/status/tasks/{job_id}", timeout=30).json()


def wait(predicate, timeout: float = 300.0, interval: float = 0.05):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("recovery did not finish in time")


def finished(url: str, job_id: str) -> dict | None:
    body = status(url, job_id)
    if not body["finished"]:
        return None
    if body["state"] != "succeeded":
        raise RuntimeError(f"job ended {body['state']}: {[i['error'] for i in body['items']]}")
    return body


def row(scenario: str, latency: float, recovered_s: float, fake, count: int) -> dict:  # noqa: ANN001
    counts = list(fake.submit_counts_by_sha256.values())
    return {"scenario": scenario, "images": count, "L_s": latency, "done_after_s": round(recovered_s, 2),
            "target_s": latency + TARGET_EXTRA_S, "met": recovered_s <= latency + TARGET_EXTRA_S,
            "one_submit_per_input": len(counts) == count and set(counts) == {1}}


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def embedded_kill(count: int, queue_s: float, run_s: float, in_submit: bool) -> dict:
    env = {"REAP_SECONDS": "1", "FAL_RECONCILE_SECONDS": "60", "RATE_LIMIT_API": "off", "RATE_LIMIT_UPLOAD": "off"}
    with temp_dir("i2m-bench-rec-") as tmp, fake_fal(queue_s, run_s) as fake:
        env["FAL_API_URL"] = fake.platform_url
        images = distinct_images(tmp / "in", count)
        if in_submit:
            fake.lose_submit_answers("hang", times=count, hang_seconds=120)
        app = AppProcess(tmp / "data", fake.base_url, **env)
        job_id = upload(app.url, images)
        if in_submit:
            wait(lambda: len(fake.submits) == count)
        else:
            wait(lambda: all(i["fal_request_id"] for i in status(app.url, job_id)["items"]))
            time.sleep(queue_s + run_s / 3)  # mid-run
        kill(app.proc)
        started = time.monotonic()
        again = AppProcess(tmp / "data", fake.base_url, **env)
        try:
            wait(lambda: finished(again.url, job_id))
            took = time.monotonic() - started
        finally:
            again.stop()
        name = "embedded: SIGKILL in the submit window, restart" if in_submit else "embedded: SIGKILL mid-run, restart"
        return row(name, queue_s + run_s, took, fake, count)


def persistent_redis(port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "yes", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc


def redis_scenario(scenario: str, count: int, queue_s: float, run_s: float, ttl_s: float) -> dict:
    env = {"REAP_SECONDS": "1", "WORKER_TTL_SECONDS": f"{ttl_s:g}", "RATE_LIMIT_API": "off", "RATE_LIMIT_UPLOAD": "off",
           "EMBEDDED_WORKER": "false"}
    with temp_dir("i2m-bench-rec-") as tmp, fake_fal(queue_s, run_s) as fake:
        env["FAL_API_URL"] = fake.platform_url
        worker_env = {k: env[k] for k in ("REAP_SECONDS", "WORKER_TTL_SECONDS", "FAL_API_URL")}
        port = free_port()
        server = persistent_redis(port, tmp)
        url = f"redis://127.0.0.1:{port}/0"
        images = distinct_images(tmp / "in", count)
        app = AppProcess(tmp / "data", fake.base_url, redis_url=url, **env)
        first = ConsumerProcess(tmp / "data", url, fake.base_url, workers=count, **worker_env)
        second: ConsumerProcess | None = None
        try:
            job_id = upload(app.url, images)  # the first consumer takes them all
            wait(lambda: all(i["fal_request_id"] for i in status(app.url, job_id)["items"]))
            second = ConsumerProcess(tmp / "data", url, fake.base_url, workers=count, **worker_env)
            if finished(app.url, job_id):
                raise RuntimeError("the job ended before the fault: make L longer")
            if scenario == "redis_restart":
                stop_process(server)
                time.sleep(3.0)
                server = persistent_redis(port, tmp)
                name = "redis: Redis down 3 s, then back"
            else:
                if scenario == "consumer_kill":
                    kill(first.proc)
                    name = "redis: SIGKILL one of two consumers"
                else:
                    first.proc.send_signal(signal.SIGSTOP)
                    name = "redis: freeze one of two consumers (SIGSTOP)"
            started = time.monotonic()
            wait(lambda: finished(app.url, job_id))
            took = time.monotonic() - started
        finally:
            if first.proc.poll() is None:
                first.proc.send_signal(signal.SIGCONT)
                kill(first.proc)
            if second is not None:
                second.stop()
            app.stop()
            stop_process(server)
        return row(name, queue_s + run_s, took, fake, count)


def offline_cancel(count: int, size: tuple[int, int]) -> dict:
    """Cancel an offline job while its items run on the CPU: how long until every item ended."""
    env = {"RATE_LIMIT_API": "off", "RATE_LIMIT_UPLOAD": "off"}
    with temp_dir("i2m-bench-cancel-") as tmp:
        images = distinct_images(tmp / "in", count, size=size)
        app = AppProcess(tmp / "data", None, **env)
        try:
            files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images]
            job_id = httpx.post(app.url + "/api/v1/upload/", files=files, data={"model": "local/relief"},
                                timeout=120).json()["job_id"]
            wait(lambda: any(i["state"] == "running" for i in status(app.url, job_id)["items"]), interval=0.01)
            asked = time.time()
            httpx.post(f"{app.url}/api/v1/jobs/{job_id}/cancel", timeout=30)
            body = wait(lambda: status(app.url, job_id) if status(app.url, job_id)["finished"] else None)
            ended = max(i["finished_at"] for i in body["items"])
            late = [i for i in body["items"] if i["state"] == "succeeded" and i["finished_at"] >= asked]
        finally:
            app.stop()
    return {"scenario": "offline: cancel while items run on the CPU", "images": count, "L_s": None,
            "done_after_s": round(ended - asked, 2), "target_s": 1.0, "met": ended - asked <= 1.0 and not late,
            "one_submit_per_input": None}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    # quick: shorter FAL requests and worker liveness, so the suite's run stays short
    count, queue_s, run_s, ttl_s = (3, 0.1, 4.0, 4.0) if args.quick else (10, 0.5, 15.0, 10.0)
    # quick runs one scenario of each kind (the suite's slowest script took 105 s on a slow day
    # with all six); the faults it leaves out are tested in test_crash_recovery.py,
    # test_fal_submit.py and test_recovery.py
    rows = [offline_cancel(count, (1600, 1200) if args.quick else (3000, 2400)),
            embedded_kill(count, queue_s, run_s, in_submit=False)]
    if not args.quick:
        rows.append(embedded_kill(count, queue_s, run_s, in_submit=True))
    if shutil.which("redis-server"):
        faults = ("consumer_kill",) if args.quick else ("consumer_kill", "consumer_freeze", "redis_restart")
        rows += [redis_scenario(s, count, queue_s, run_s, ttl_s) for s in faults]
    report("recovery", "Recovery: from the restart (or the fault) to the job's end, against L + 15 s",
           ["scenario", "images", "L_s", "done_after_s", "target_s", "met", "one_submit_per_input"], rows,
           args.quick)


if __name__ == "__main__":
    main()

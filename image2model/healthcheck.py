"""`python -m image2model.healthcheck [web|worker]`: the Docker HEALTHCHECK, fit to the role.

One image runs either the web app or a `huey_consumer`. Probing HTTP in a worker container
would call it unhealthy for ever, so:

- web: `GET http://127.0.0.1:$PORT/health` answers 200;
- worker: a worker process on this host said it is alive within `WORKER_TTL_SECONDS` (every
  consumer writes a liveness record to the job store; image2model/worker/housekeeping.py).

Without an argument the role is read from what the container runs (its process 1's command
line, also under `docker run --init` or `sh -c`). Exit status 0 is healthy, 1 unhealthy; the
one line printed says why (`docker inspect` shows it).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import httpx

from image2model.config import Settings, get_settings
from image2model.jobs.store import JobStore
from image2model.worker.liveness import known_dead

ROLES = ("web", "worker")
WORKER_MARKS = (b"huey_consumer", b"image2model.worker.main")


def detect_role(cmdline: Path = Path("/proc/1/cmdline")) -> str:
    """`worker` when the container's main process runs a huey consumer, else `web`."""
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return "web"
    return "worker" if any(mark in arg for arg in args for mark in WORKER_MARKS) else "web"


def check_web(port: int, timeout: float = 4.0) -> tuple[bool, str]:
    """The web process answers its liveness route (no proxy: this is the container itself)."""
    url = f"http://127.0.0.1:{port}/health"
    try:
        response = httpx.get(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    return response.status_code == 200, f"{url}: HTTP {response.status_code}"


def check_worker(store: JobStore, host: str | None = None, now: float | None = None) -> tuple[bool, str]:
    """A worker process on `host` holds a liveness record that has not lapsed (and, on this
    host, its pid still runs: a worker that crashed a second ago is not alive)."""
    host = host or socket.gethostname()
    try:
        alive = store.alive_processes(now or time.time())
    except Exception as exc:  # noqa: BLE001 - a store that cannot answer means no work gets done
        return False, f"job store unreachable: {type(exc).__name__}: {exc}"
    mine = sorted(p for p, info in alive.items()
                  if (info.get("host") or p.split(":", 1)[0]) == host and not known_dead(p))
    if not mine:
        return False, f"no live worker process on {host} (the store lists {len(alive)} alive in all)"
    return True, f"alive: {', '.join(mine)}"


def open_store(settings: Settings) -> JobStore:
    """The store the workers write to, as `runtime.make_store` opens it, without importing the
    whole runtime (2 s of CPU on every probe; this takes 0.4 s)."""
    if settings.use_redis:
        from image2model.jobs.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_url, settings.retention_seconds)
    from image2model.jobs.sqlite_store import SqliteJobStore

    return SqliteJobStore(settings.data_dir / "jobs.db", settings.retention_seconds)


def check(role: str, settings: Settings) -> tuple[bool, str]:
    if role == "web":
        return check_web(settings.port)
    store = open_store(settings)
    try:
        return check_worker(store)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    role = args[0] if args else detect_role()
    if role not in ROLES:
        print(f"usage: python -m image2model.healthcheck [{'|'.join(ROLES)}]", file=sys.stderr)
        return 1  # Docker reserves exit status 2
    healthy, why = check(role, get_settings())
    print(f"{role} {'healthy' if healthy else 'unhealthy'}: {why}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

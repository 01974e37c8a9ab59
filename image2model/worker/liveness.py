"""Who is working: one id per worker process, one name per item claim, and how a reaper tells
a dead owner from a live one without waiting for a long heartbeat timeout.

A process id is `host:pid:nonce`; an item's worker name is `<process id>/<claim>`. Every
process that runs items says it is alive in the job store every few seconds (see
`housekeeping.py`); an item whose process stopped saying so, or whose process is known dead on
this very host, is taken back at once.
"""

from __future__ import annotations

import os
import socket
import uuid

_process: tuple[int, str] | None = None  # (pid, id): a forked child gets its own id


def process_id() -> str:
    global _process
    pid = os.getpid()
    if _process is None or _process[0] != pid:
        _process = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
    return _process[1]


def worker_name() -> str:
    """A fresh name for one claim of one item by this process."""
    return f"{process_id()}/{uuid.uuid4().hex[:8]}"


def owner_process(worker: str | None) -> str | None:
    """The process behind an item's worker name (None for names without one)."""
    if not worker or "/" not in worker:
        return None
    return worker.rsplit("/", 1)[0]


def known_dead(process: str) -> bool:
    """True when `process` ran on this host and is certainly gone: its pid is not running, or
    the pid is ours but the id is not (a restarted container is pid 1 every time)."""
    host, _, rest = process.partition(":")
    pid_text, _, _ = rest.partition(":")
    if not pid_text.isascii() or not pid_text.isdigit():
        return False
    if host == socket.gethostname() and int(pid_text) == os.getpid():
        return process != process_id()
    return pid_gone(host, int(pid_text))


def pid_gone_here(pid: int) -> bool:
    """`pid_gone` for a process of this host (a temp file's writer, storage.abandoned)."""
    return pid_gone(socket.gethostname(), pid)


def pid_gone(host: str, pid: int) -> bool:
    """True when `pid` on `host` is certainly not running (only this host can tell)."""
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

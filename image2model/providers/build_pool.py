"""Offline builds in their own processes, one per core.

In threads of the web process the builds ran at 1.8 x their CPU time on 2 cores (the GIL was
held 41 % of the time) and took the web server's CPU with them. Here each build runs in a
long-lived `python -m image2model.providers.build_pool` of its own (a plain child process:
multiprocessing's spawn and forkserver would import the parent's main script, app.py and so
Gradio, into every one). A process takes one build at a time over a pipe and sends back
progress and the result; the worker thread that asked only waits, and
checks for a stop. A build that must stop (cancel, deadline, shutdown) kills its process; a
fresh one takes its place at the next build.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from image2model.children import child_env
from image2model.errors import AppError
from image2model.providers.base import ItemFailed

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.25  # how often a waiting worker thread looks for a cancel or a shutdown
IDLE_TRIM_SECONDS = 1.0  # a build process idle this long gives its free memory back


class BuildCrashed(Exception):
    """The generator raised in the build process (its message and traceback come along)."""


@dataclass(frozen=True)
class Built:
    """What a build sends back. Not the generator's ReliefResult: unpickling that in the web
    process imported the generator there, OpenCV and SciPy with it."""

    glb: bytes
    cutout: bytes  # "what the model saw": PNG, the photo with the background made transparent
    mask_source: str
    shape: str
    separated: bool  # False when nothing stood out and the whole photo became a plate


def build(path: str | Path, params: dict[str, Any], progress: Callable[[float, str], None]) -> Built:
    """One build in the calling process. Imported here, not at the top: the generator loads
    OpenCV and SciPy, which a web process that only lists the offline model never needs (see
    providers/relief/__init__.py)."""
    from image2model.providers.relief.loading import load_image
    from image2model.providers.relief.pipeline import generate_relief

    result = generate_relief(load_image(path), progress=progress, **params)
    return Built(result.glb, result.cutout, result.mask_source, result.shape, result.separated)


def serve(requests: Connection, answers: Connection) -> None:
    """A build process: build what the pipe asks for, one at a time, until it closes. Its
    memory goes back to the system once it is idle, not after every build: a trim between
    two builds cost the next one 10-18 % more CPU in page faults (12 photos of 640x480, one
    after another, with and without)."""
    from image2model.memory import release_free_memory

    while True:
        try:
            if not requests.poll(IDLE_TRIM_SECONDS):
                release_free_memory()
            path, params = requests.recv()
        except (EOFError, OSError):
            return
        try:
            result = build(path, params, lambda f, stage: answers.send(("progress", f, stage)))
            answers.send(("done", result))
        except AppError as exc:  # a photo that cannot be read: its words go to the item
            answers.send(("failed", exc.code, exc.message))
        except Exception as exc:  # noqa: BLE001 - told to the item, the process lives on
            answers.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class BuildProcess:
    def __init__(self) -> None:
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, str(to_child), str(from_child)],
                                     pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL, env=child_env())
        os.close(to_child)
        os.close(from_child)
        self.reader = Connection(to_parent, writable=False)
        self.writer = Connection(from_parent, readable=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.reader.close()
        self.writer.close()


class BuildPool:
    """At most `size` build processes, started on first use (a web process that never builds
    offline never pays for them). A process ends by itself when its parent does (its pipe
    closes)."""

    def __init__(self, size: int):
        self.size = size
        self._idle: list[BuildProcess] = []
        self._busy: set[BuildProcess] = set()
        self._lock = threading.Lock()

    def build(self, path: Path, params: dict[str, Any], progress: Callable[[float, str], None],
              check_stop: Callable[[], None]) -> Built:
        """The generator's result for the image at `path`; raises what `check_stop` raises
        (the build is killed), ItemFailed when its process died, BuildCrashed when it raised."""
        process = self._take()
        reusable = False
        try:
            process.writer.send((str(path), params))
            while True:
                check_stop()
                if not process.reader.poll(CHECK_SECONDS):
                    continue
                kind, *rest = process.reader.recv()
                if kind == "progress":
                    progress(*rest)
                    continue
                reusable = True
                if kind == "done":
                    return rest[0]
                if kind == "failed":
                    raise ItemFailed(*rest)
                log.warning("offline build failed: %s", rest[0])
                raise BuildCrashed(f"{rest[0]}\n--- in the build process:\n{rest[1]}")
        except (EOFError, OSError) as exc:  # killed (the OOM killer, a signal) mid-build
            raise ItemFailed("offline_build_lost", "The process building this model stopped before it was done.",
                             retryable=True) from exc
        finally:
            self._give_back(process, reusable)

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in [*self._idle, *self._busy]]

    def busy_pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._busy]

    def close(self) -> None:
        with self._lock:
            processes, self._idle = [*self._idle, *self._busy], []
            self._busy = set()
        for process in processes:
            process.kill()

    def _take(self) -> BuildProcess:
        with self._lock:
            process = self._idle.pop() if self._idle else None
            if process is None:
                process = BuildProcess()
            self._busy.add(process)
            return process

    def _give_back(self, process: BuildProcess, reusable: bool) -> None:
        with self._lock:
            self._busy.discard(process)
            keep = reusable and process.alive() and len(self._idle) < self.size
            if keep:
                self._idle.append(process)
        if not keep:
            process.kill()


_shared: dict[int, BuildPool] = {}
_shared_lock = threading.Lock()


def shared_pool(size: int) -> BuildPool:
    """The process's pool: like the CPU slots, the cores are the process's, not one runtime's
    (a test process builds many runtimes, and each paid a new process's imports)."""
    with _shared_lock:
        if size not in _shared:
            _shared[size] = BuildPool(size)
        return _shared[size]


if __name__ == "__main__":
    # Served by the module under its own name, so that what it pickles (Built) is
    # image2model.providers.build_pool.Built to the parent, not __main__.Built.
    from image2model.providers import build_pool

    build_pool.serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))

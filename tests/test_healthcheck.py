"""The container health check fits the role: the web's /health for the web, a fresh liveness
record of a worker on this host for a `huey_consumer` (real app, real stores, real consumer)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from image2model.config import get_settings
from image2model.healthcheck import check_web, check_worker, detect_role, main
from image2model.ops import queue_view
from image2model.runtime import Runtime
from tests.conftest import ROOT, free_port, make_settings, start_consumer_process
from tests.engine_helpers import wait_until

HOST = socket.gethostname()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_web_role_probes_the_real_app(live_server_factory, backend, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    server = live_server_factory()
    healthy, why = check_web(server.port)
    assert healthy, why
    monkeypatch.setenv("PORT", str(server.port))
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["web"]) == 0
        server.stop()
        assert main(["web"]) == 1, "nothing answers any more"
    finally:
        get_settings.cache_clear()
    healthy, why = check_web(free_port())
    assert not healthy and "127.0.0.1" in why


def test_worker_role_reads_this_hosts_liveness_records(settings_factory) -> None:  # noqa: ANN001
    runtime = Runtime(settings_factory())  # a real store (SQLite and Redis), no consumer
    store = runtime.store
    try:
        now = time.time()
        healthy, why = check_worker(store, now=now)
        assert not healthy and "no live worker process" in why
        store.mark_alive("elsewhere:12:abcd", now, 10, {"host": "elsewhere", "pid": 12})
        assert not check_worker(store, now=now)[0], "another machine's worker does not make this one healthy"
        store.mark_alive(f"{HOST}:99999:dead", now - 60, 10, {"host": HOST, "pid": 99999})
        assert not check_worker(store, now=now)[0], "a record that lapsed is a dead worker"
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        store.mark_alive(f"{HOST}:{gone.pid}:crashed", now, 10, {"host": HOST, "pid": gone.pid})
        assert not check_worker(store, now=now)[0], "its record is fresh, but its process is gone"
        live = f"{HOST}:{os.getppid()}:live"  # a process that runs (this test's parent)
        store.mark_alive(live, now, 10, {"host": HOST, "pid": os.getppid()})
        healthy, why = check_worker(store, now=now)
        assert healthy and live in why and "crashed" not in why
        assert not check_worker(store, now=now + 11)[0], "silent past its TTL"
        store.mark_gone(live)
        assert not check_worker(store, now=now)[0], "a worker that stopped cleanly"
    finally:
        runtime.close()


def test_worker_role_with_a_real_consumer_process(tmp_path: Path) -> None:
    """`python -m image2model.healthcheck worker` as Docker runs it, beside a real huey_consumer."""
    settings = make_settings(tmp_path / "data")
    env = {**os.environ, "DATA_DIR": str(settings.data_dir), "REDIS_URL": "", "PYTHONPATH": str(ROOT),
           "WORKER_TTL_SECONDS": str(settings.worker_ttl_seconds)}

    def probe() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "image2model.healthcheck", "worker"], env=env, cwd=str(ROOT),
                              capture_output=True, text=True, timeout=30, check=False)

    before = probe()
    assert before.returncode == 1 and "unhealthy" in before.stdout
    consumer = start_consumer_process(settings, None, workers=3)
    try:
        wait_until(lambda: probe().returncode == 0, timeout=30)
        assert "worker healthy: alive" in probe().stdout
        runtime = Runtime(settings)
        try:  # the threads it has (-w 3), not the WORKERS setting (25 by default)
            assert [w.threads for w in queue_view(runtime.store, settings).workers] == [3]
        finally:
            runtime.close()
    finally:
        consumer.send_signal(signal.SIGINT)
        consumer.wait(30)
    after = probe()  # its pid is gone (its record lapses soon after)
    assert after.returncode == 1, after.stdout


@pytest.mark.parametrize("cmdline, role", [
    (b"huey_consumer\0image2model.worker.main.huey\0-w\x0025\0", "worker"),
    (b"/sbin/docker-init\0--\0huey_consumer\0image2model.worker.main.huey\0", "worker"),  # docker run --init
    (b"/bin/sh\0-c\0huey_consumer image2model.worker.main.huey -w 25\0", "worker"),
    (b"python\0app.py\0", "web"),
])
def test_the_role_is_read_from_the_containers_main_process(tmp_path: Path, cmdline: bytes, role: str) -> None:
    path = tmp_path / "cmdline"
    path.write_bytes(cmdline)
    assert detect_role(path) == role
    assert detect_role(tmp_path / "missing") == "web"


def test_an_unknown_role_is_refused() -> None:
    assert main(["database"]) == 1

"""Shared fixtures: real Redis servers, real huey consumers, the fake FAL server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from image2model.config import Settings
from image2model.runtime import Runtime
from tests.fakefal import FakeFal, patch_fal_client
from tests.netutil import free_port, private_redis_server, wait_for_port  # noqa: F401 - re-exported

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's chromium driven by Playwright (a browser download cannot work here)."""
    if not CHROMIUM.exists():
        print(f"SKIP: {CHROMIUM} not found (apt-get install chromium); browser tests are skipped")
        pytest.skip(f"{CHROMIUM} not found")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A private redis-server on a free port (clean state, no clash with the machine's)."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("SKIP: redis-server binary not found; Redis-mode tests are skipped")
        pytest.skip("redis-server binary not found")
    with private_redis_server(binary) as url:
        yield url


def _flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def fake_fal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeFal]:
    """The fake FAL server with the real fal-client pointed at it."""
    fake = FakeFal()
    fake.start()
    undo = patch_fal_client(fake.base_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("FAL_HOME_DIR", str(tmp_path / "falhome"))
    monkeypatch.setenv("FAL_API_URL", fake.platform_url)  # the Platform API's request history
    try:
        yield fake
    finally:
        undo()
        fake.stop()


def make_settings(data_dir: Path, redis_url: str = "", **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        data_dir=data_dir, redis_url=redis_url, fal_key="test-key", workers=8,
        fal_poll_seconds=0.05, heartbeat_seconds=0.3, stale_after_seconds=2.0,
        retry_base_seconds=0.05, retry_max_seconds=0.2, fal_retries=3, default_model="",
        reap_seconds=0.3, worker_ttl_seconds=1.5, fal_reconcile_seconds=3.0, fal_call_timeout_seconds=2.0,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings_factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    """Build settings for the current backend; Redis mode gets a flushed private server."""

    def build(**overrides: object) -> Settings:
        redis_url = ""
        if backend == "redis":
            redis_url = request.getfixturevalue("redis_server")
            _flush(redis_url)
        data_dir = Path(overrides.pop("data_dir", tmp_path / "data"))  # type: ignore[arg-type]
        return make_settings(data_dir, redis_url, **overrides)

    return build


@pytest.fixture
def runtime_factory(settings_factory):  # noqa: ANN001, ANN201
    """Runtimes with a real in-process huey consumer; all are closed after the test."""
    made: list[Runtime] = []

    def build(start_consumer: bool = True, **overrides: object) -> Runtime:
        runtime = Runtime(settings_factory(**overrides))
        if start_consumer:
            runtime.start_consumer()
        made.append(runtime)
        return runtime

    yield build
    for runtime in made:
        runtime.close()


def start_consumer_process(settings: Settings, fal_url: str | None, workers: int = 4) -> subprocess.Popen:
    """A real `huey_consumer` in its own process (what runs on a worker machine)."""
    env = dict(os.environ)
    env.update({
        "DATA_DIR": str(settings.data_dir), "REDIS_URL": settings.redis_url, "FAL_KEY": settings.fal_key,
        "FAL_POLL_SECONDS": str(settings.fal_poll_seconds), "HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
        "STALE_AFTER_SECONDS": str(settings.stale_after_seconds), "NO_PROXY": "127.0.0.1,localhost",
        "REAP_SECONDS": str(settings.reap_seconds), "WORKER_TTL_SECONDS": str(settings.worker_ttl_seconds),
        "FAL_RECONCILE_SECONDS": str(settings.fal_reconcile_seconds),
        "FAL_CALL_TIMEOUT_SECONDS": str(settings.fal_call_timeout_seconds),
        "PYTHONPATH": str(ROOT),
    })
    if fal_url:
        env["I2M_TEST_FAKE_FAL_URL"] = fal_url
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "consumer_process.py"), "-w", str(workers), "-k", "thread",
         "-d", "0.05", "-m", "0.2"],
        env=env, cwd=str(ROOT),
    )


@pytest.fixture
def live_server_factory(settings_factory, request: pytest.FixtureRequest):  # noqa: ANN001, ANN201
    """Start the real app on uvicorn (embedded consumer on, in both backends)."""
    from tests.live_server import LiveServer

    if "fake_fal" in request.fixturenames:
        # set the fake up first, so it is torn down last: workers still polling during the
        # servers' shutdown must keep talking to the fake, never to the real FAL hosts
        request.getfixturevalue("fake_fal")

    started: list[LiveServer] = []

    def build(**overrides: object) -> LiveServer:
        overrides.setdefault("embedded_worker", True)
        runtime = Runtime(settings_factory(**overrides))
        server = LiveServer(runtime, free_port()).start()
        started.append(server)
        return server

    yield build
    for server in started:
        server.stop()
        server.runtime.close()

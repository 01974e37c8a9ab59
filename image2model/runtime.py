"""Wire the parts together for one process: store, files, queue, tasks, service.

The web process, a `huey_consumer` and each test build a `Runtime` from settings; nothing
else constructs these parts, so every process agrees on where things live.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import cached_property

from huey import Huey

from image2model.config import Settings, get_settings
from image2model.jobs.service import JobService
from image2model.jobs.store import JobStore
from image2model.providers.base import Provider
from image2model.sealing import Sealer, server_secret
from image2model.storage import FileStore
from image2model.worker.consumer import InProcessConsumer, start_embedded_consumer, stop_embedded_consumer
from image2model.worker.housekeeping import Housekeeper
from image2model.worker.queue import DEFER_SECONDS, enqueue_items, item_priority, make_huey, pending_item_tasks
from image2model.worker.runner import ItemRunner
from image2model.worker.tasks import Tasks, register_tasks

log = logging.getLogger(__name__)


def make_store(settings: Settings) -> JobStore:
    if settings.use_redis:
        from image2model.jobs.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_url, settings.retention_seconds)
    from image2model.jobs.sqlite_store import SqliteJobStore

    return SqliteJobStore(settings.data_dir / "jobs.db", settings.retention_seconds)


def make_providers(settings: Settings) -> dict[str, Provider]:
    from image2model.providers.fal import FalProvider
    from image2model.providers.local import LocalReliefProvider

    return {"fal": FalProvider.from_settings(settings), "local": LocalReliefProvider.from_settings(settings)}


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = make_store(settings)
        self.files = FileStore(settings.data_dir)
        self.huey: Huey = make_huey(settings)
        self.runner = ItemRunner(self.store, self.files, settings, make_providers(settings), self.enqueue,
                                 pending_tasks=lambda: pending_item_tasks(self.huey),
                                 open_key=self.open_key, defer=self.defer)
        self.tasks: Tasks = register_tasks(self.huey, self.runner)
        self.consumer: InProcessConsumer | None = None
        self.housekeeper: Housekeeper | None = None
        self._housekeeping_lock = threading.Lock()
        self._metrics_served = False

    def enqueue(self, job_id: str, index: int, turn: int | None = None) -> None:
        self.enqueue_many([(job_id, index, turn)])

    def enqueue_many(self, entries: Sequence[tuple[str, int, int | None]]) -> None:
        enqueue_items(self.huey, self.tasks.run_item, entries)

    def defer(self, job_id: str, index: int, turn: int | None = None) -> None:
        self.tasks.run_item.schedule(args=(job_id, index, turn), delay=DEFER_SECONDS,
                                     priority=item_priority(index, turn))

    @cached_property
    def secret(self) -> bytes:
        """SECRET_KEY, or the deployment's stored secret (made on first use)."""
        return server_secret(self.settings, self.store)

    def seal_key(self, plain: str) -> str:
        return Sealer(self._sealing_secret()).seal(plain)

    def open_key(self, sealed: str) -> str:
        return Sealer(self._sealing_secret()).open(sealed)

    def _sealing_secret(self) -> bytes:
        """The secret users' keys are sealed with, read from the store at each use (unless
        SECRET_KEY is set): if the store lost its data, the first process to seal or open a
        key after that stores its own, and every process then agrees again, where cached
        secrets would have left a new worker unable to open what an old web process sealed."""
        if self.settings.secret_key.strip():
            return self.secret
        return self.store.shared_secret(self.secret.decode()).encode()

    @cached_property
    def service(self) -> JobService:
        return JobService(self.store, self.files, self.settings, self.enqueue_many,
                          seal=self.seal_key)

    def start_consumer(self, workers: int | None = None) -> None:
        if self.consumer is None:
            self.runner.stopping.clear()
            self.start_housekeeping(workers or self.settings.workers)
            self.consumer = start_embedded_consumer(self.huey, workers or self.settings.workers)

    def start_housekeeping(self, workers: int) -> None:
        """Liveness, reaping and cleanup for this process; the first round runs now, so
        items whose worker died with the last process are taken back before new work starts."""
        with self._housekeeping_lock:
            if self.housekeeper is None:
                self.housekeeper = Housekeeper(self.runner, self.store, self.settings, workers).start()

    def serve_worker_metrics(self) -> None:
        """A huey_consumer's own /metrics (WORKER_METRICS_PORT), started once per process."""
        port = self.settings.worker_metrics_port
        with self._housekeeping_lock:
            if port and not self._metrics_served:
                from prometheus_client import start_http_server

                start_http_server(port, addr=self.settings.worker_metrics_address)
                self._metrics_served = True
                log.info("worker metrics on http://%s:%d/metrics", self.settings.worker_metrics_address, port)

    def stop_consumer(self) -> None:
        """Stop taking tasks, hand running items back to the queue, then drain."""
        if self.consumer is not None:
            self.consumer.stop_flag.set()
            self.runner.stopping.set()
            stop_embedded_consumer(self.consumer)
            self.runner.drain()  # the items FAL is still running for this process, too
            self.consumer = None
        if self.housekeeper is not None:
            self.housekeeper.stop()
            self.housekeeper = None

    def close(self) -> None:
        self.stop_consumer()
        self.runner.close()
        self.store.close()


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The process-wide runtime, built from the environment on first use."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime

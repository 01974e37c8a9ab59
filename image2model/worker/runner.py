"""Run one item end to end, and the housekeeping around it (reaper, cleanup).

This is the worker's logic without huey: the huey tasks only call into it, so it reads the
same in the embedded consumer, a `huey_consumer` on another machine, or a test.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from image2model.config import Settings
from image2model.errors import AppError
from image2model.jobs.model import Item, ItemError, ItemState, Job, ResultFile
from image2model.jobs.endings import item_ended
from image2model.jobs.fairness import Enqueue
from image2model.jobs.store import JobStore, StoreUnavailable
from image2model.logs import log_context
from image2model.media.glb import glb_stats
from image2model.metrics import FAL_RUN, ITEM_RETRIES, OFFLINE_BUILD, QUEUE_WAIT
from image2model.providers.base import ItemCancelled, ItemFailed, Provider, ProviderOutput, Watching
from image2model.providers.catalog import ModelSpec, catalog
from image2model.sealing import KeyUnreadable
from image2model.storage import FileStore
from image2model.units import duration_text
from image2model.worker.heartbeats import CancelFlags, Heartbeats
from image2model.worker.liveness import known_dead, owner_process, pid_gone_here, worker_name
from image2model.outage import store_outage

log = logging.getLogger(__name__)

CANCEL_CHECK_SECONDS = 0.25  # one indexed read; a cancel takes effect within about this
PROGRESS_WRITE_SECONDS = 0.5  # at most two progress writes a second per item
STORE_RETRY_SECONDS = 0.5  # how often a write that must land is tried while the store is down
FINISH_PATIENCE_SECONDS = 300.0  # a result waits this long for the store before the reaper's turn
AT_FAL = "Sent to FAL; waiting for it to start"
ORPHAN_GRACE_SECONDS = 5.0  # a queued item this old with no queue task is queued again
DURATION_SAMPLE_SECONDS = 5.0  # a model's typical time learns from one finished photo this often
DRAIN_SECONDS = 10.0  # a shutdown waits this long for watched items to be handed back


class OwnershipLost(Exception):
    """The reaper gave this item to another worker; stop quietly, write nothing."""


class WorkerStopping(Exception):
    """This process is shutting down: hand the item back to the queue, unfinished."""


class Slot:
    """One place in a provider's `slots`, given back once, whoever ends the item."""

    def __init__(self, slots: threading.Semaphore | None):
        self._slots = slots
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()


@dataclass(eq=False)  # identity: the process's heartbeats keep a set of runs
class LiveItemRun:
    """The `ItemRun` a provider gets: durable writes go to the store, as this worker."""

    store: JobStore
    files: FileStore
    settings: Settings
    job_id: str
    index: int
    worker: str
    spec: ModelSpec
    job: Job
    deadline: float
    request_id: str | None
    fal_key: str = ""
    submit_record: dict[str, Any] = field(default_factory=dict)
    inputs: list[Path] = field(default_factory=list)
    work_dir: Path = Path()
    model_target: Path = Path()
    preview_target: Path = Path()
    max_result_bytes: int = 0
    poll_seconds: float = 1.0
    cancel_flags: CancelFlags | None = None
    settle_to: Callable[[Callable[[], ProviderOutput]], None] | None = None
    slot: Slot = field(default_factory=lambda: Slot(None))
    retries_used: int = 0
    _last_write: float = 0.0
    _last_message: str = ""
    _last_percent: float = 0.0
    _cancelled: bool = False
    lost: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def mode(self):  # noqa: ANN201 - mirrors ItemRun
        return self.job.mode

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def progress(self, percent: float, message: str) -> None:
        percent = max(self._last_percent, min(99.0, float(percent)))  # never goes backwards
        now = time.monotonic()
        if message == self._last_message and (percent - self._last_percent < 0.5
                                               or now - self._last_write < PROGRESS_WRITE_SECONDS):
            return  # nothing a reader would see, or too soon (liveness is the heartbeat's job)
        self._write({"progress": round(percent, 1), "message": message, "heartbeat_at": time.time()})
        self._last_write, self._last_message, self._last_percent = now, message, percent

    def remember_request(self, request_id: str, submit_record: dict[str, Any] | None = None) -> None:
        """Store FAL's request id before waiting on it; the photo then says where it is (the
        upload's words stayed until FAL's first status, which a slow queue may send late)."""
        self.request_id = request_id
        patch: dict[str, Any] = {"request_id": request_id, "message": AT_FAL}
        self._last_message = AT_FAL
        if submit_record is not None:
            self.submit_record = dict(submit_record)
            patch["fal_submit"] = self.submit_record
        self._write(patch, must_land=True)

    def remember_submit(self, record: dict[str, Any]) -> None:
        self.submit_record = dict(record)
        self._write({"fal_submit": self.submit_record}, must_land=True)

    def _write(self, patch: dict[str, Any], must_land: bool = False) -> None:
        """Progress is best effort while the store is down; what protects money (`must_land`)
        is tried until the store answers, or the item must stop."""
        while True:
            try:
                updated = self.store.update_item(
                    self.job_id, self.index, patch, expect_state=[ItemState.RUNNING], expect_worker=self.worker
                )
                break
            except StoreUnavailable:
                if not must_land:
                    return
                if self.stopping.is_set() or time.time() > self.deadline:
                    raise
                time.sleep(STORE_RETRY_SECONDS)
        if updated is None:
            self.lost.set()
            raise OwnershipLost()

    def check_stop(self) -> None:
        if self.lost.is_set():
            raise OwnershipLost()
        if self.stopping.is_set():
            raise WorkerStopping()
        if self.cancel_flags is not None and self.cancel_flags.requested(self.job_id):
            self._cancelled = True
        if self._cancelled:
            raise ItemCancelled()
        if time.time() > self.deadline:
            limit = duration_text(self.settings.item_deadline_seconds)
            raise ItemFailed("deadline_exceeded", f"The model took longer than the limit of {limit}.")

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.check_stop()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, CANCEL_CHECK_SECONDS))

    def typical_seconds(self) -> float:
        return self.store.typical_duration(self.spec.id) or self.spec.typical_seconds

    def write_file(self, target: Path, chunks: Iterable[bytes], max_bytes: int | None = None) -> int:
        return self.files.write_atomic(target, chunks, max_bytes)

    def settle(self, collect: Callable[[], ProviderOutput]) -> None:
        assert self.settle_to is not None, "settle() is for a run handed out by the runner"
        self.settle_to(collect)


class ItemRunner:
    def __init__(self, store: JobStore, files: FileStore, settings: Settings,
                 providers: dict[str, Provider], enqueue: Enqueue,
                 pending_tasks: Callable[[], set[tuple[str, int]]] | None = None,
                 open_key: Callable[[str], str] | None = None,
                 defer: Enqueue | None = None):
        self.store = store
        self.defer = defer or enqueue  # queue an item's task again, to run a little later
        self.open_key = open_key  # unseals a person's own FAL key (see image2model/sealing.py)
        self.files = files
        self.settings = settings
        self.providers = providers
        self.enqueue = enqueue
        self.pending_tasks = pending_tasks  # (job id, index) of every item task still in the queue
        self.stopping = threading.Event()  # set when this process shuts down
        self.heartbeats = Heartbeats(store, settings.heartbeat_seconds)
        self.cancel_flags = CancelFlags(store, CANCEL_CHECK_SECONDS)
        self._finishing: ThreadPoolExecutor | None = None
        self._finishing_lock = threading.Lock()
        self._duration_sampled_at: dict[str, float] = {}

    # --- one item -----------------------------------------------------------------------
    def run(self, job_id: str, index: int, turn: int | None = None) -> None:
        ctx = {"job_id": job_id, "item": index}
        if turn is not None and self._moved_or_taken(job_id, index, turn, ctx):
            return
        job = self.store.get(job_id)
        if not self._runnable(job, index, ctx):
            return
        provider = self.providers[catalog()[job.model].provider]
        slot = self._take_slot(provider, job, index)
        if slot is None:
            return
        claimed = None
        try:
            claimed = self._claim(job, index, ctx)
        finally:
            if claimed is None:
                slot.release()
        if claimed is None:
            return
        worker = claimed.worker or ""
        with log_context(worker=worker):  # every line of this run names its worker, the provider's too
            log.info("item started", extra={**ctx, "model": job.model})
            self._execute(job, claimed, worker, slot)

    def _moved_or_taken(self, job_id: str, index: int, turn: int, ctx: dict[str, Any]) -> bool:
        """Whether this task has nothing to do, seen from the item alone (a job has up to 25):
        its photo's turn moved (jobs/fairness.py: a task with the new one is queued), or the
        photo is no longer waiting (a second task, as the reaper may queue)."""
        item = self.store.item(job_id, index)
        if item is None:
            return False  # the whole job is read next, and says why
        if item.turn is not None and item.turn != turn:
            log.debug("item skipped: its turn moved from %d to %d", turn, item.turn, extra=ctx)
            return True
        if item.state != ItemState.QUEUED:
            log.info("item skipped: state %s", item.state, extra=ctx)
            return True
        return False

    def _runnable(self, job: Job | None, index: int, ctx: dict[str, Any]) -> bool:
        """Whether this queued item should be claimed now; ends it when it never will be."""
        if job is None or not 0 <= index < len(job.items):
            log.info("item skipped: job gone", extra=ctx)
            return False
        item = job.items[index]
        if item.state != ItemState.QUEUED:
            log.info("item skipped: state %s", item.state, extra=ctx)
            return False
        if job.cancel_requested:
            self._finish(job.id, index, None, ItemState.CANCELLED, "Cancelled", expect=[ItemState.QUEUED])
            return False
        if item.attempts >= self.settings.max_item_attempts:
            self._give_up(job.id, item, None, ctx, expect=[ItemState.QUEUED])
            return False
        if self.stopping.is_set():
            self.enqueue(job.id, index, item.turn)  # leave it for the next process
            return False
        return True

    def _take_slot(self, provider: Provider, job: Job, index: int) -> Slot | None:
        """A place among the provider's requests in flight (FAL_CONCURRENCY), taken before the
        claim, so that a photo waiting for one is still queued and its deadline has not begun.
        None when all are taken: the task is deferred, since a task held by a worker thread is
        seen by no reaper (it would queue the item again) and holds a thread other photos need."""
        slots = provider.slots
        if slots is None or slots.acquire(blocking=False):
            return Slot(slots)
        message = "Waiting for a free place at FAL (all are in use)"
        if job.items[index].message != message:
            try:
                self.store.update_item(job.id, index, {"message": message}, expect_state=[ItemState.QUEUED])
            except StoreUnavailable:
                pass
        self.defer(job.id, index, job.items[index].turn)
        return None

    def _claim(self, job: Job, index: int, ctx: dict[str, Any]) -> Item | None:
        item = job.items[index]
        worker = worker_name()
        now = time.time()
        claimed = self.store.update_item(
            job.id, index,
            {"state": ItemState.RUNNING, "worker": worker, "attempts": item.attempts + 1,
             "started_at": item.started_at or now, "heartbeat_at": now,
             "message": "Starting" if item.attempts == 0 else "Resuming after a worker stopped"},
            expect_state=[ItemState.QUEUED],
        )
        if claimed is None:
            log.info("item skipped: claimed elsewhere", extra=ctx)
            return None
        if item.attempts == 0:
            QUEUE_WAIT.labels(job.model).observe(max(0.0, now - item.queued_at))
        return claimed

    def _execute(self, job: Job, item: Item, worker: str, slot: Slot) -> None:
        try:
            run = self._prepare_run(job, item, worker)
        except AppError as exc:
            slot.release()
            self._fail(job.id, item.index, worker, exc.code, exc.message)
            return
        run.slot = slot
        provider = self.providers[run.spec.provider]
        run.settle_to = lambda collect: self._settle(run, provider, collect)
        self.heartbeats.add(run)
        self._conclude(run, provider, lambda: provider.run(run))

    def _conclude(self, run: LiveItemRun, provider: Provider,
                  step: Callable[[], ProviderOutput | Watching]) -> None:
        """Run one step of the item and write its end, unless the provider watches it on
        (then this runs again, on a finishing thread, when the watch ends)."""
        ctx = {"job_id": run.job_id, "item": run.index}
        watched = False
        with log_context(worker=run.worker):
            try:
                output = self._with_retries(provider, run, step)
                if isinstance(output, Watching):
                    watched = True
                    return
                self._succeed(run, output)
                log.info("item succeeded", extra={**ctx, "request_id": run.request_id})
            except OwnershipLost:
                log.warning("item taken over by another worker; stopping", extra=ctx)
            except WorkerStopping:
                self._hand_back(run.job_id, run.index, run.worker)
            except ItemCancelled:
                self._stop_remote(provider, run)
                self._discard_results(run)
                self._finish(run.job_id, run.index, run.worker, ItemState.CANCELLED, "Cancelled")
                log.info("item cancelled", extra=ctx)
            except (ItemFailed, AppError) as exc:
                if exc.code == "deadline_exceeded":
                    self._stop_remote(provider, run)
                self._discard_results(run)
                self._fail(run.job_id, run.index, run.worker, exc.code,
                           run.job.items[run.index].in_upload_names(exc.message))
            except StoreUnavailable as exc:  # the store stayed down: the reaper resumes the item later
                log.warning("item left running, the job store is unreachable: %s", exc, extra=ctx)
            except Exception:  # noqa: BLE001 - the item fails, the worker lives on
                if self.store.version(run.job_id) is None:
                    log.info("job deleted while its item ran; stopping", extra=ctx)
                else:
                    log.exception("item crashed", extra=ctx)
                    self._discard_results(run)
                    self._fail(run.job_id, run.index, run.worker, "internal_error",
                               "Something went wrong while making this model. The error was logged.")
            finally:
                if not watched:
                    self._let_go(run)

    def _succeed(self, run: LiveItemRun, output: ProviderOutput) -> None:
        spec = run.spec
        stats = glb_stats(run.model_target)
        stats.update(output.extra_stats or {})
        files = [ResultFile(run.model_target.name, "model", run.model_target.stat().st_size, "model/gltf-binary")]
        if output.has_preview and run.preview_target.is_file():
            files.append(ResultFile(run.preview_target.name, "preview", run.preview_target.stat().st_size,
                                    "image/png"))
        if output.run_seconds:
            self._record_duration(spec.id, output.run_seconds)
            (FAL_RUN.labels(spec.id) if spec.provider == "fal" else OFFLINE_BUILD).observe(output.run_seconds)
        message = f"Done. {output.note}" if output.note else "Done"
        done = self._finish(run.job_id, run.index, run.worker, ItemState.SUCCEEDED, message, files=files,
                            stats=stats, unless_cancelled=True)
        if done is None and self.store.cancel_requested(run.job_id):
            raise ItemCancelled()  # the cancel came while the model was being finished

    def _let_go(self, run: LiveItemRun) -> None:
        """The item's end in this process: no more heartbeats, its slot free, and no result
        left behind for a job deleted meanwhile."""
        self.heartbeats.remove(run)
        run.slot.release()
        try:
            if self.store.version(run.job_id) is None:
                if run.model_target.name and run.model_target.is_file():
                    log.warning("job gone (deleted, expired, or the store lost it) while its item ran: its "
                                "finished model is thrown away", extra={"job_id": run.job_id, "item": run.index,
                                                                        "request_id": run.request_id})
                self.files.delete_job(run.job_id)
        except StoreUnavailable:
            pass

    def _settle(self, run: LiveItemRun, provider: Provider, collect: Callable[[], ProviderOutput]) -> None:
        try:
            self._finishing_pool().submit(self._conclude, run, provider, collect)
        except RuntimeError:  # the interpreter is exiting (no new threads): end it here
            self._conclude(run, provider, collect)

    def _finishing_pool(self) -> ThreadPoolExecutor:
        """Threads for the end of watched items (download, checks): short work, never waiting."""
        with self._finishing_lock:
            if self._finishing is None:
                self._finishing = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="i2m-finish")
            return self._finishing

    def drain(self, timeout: float = DRAIN_SECONDS) -> bool:
        """At shutdown, after `stopping` is set: wait until every item of this process was
        handed back (watched ones are, within a tick)."""
        return self.heartbeats.wait_empty(timeout)

    def close(self) -> None:
        self.heartbeats.stop()
        for provider in self.providers.values():
            closing = getattr(provider, "close", None)
            if closing is not None:
                closing()
        with self._finishing_lock:
            pool, self._finishing = self._finishing, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _prepare_run(self, job: Job, item: Item, worker: str) -> LiveItemRun:
        spec = catalog()[job.model]
        inputs_dir = self.files.inputs_dir(job.id)
        missing = [name for name in item.inputs if not (inputs_dir / name).is_file()]
        if missing and not item.may_be_paid:  # most often a worker whose DATA_DIR is not the web app's
            log.error("input file missing: %s (DATA_DIR here is %s; it must be the folder the web app "
                      "uses, shared by every machine)", inputs_dir / missing[0], self.settings.data_dir,
                      extra={"job_id": job.id, "item": item.index})
            raise AppError("input_missing", "This photo's file is not where the worker looks for it: the "
                           "server's workers do not share its storage (DATA_DIR). Whoever runs it can see "
                           "the details in the worker's log.", 500)
        return LiveItemRun(
            store=self.store, files=self.files, settings=self.settings, job_id=job.id, index=item.index,
            worker=worker, spec=spec, job=job,
            deadline=(item.started_at or time.time()) + self.settings.item_deadline_seconds,
            request_id=item.request_id, fal_key=self._own_key(job),
            submit_record=dict(item.fal_submit),
            inputs=[inputs_dir / name for name in item.inputs],
            work_dir=self.files.job_dir(job.id) / "prepared",
            model_target=self.files.new_result_path(job.id, f"{item.stem}.glb"),
            preview_target=self.files.new_result_path(job.id, f"{item.stem}.preview.png"),
            max_result_bytes=int(self.settings.max_result_mb * 1024 * 1024),
            poll_seconds=self.settings.fal_poll_seconds,
            stopping=self.stopping, cancel_flags=self.cancel_flags,
        )

    def _own_key(self, job: Job) -> str:
        """The person's FAL key for this job, opened just for this run ("" for the server's)."""
        if not job.own_fal_key:
            return ""
        sealed = self.store.job_key(job.id)
        if sealed is None:
            raise AppError("fal_key_gone", "The FAL key you gave for this job is no longer here (keys are "
                           "forgotten when a job ends); please start again with your key.", 409)
        try:
            assert self.open_key is not None
            return self.open_key(sealed)
        except KeyUnreadable:
            raise AppError("fal_key_unreadable", "This worker cannot read the FAL key you gave: its SECRET_KEY "
                           "differs from the web server's. The operator must set the same SECRET_KEY on "
                           "every machine.", 500) from None

    def _with_retries(self, provider: Provider, run: LiveItemRun,
                      step: Callable[[], ProviderOutput | Watching]) -> ProviderOutput | Watching:
        """Transient failures run the provider again (it resumes the same FAL request), up to
        FAL_RETRIES times per item, however many watches that spans."""
        retries = self.settings.fal_retries
        while True:
            try:
                return step()
            except ItemFailed as exc:
                if not exc.retryable:
                    raise
                if run.retries_used >= retries:
                    raise ItemFailed(exc.code, f"{exc.message} (gave up after {retries} retries)") from exc
                delay = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2**run.retries_used)
                delay *= random.uniform(0.8, 1.2)
                run.retries_used += 1
                ITEM_RETRIES.labels(run.spec.id, exc.code).inc()
                log.warning("retrying after %s", exc.code, extra={"job_id": run.job_id, "item": run.index,
                                                                  "request_id": run.request_id})
                run.progress(run._last_percent, f"{exc.message} Retrying in {delay:.0f} s "
                             f"(retry {run.retries_used} of {retries}).")
                run.sleep(delay)
                step = lambda: provider.run(run)  # noqa: E731

    def _hand_back(self, job_id: str, index: int, worker: str) -> None:
        """Shutdown: the item goes back on the queue with its FAL request id, to be resumed.
        A graceful stop is no crash: the attempt it took is given back (MAX_ITEM_ATTEMPTS
        counts workers lost), so a server restarted many times never fails a photo."""
        held = self.store.item(job_id, index)
        back = self.store.update_item(
            job_id, index, {"state": ItemState.QUEUED, "worker": None,
                            "attempts": max(0, (held.attempts if held else 1) - 1),
                            "message": "Paused while the server restarts; it will resume"},
            expect_state=[ItemState.RUNNING], expect_worker=worker,
        )
        if back is not None:
            self.enqueue(job_id, index, back.turn)
            log.info("item handed back for shutdown", extra={"job_id": job_id, "item": index})

    def _stop_remote(self, provider: Provider, run: LiveItemRun) -> None:
        """A cancelled or overdue item also stops its paid request on FAL (bounded, best effort)."""
        if run.request_id:
            try:
                provider.cancel(run)
            except Exception as exc:  # noqa: BLE001 - telling FAL is best effort
                log.warning("remote cancel failed: %s", exc, extra={"job_id": run.job_id, "item": run.index})

    @staticmethod
    def _discard_results(run: LiveItemRun) -> None:
        """An item that does not succeed leaves no model behind (a corrupt one least of all)."""
        for path in (run.model_target, run.preview_target):
            if path.name:
                path.unlink(missing_ok=True)

    def _record_duration(self, model: str, seconds: float) -> None:
        """Best effort: one lost sample of the typical time is nothing, while failing here, in a
        store outage, left a finished (paid) item running until the reaper's stale_after. One
        sample per model every few seconds is enough to learn from, and 250 photos ending
        together each waited for the store's write lock for it."""
        now = time.monotonic()
        with self._finishing_lock:
            if now - self._duration_sampled_at.get(model, -DURATION_SAMPLE_SECONDS) < DURATION_SAMPLE_SECONDS:
                return
            self._duration_sampled_at[model] = now
        try:
            self.store.record_duration(model, seconds)
        except StoreUnavailable as exc:
            store_outage.failed(exc)

    def _give_up(self, job_id: str, item: Item, worker: str | None, ctx: dict[str, Any],
                 expect: list[ItemState] | None = None) -> None:
        """MAX_ITEM_ATTEMPTS workers lost on this item (graceful stops do not count): fail it."""
        self._finish(job_id, item.index, worker, ItemState.FAILED, "Failed", expect=expect, error=ItemError(
            "worker_lost", f"The worker processing this image stopped {item.attempts} times; giving up."))
        log.warning("item failed: its workers were lost %d times", item.attempts, extra={**ctx, "code": "worker_lost"})

    def _fail(self, job_id: str, index: int, worker: str, code: str, message: str) -> None:
        self._finish(job_id, index, worker, ItemState.FAILED, "Failed", error=ItemError(code, message))
        log.warning("item failed: %s", message, extra={"job_id": job_id, "item": index, "code": code})

    def _finish(self, job_id: str, index: int, worker: str | None, state: ItemState, message: str, *,
                error: ItemError | None = None, files: list[ResultFile] | None = None,
                stats: dict[str, Any] | None = None, expect: list[ItemState] | None = None,
                unless_cancelled: bool = False) -> Item | None:
        """Write the item's end; while the store is down, wait for it (a while), since the end
        of a paid request must not be lost. After that the reaper resumes the item."""
        patch: dict[str, Any] = {"state": state, "message": message, "finished_at": time.time(), "error": error}
        if state == ItemState.SUCCEEDED:
            patch.update(progress=100.0, files=files or [], stats=stats or {})
        give_up = time.monotonic() + FINISH_PATIENCE_SECONDS
        while True:
            try:
                done = self.store.update_item(job_id, index, patch, expect_state=expect or [ItemState.RUNNING],
                                              expect_worker=worker, unless_cancelled=unless_cancelled)
                break
            except StoreUnavailable:
                if time.monotonic() > give_up:
                    raise
                time.sleep(STORE_RETRY_SECONDS)
        if done is not None:
            item_ended(self.store, job_id, index)
        return done

    # --- housekeeping ---------------------------------------------------------------------
    def reap(self, now: float | None = None) -> list[tuple[str, int]]:
        """Put items whose worker is gone back on the queue, and queue again the queued items
        that no queue task will ever run (a crash while a job was being created or taken)."""
        now = now or time.time()
        alive = set(self.store.alive_processes(now))
        requeued = []
        for job_id, item in self.store.running_items():
            if not self._owner_gone(item, alive, now):
                continue
            ctx = {"job_id": job_id, "item": item.index, "request_id": item.request_id, "worker": item.worker}
            job = self.store.get(job_id)
            if job is None:
                continue
            if job.cancel_requested:
                self._finish(job_id, item.index, item.worker, ItemState.CANCELLED, "Cancelled")
                if item.request_id:
                    self._cancel_remote(job, item)
                continue
            if item.attempts >= self.settings.max_item_attempts:
                self._give_up(job_id, item, item.worker, ctx)
                continue
            back = self.store.update_item(
                job_id, item.index,
                {"state": ItemState.QUEUED, "worker": None, "message": "The worker stopped; waiting to resume"},
                expect_state=[ItemState.RUNNING], expect_worker=item.worker,
            )
            if back is not None:
                self.enqueue(job_id, item.index, item.turn)
                requeued.append((job_id, item.index))
                log.warning("stale item put back on the queue", extra=ctx)
        return requeued + self._requeue_orphans(now)

    def _owner_gone(self, item: Item, alive: set[str], now: float) -> bool:
        """Dead for certain (its process is gone from this host), silent past its liveness
        (another machine's process stopped saying it lives), or silent past stale_after."""
        beat_age = now - (item.heartbeat_at or 0.0)
        if beat_age >= self.settings.stale_after_seconds:
            return True
        process = owner_process(item.worker)
        if process is None:
            return False
        if known_dead(process):
            return True
        return process not in alive and beat_age >= 2 * self.settings.heartbeat_seconds

    def _requeue_orphans(self, now: float) -> list[tuple[str, int]]:
        """A queued item is only a record: the queue task that would run it can be lost. A
        second task for an item is harmless (the claim is compare-and-set), a missing one is
        a job stuck for ever."""
        waiting = [(job_id, item) for job_id, item in self.store.queued_items()
                   if now - item.queued_at >= ORPHAN_GRACE_SECONDS]
        if not waiting or self.pending_tasks is None:
            return []
        pending = self.pending_tasks()
        requeued = []
        for job_id, item in waiting:
            if (job_id, item.index) not in pending:
                self.enqueue(job_id, item.index, item.turn)
                requeued.append((job_id, item.index))
                log.warning("queued item had no queue task; queued again", extra={"job_id": job_id, "item": item.index})
        return requeued

    def _cancel_remote(self, job: Job, item: Item) -> None:
        spec = catalog()[job.model]
        provider = self.providers.get(spec.provider)
        if provider is None:
            return
        try:
            key = self._own_key(job)
        except AppError:
            return  # the key is gone: nothing can reach that request any more
        run = LiveItemRun(store=self.store, files=self.files, settings=self.settings, job_id=job.id,
                          index=item.index, worker="reaper", spec=spec, job=job, deadline=0,
                          request_id=item.request_id, fal_key=key)
        provider.cancel(run)

    def cleanup(self, now: float | None = None, full: bool = True) -> list[str]:
        """Delete jobs and files older than the retention period; with `full`, also orphaned
        files (a folder scan, so less often)."""
        now = now or time.time()
        removed = []
        for job_id in self.store.job_ids_created_before(now - self.settings.retention_seconds):
            self.files.delete_job(job_id)
            self.store.delete(job_id)
            removed.append(job_id)
        if not full:
            if removed:
                log.info("cleanup removed %d expired jobs", len(removed))
            return removed
        for job_id in self.files.job_ids():
            directory = self.files.job_dir(job_id)
            young = now - directory.stat().st_mtime < 600  # a job being created has files first
            if not young and self.store.version(job_id) is None:
                self.files.delete_job(job_id)
                removed.append(job_id)
        for path in self.files.remove_abandoned(pid_gone_here, now):
            log.info("removed a half-written file left by a stopped process: %s", path.name)
        if removed:
            log.info("cleanup removed %d jobs", len(removed))
        return removed

"""The one door to jobs: every interface (page, Gradio API, REST) creates, reads, watches and
cancels jobs only through `JobService`, so validation and limits hold everywhere."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from image2model.config import Settings
from image2model.errors import AppError, disk_full_error, is_disk_full
from image2model.jobs.model import Item, ItemState, Job, Mode
from image2model.jobs.endings import item_ended
from image2model.jobs.fairness import EnqueueMany, plan_turns, share_of
from image2model.jobs.store import JobStore
from image2model.media.images import inspect_image
from image2model.metrics import ITEMS_CREATED, JOBS_CREATED, refusals_counted
from image2model.media.polyglot import check_single_format
from image2model.providers.catalog import ModelSpec, availability, catalog, get_model
from image2model.storage import FileStore, safe_name, unique_stems
from image2model.units import size_text

log = logging.getLogger(__name__)

DOWNLOAD_PREFIX = "/api/v1/download"
STATUS_CACHE_SIZE = 1024
LIVENESS_CACHE_SECONDS = 1.0
UNQUEUED_FORGET_SECONDS = 10.0  # past the reaper's grace (worker/runner.py): it queues such a job
NO_WORKER_MESSAGE = "Waiting: no worker is running right now; it starts as soon as one is"
SILENT_WORKER_MESSAGE = ("The worker making this model stopped answering; another one takes it over "
                         "within seconds, and nothing is paid twice")
SILENT_AFTER_BEATS = 3  # a running item this many heartbeats late is shown as silent


@dataclass(frozen=True)
class Liveness:
    """What the status says about workers, beyond the job record: whether any runs at all,
    and before when a running item's last heartbeat means its worker went silent."""

    workers_alive: bool = True
    silent_before: float = 0.0


@dataclass(frozen=True)
class Upload:
    name: str  # the file name the person chose
    path: Path  # where its bytes are now (moved into the job's inputs when accepted)


class JobService:
    def __init__(self, store: JobStore, files: FileStore, settings: Settings,
                 enqueue_many: EnqueueMany, seal: Callable[[str], str] | None = None):
        self.store = store
        self.files = files
        self.settings = settings
        self.enqueue_many = enqueue_many  # a job's tasks go in one write, so its photos start together
        self.seal = seal  # seals a person's own FAL key before it is stored (image2model/sealing.py)
        # job id -> (version, fresh until (wall clock), owner, body)
        self._status_cache: OrderedDict[str, tuple[int, float, str, bytes]] = OrderedDict()
        self._status_lock = threading.Lock()
        self._liveness: tuple[float, bool] = (0.0, True)
        # Fair turns (jobs/fairness.py) are planned one job at a time in this process. A job
        # stored but not yet queued (the REST upload answers first) is planned with the rest,
        # but only `queue_items` queues its tasks (job id -> when it was stored; one never
        # queued is the reaper's after a few seconds).
        self._turns_lock = threading.Lock()
        self._unqueued: dict[str, float] = {}

    # --- create ---------------------------------------------------------------------------
    def create_job(self, uploads: Sequence[Upload], model: str | None = None, mode: str | None = None,
                   params: dict[str, Any] | None = None, owner: str = "", fal_key: str | None = None,
                   share: str = "", queue: bool = True) -> Job:
        """Validate everything, then store and queue. Nothing is queued unless all is well.
        `share`: who queues it (an API key's or visitor's identity), for fair turns.
        `queue=False`: the caller queues it with `queue_items` (the REST upload does, once its
        answer is sent); a job never queued is queued by the reaper (ORPHAN_GRACE_SECONDS).
        `fal_key`: the person's own FAL key; their FAL job runs on it alone and is not counted
        by this server's spending guard (the offline model needs none, so it is not kept)."""
        with refusals_counted():
            job = self._create_job(uploads, model, mode, params, owner, fal_key, share_of(share), queue)
        JOBS_CREATED.labels(job.model).inc()
        ITEMS_CREATED.labels(job.model).inc(len(job.items))
        return job

    def _create_job(self, uploads: Sequence[Upload], model: str | None, mode: str | None,
                    params: dict[str, Any] | None, owner: str, fal_key: str | None, share: str,
                    queue: bool) -> Job:
        self._check_count(len(uploads))
        self._check_queue(len(uploads))
        own_key = check_fal_key(fal_key)
        spec = self.model_spec(model, own_key=bool(own_key))
        if spec.provider != "fal":
            own_key = ""
        job_mode = self._parse_mode(mode, spec.modes)
        if job_mode == Mode.MULTI_VIEW and not spec.min_views <= len(uploads) <= spec.max_views:
            raise AppError(
                "wrong_view_count",
                f"{spec.label} builds one model from {spec.min_views}"
                f"{'' if spec.min_views == spec.max_views else f' to {spec.max_views}'} views "
                f"({spec.view_order}); you sent {len(uploads)}.",
                422, {"model": spec.id},
            )
        if params is not None and not isinstance(params, dict):
            raise AppError("invalid_parameter", "Options must be a JSON object.", 422)
        resolved = spec.validate_params(params)
        names = [upload.name or f"image-{n + 1}" for n, upload in enumerate(uploads)]
        self._check_files(uploads, names)
        self._check_disk()
        job_id = uuid.uuid4().hex
        if spec.provider == "fal" and not own_key:
            self._reserve_spending(job_id, len(uploads))

        try:
            stored = self._store_inputs(job_id, uploads, names)
        except OSError as exc:  # nothing half-stored stays behind
            self.files.delete_job(job_id)
            if is_disk_full(exc):
                raise disk_full_error() from exc
            raise
        items = self._make_items(job_mode, names, stored)
        job = Job(id=job_id, model=spec.id, mode=job_mode, params=resolved, items=items, owner=owner,
                  share=share, own_fal_key=bool(own_key))
        if own_key:
            if self.seal is None:
                raise AppError("own_key_unsupported", "This server cannot take your own FAL key.", 422)
            self.store.put_job_key(job_id, self.seal(own_key))  # before the job: no worker sees it keyless
        self._store_with_turns(job)
        log.info("job created: %d images, %d items", len(uploads), len(items),
                 extra={"job_id": job_id, "model": spec.id})
        if queue and not self.queue_items(job):  # the queue is down: say so, and leave nothing half-queued
            self.cancel(job_id)
            raise AppError("queue_unavailable", "The work queue is not reachable right now; "
                           "please try again in a minute.", 503)
        return job

    def _store_with_turns(self, job: Job) -> None:
        """Store the job with its fair turns, moving its share's waiting photos to make room.
        Its own tasks come from `queue_items`, with the turns stored by then."""
        with self._turns_lock:
            now = time.monotonic()
            self._unqueued = {job_id: made for job_id, made in self._unqueued.items()
                              if now - made < UNQUEUED_FORGET_SECONDS}
            turns, moved = plan_turns(self.store.queued_items_with_share(), job.share, len(job.items))
            for item, turn in zip(job.items, turns):
                item.turn = turn
            self.store.create(job)
            self._unqueued[job.id] = now
            self._move_turns(moved)

    def queue_items(self, job: Job) -> bool:
        """One queue task per item, with its turn as stored now (another job of the share may
        have moved it); False when the queue failed (logged). Items left without a task are
        still queued records, and the reaper queues them once the queue is back."""
        try:
            with self._turns_lock:
                self._unqueued.pop(job.id, None)
                stored = self.store.get(job.id)
            turns = {item.index: item.turn for item in (stored or job).items}
            self.enqueue_many([(job.id, item.index, turns.get(item.index, item.turn)) for item in job.items])
        except Exception:  # noqa: BLE001 - said by the caller, or left to the reaper
            log.exception("enqueue failed", extra={"job_id": job.id})
            return False
        return True

    def _replan(self, share: str) -> None:
        """After a cancel: the share's photos still waiting close up (no turns left empty)."""
        if not share:
            return
        try:
            with self._turns_lock:
                _, moved = plan_turns(self.store.queued_items_with_share(), share, 0)
                self._move_turns(moved)
        except Exception:  # noqa: BLE001 - the cancel is done; the gaps only cost the share turns
            log.exception("closing up turns failed")

    def _move_turns(self, moved: dict[str, dict[int, int]]) -> None:
        """Waiting photos of a share take their new turns: the stored turn first, then a task
        carrying it (the old task, carrying the old turn, is dropped when it comes up), except
        for jobs whose tasks `queue_items` has yet to queue. Left to the reaper when the queue
        fails: the moved photos are still queued records."""
        try:
            for job_id, turns in moved.items():
                indexes = self.store.move_turns(job_id, turns)
                if job_id not in self._unqueued:
                    self.enqueue_many([(job_id, index, turns[index]) for index in indexes])
        except Exception:  # noqa: BLE001 - the photos keep their place in the store
            log.exception("moving turns failed", extra={"job_ids": sorted(moved)})

    def model_spec(self, model: str | None, own_key: bool = False) -> ModelSpec:
        """The model a job would run (the default when none is named), or AppError saying why
        not. With the person's own FAL key, FAL models are there even if this server has none."""
        return get_model(model, self.settings.fal_configured or own_key, self.settings.default_model)

    def upload_problems(self, uploads: Sequence[Upload]) -> list[str]:
        """What create_job would refuse about these files, each said once, without creating
        anything: the page says it as soon as photos are added (an empty list is no problem
        yet). The same checks as create_job, so the page and every API agree."""
        return self.sort_uploads(uploads)[1]

    def sort_uploads(self, uploads: Sequence[Upload]) -> tuple[list[Upload], list[str], bool]:
        """The uploads a job could take (the first max_images readable ones) and the problems
        of the rest, in one pass: the page shows thumbnails of the first only. Every file is
        checked, so a bad one past the limit is named too and a good one after a bad one still
        counts; the count is a problem (said first, and `over` True) only when more are readable
        than a job takes."""
        usable: list[Upload] = []
        problems = []
        for n, upload in enumerate(uploads):
            try:
                self._check_file(upload.path, upload.name or f"image-{n + 1}")
                usable.append(upload)
            except AppError as exc:
                problems.append(exc.message)
            except OSError:
                problems.append(f"'{upload.name}' could not be read; please add it again.")
        over = len(usable) > self.settings.max_images
        if over:
            problems.insert(0, self._count_error(len(usable)).message)
        return usable[: self.settings.max_images], problems, over

    def _count_error(self, count: int) -> AppError:
        return AppError("too_many_images", f"You sent {count} images; the limit is "
                        f"{self.settings.max_images} per job.", 400,
                        {"count": count, "limit": self.settings.max_images})

    def _check_count(self, count: int) -> None:
        if count == 0:
            raise AppError("no_images", "Please add at least one image.", 400)
        if count > self.settings.max_images:
            raise self._count_error(count)

    @staticmethod
    def _parse_mode(mode: str | None, allowed: tuple[Mode, ...]) -> Mode:
        if not mode:
            return allowed[0]
        try:
            parsed = Mode(mode)
        except ValueError:
            raise AppError("invalid_mode", f"Unknown mode '{mode}': use per_image or multi_view.", 422) from None
        if parsed not in allowed:
            text = "several views" if parsed == Mode.MULTI_VIEW else "single images"
            raise AppError("invalid_mode", f"This model does not take {text}; use "
                           f"{' or '.join(str(m) for m in allowed)}.", 422)
        return parsed

    def _check_files(self, uploads: Sequence[Upload], names: list[str]) -> None:
        """Every file is checked, so one answer names every photo that cannot be used (with the
        first one's code and status; `details.files` lists each)."""
        problems = []
        for upload, name in zip(uploads, names):
            try:
                self._check_file(upload.path, name)
            except AppError as exc:
                problems.append(exc)
        if len(problems) == 1:
            raise problems[0]
        if problems:
            first = problems[0]
            raise AppError(first.code, f"{len(problems)} of the {len(names)} photos cannot be used: "
                           + " ".join(p.message for p in problems), first.status,
                           {**first.details, "files": [{"code": p.code, "message": p.message, **p.details}
                                                       for p in problems]})

    def _check_file(self, path: Path, name: str) -> None:
        limit = self.settings.max_image_bytes
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # e.g. another Gradio process on this host cleared its shared cache
            raise AppError("upload_gone", f"'{name}' is no longer on the server (it was cleared before the job "
                           "started); please add it again.", 400, {"file": name}) from None
        if size > limit:
            raise AppError("file_too_large", f"'{name}' is {size_text(size)}; the limit is "
                           f"{size_text(limit)} per image.", 413, {"file": name})
        info = inspect_image(path, name, self.settings.max_image_pixels)
        check_single_format(path, name, info.format)  # an image with an archive or page inside: 415

    def _check_disk(self) -> None:
        """Refuse new work before the disk is full, so running items can still save theirs."""
        if self.files.free_mb() < self.settings.min_free_disk_mb:
            raise disk_full_error()

    def _check_queue(self, count: int) -> None:
        limit = self.settings.max_waiting_images
        if not limit:
            return
        waiting = self.store.queued_count()
        if waiting + count > limit:
            room = max(0, limit - waiting)
            if waiting == 0:  # the job alone is bigger than the queue may ever hold
                raise AppError("queue_full", f"This server queues at most {limit} photo{'s' if limit != 1 else ''} "
                               f"at a time; please send {limit} or fewer.", 503, {"waiting": 0, "limit": limit})
            more = f" Up to {room} photo{'s' if room != 1 else ''} would fit now." if room else ""
            raise AppError("queue_full", f"This server is busy: {waiting} photos are already waiting their turn "
                           f"and yours would pass the limit of {limit}.{more} Please try again in a few minutes.", 503,
                           {"waiting": waiting, "limit": limit})

    def _reserve_spending(self, job_id: str, count: int) -> None:
        limit = self.settings.fal_images_per_hour
        if limit and not self.store.reserve_images(count, limit, 3600.0, time.time(), holder=job_id):
            raise AppError("spending_limit", f"This server's limit of {limit} paid images an hour is "
                           "used up; please try again later or use the offline model.", 429)

    def _store_inputs(self, job_id: str, uploads: Sequence[Upload], names: list[str]) -> list[str]:
        directory = self.files.inputs_dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        stored = []
        for n, (upload, name) in enumerate(zip(uploads, names)):
            target = f"{n:02d}-{safe_name(name)}"
            shutil.copyfile(upload.path, directory / target)
            stored.append(target)
        return stored

    @staticmethod
    def _make_items(mode: Mode, names: list[str], stored: list[str]) -> list[Item]:
        stems = unique_stems(names)
        if mode == Mode.MULTI_VIEW:
            return [Item(index=0, name=" + ".join(names), stem=stems[0], inputs=stored)]
        return [Item(index=n, name=name, stem=stem, inputs=[file])
                for n, (name, stem, file) in enumerate(zip(names, stems, stored))]

    # --- read -----------------------------------------------------------------------------
    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job, or 404 when it does not exist, expired, or belongs to someone else."""
        job = self.store.get(job_id) if isinstance(job_id, str) else None
        if job is None or (owner is not None and job.owner != owner):
            raise AppError("job_not_found", "No job with that id (it may have expired).", 404)
        return job

    def wait_for_change(self, job_id: str, since: int, timeout: float) -> int | None:
        return self.store.wait_for_change(job_id, since, timeout)

    async def wait_for_change_async(self, job_id: str, since: int, timeout: float) -> int | None:
        return await self.store.wait_for_change_async(job_id, since, timeout)

    # --- change ---------------------------------------------------------------------------
    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Queued items never start; running ones stop (and FAL is told); finished ones stay,
        and a job already over stays as it ended."""
        ended = self.get(job_id, owner)
        if ended.state.terminal:
            return ended
        self.store.request_cancel(job_id)
        job = self.get(job_id, owner)
        for item in job.items:
            if item.state == ItemState.QUEUED:
                cancelled = self.store.update_item(job_id, item.index,
                                                   {"state": ItemState.CANCELLED, "message": "Cancelled",
                                                    "finished_at": time.time()},
                                                   expect_state=[ItemState.QUEUED])
                if cancelled is not None:
                    item_ended(self.store, job_id, item.index)
        self._replan(job.share)
        log.info("job cancel requested", extra={"job_id": job_id})
        return self.get(job_id, owner)

    def delete(self, job_id: str, owner: str | None = None) -> None:
        self.cancel(job_id, owner)
        self.files.delete_job(job_id)
        self.store.delete(job_id)
        log.info("job deleted", extra={"job_id": job_id})

    # --- describe -------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        default = get_default_model_id(self.settings)
        described = []
        for spec in catalog().values():
            available, reason = availability(spec, self.settings.fal_configured)
            entry = spec.to_dict(available, reason)
            entry["default"] = spec.id == default
            described.append(entry)
        return described

    def status(self, job: Job) -> dict[str, Any]:
        """The public status shape, shared by the Gradio API, REST and SSE."""
        return job_status(job, self.liveness(job))

    def liveness(self, job: Job) -> Liveness:
        if job.state.terminal:
            return Liveness()
        return Liveness(self.workers_alive(), time.time() - self._silent_after)

    @property
    def _silent_after(self) -> float:
        return SILENT_AFTER_BEATS * self.settings.heartbeat_seconds

    def _fresh_until(self, job: Job, live: Liveness) -> float:
        """When a cached status of this job stops being true without a new version: a worker
        going silent, or the last worker leaving, changes what it says."""
        if job.state.terminal:
            return float("inf")
        until = time.time() + LIVENESS_CACHE_SECONDS
        beats = [i.heartbeat_at + self._silent_after for i in job.items
                 if i.state == ItemState.RUNNING and i.heartbeat_at and i.heartbeat_at >= live.silent_before]
        return min([until, *beats])

    def workers_alive(self) -> bool:
        """Whether any worker process says it lives (asked at most once a second): a queued
        photo with nobody to run it says so instead of "Waiting for a worker" for ever."""
        checked_at, alive = self._liveness
        now = time.monotonic()
        if now - checked_at >= LIVENESS_CACHE_SECONDS:
            try:
                alive = bool(self.store.alive_processes(time.time()))
            except Exception:  # noqa: BLE001 - a store outage shows up elsewhere; keep the last word
                pass
            self._liveness = (now, alive)
        return alive

    def status_json(self, job_id: str, owner: str | None = None) -> bytes:
        """The status as JSON bytes, re-read and re-encoded only when the job's version moved:
        pollers of a busy job cost one indexed lookup per request, not a parse and an encode."""
        version = self.store.version(job_id) if isinstance(job_id, str) else None
        with self._status_lock:
            cached = self._status_cache.get(job_id)
        if version is not None and cached is not None and cached[0] == version and time.time() < cached[1]:
            if owner is not None and cached[2] != owner:
                raise AppError("job_not_found", "No job with that id (it may have expired).", 404)
            return cached[3]
        job = self.get(job_id, owner)
        live = self.liveness(job)
        body = json.dumps(job_status(job, live), separators=(",", ":")).encode()
        with self._status_lock:
            self._status_cache[job_id] = (job.version, self._fresh_until(job, live), job.owner, body)
            self._status_cache.move_to_end(job_id)
            while len(self._status_cache) > STATUS_CACHE_SIZE:
                self._status_cache.popitem(last=False)
        return body


FAL_KEY_SHAPE = re.compile(r"[A-Za-z0-9._:\-]{16,200}")


def check_fal_key(value: str | None) -> str:
    """A person's own FAL key, stripped ("" for none), or a 422 that never repeats it."""
    key = (value or "").strip()
    if key and not FAL_KEY_SHAPE.fullmatch(key):
        raise AppError("invalid_fal_key", "That does not look like a FAL key: it should be the key from "
                       "fal.ai/dashboard/keys, like 'key-id:key-secret', on one line.", 422, {"field": "fal_key"})
    return key


def get_default_model_id(settings: Settings) -> str:
    return get_model(None, settings.fal_configured, settings.default_model).id


def file_url(job_id: str, name: str) -> str:
    """The download path, the name percent-encoded: "cup _1.glb" must not break curl."""
    return f"{DOWNLOAD_PREFIX}/{job_id}/{quote(name, safe='')}"


def job_status(job: Job, live: Liveness = Liveness()) -> dict[str, Any]:
    counts = {state.value: 0 for state in ItemState}
    for item in job.items:
        counts[item.state.value] += 1
    state = job.state
    return {
        "job_id": job.id,
        "task_id": job.id,
        "state": state.value,
        "finished": state.terminal,
        "cancel_requested": job.cancel_requested,
        "progress": job.progress,
        "model": job.model,
        "mode": job.mode.value,
        "params": job.params,
        "created_at": job.created_at,
        "own_fal_key": job.own_fal_key,
        "version": job.version,
        "counts": counts,
        "items": [item_status(job.id, item, live) for item in job.items],
    }


def item_status(job_id: str, item: Item, live: Liveness = Liveness()) -> dict[str, Any]:
    message = item.message
    if item.state == ItemState.QUEUED and not live.workers_alive:
        message = NO_WORKER_MESSAGE
    elif item.state == ItemState.RUNNING and item.heartbeat_at and item.heartbeat_at < live.silent_before:
        message = SILENT_WORKER_MESSAGE
    return {
        "index": item.index,
        "name": item.name,
        "state": item.state.value,
        "progress": 100.0 if item.state == ItemState.SUCCEEDED else item.progress,
        "message": message,
        "queued_at": item.queued_at,
        "started_at": item.started_at,
        "finished_at": item.finished_at,
        "elapsed": round(item.elapsed, 2) if item.elapsed is not None else None,
        "attempts": item.attempts,
        "fal_request_id": item.request_id,
        "notes": [event["text"] for event in item.fal_submit.get("events") or []],
        "files": [
            {"name": f.name, "kind": f.kind, "size": f.size, "content_type": f.content_type,
             "url": file_url(job_id, f.name)}
            for f in item.files
        ],
        "stats": item.stats,
        "error": {"code": item.error.code, "message": item.error.message} if item.error else None,
    }

"""The named Gradio API for scripts: /generate, /job_status, /cancel_job, /models.

Each returns exactly `JobService.status(job)` (the REST shape) and goes through the job service
only. /generate streams status while the job runs; the result files come on the last update
only, because gradio_client downloads every file output on every update.

(No `from __future__ import annotations` here: gr.api reads these functions' type hints to
describe the endpoints, and string annotations of local functions would show as Any.)

The docstrings are also the MCP tools' descriptions (image2model/web/mcp_tools.py). Gradio
reads them line by line: the text before `Args:` is the description, each `name: text` line
under `Args:` describes one parameter (a wrapped line would be dropped), and the lines under
`Returns:` are joined with ", ". So every entry stays on one line, however long.
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from image2model.errors import AppError
from image2model.jobs.changes import read_interval
from image2model.jobs.model import OPEN_OWNER, Job
from image2model.jobs.service import JobService, Upload
from image2model.jobs.store import StoreUnavailable
from image2model.metrics import refusals_counted
from image2model.outage import OutageLog
from image2model.runtime import Runtime
from image2model.web.page.named_files import NamedFiles
from image2model.web.security import ApiSecurity
from image2model.web.page.files import uploads_from
from image2model.web.page.view import friendly

log = logging.getLogger(__name__)
page_outage = OutageLog(log, "job store (followed by the page and /generate)")

WAIT_SECONDS = 1.0
OUTAGE_RETRY_SECONDS = 1.0


def parse_options(options: Any) -> dict[str, Any] | None:
    """Options arrive as a JSON object, or as a string holding one (empty means defaults)."""
    if options is None or options == "":
        return None
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            raise AppError("invalid_parameter", "Options must be a JSON object, like {\"seed\": 1}.", 422) from None
    if options is None:
        return None
    if not isinstance(options, dict):
        raise AppError("invalid_parameter", "Options must be a JSON object, like {\"seed\": 1}.", 422)
    return options


def create_job(runtime: Runtime, uploads: list[Upload], model: str | None, mode: str | None,
               options: Any, fal_key: str | None = None, share: str = "") -> dict[str, Any]:
    """Create the job (blocking: it reads and copies the images) and return its status.
    `share`: the caller's identity, for fair turns in the queue."""
    with refusals_counted():  # the service counts its own refusals
        params = parse_options(options)
    job = runtime.service.create_job(uploads, model=model or None, mode=mode or None, params=params,
                                     fal_key=fal_key if isinstance(fal_key, str) else None, share=share)
    return runtime.service.status(job)


async def follow_job(service: JobService, job_id: str,
                     every: float | None = None) -> AsyncIterator[dict[str, Any] | None]:
    """Yield the job's status now, then whenever it changes, until it is finished.

    Waits on the store's change events, never polls the queue. With `every`, also yields
    after that many quiet seconds (the page's elapsed times keep moving). A job deleted
    meanwhile ends the stream with AppError job_not_found. While the job store cannot be
    reached it yields None once and tries again every second: the job goes on in the
    workers, and the stream picks it up when the store is back.
    """
    job: Job | None = None
    read_at, reachable = 0.0, True
    while job is None or not job.state.terminal:
        try:
            if job is not None and reachable:
                await service.wait_for_change_async(job_id, job.version, every or WAIT_SECONDS)
                await asyncio.sleep(max(0.0, read_at + read_interval(len(job.items)) - time.monotonic()))
            read_at = time.monotonic()
            fresh, status = await asyncio.to_thread(_read_status, service, job_id)
        except StoreUnavailable as exc:
            page_outage.failed(exc)
            if reachable:
                reachable = False
                yield None
            await asyncio.sleep(OUTAGE_RETRY_SECONDS)
            continue
        changed = job is None or not reachable or fresh.version != job.version
        if not reachable:
            page_outage.ok()
            reachable = True
        job = fresh
        if changed or every is not None:
            yield status


def _read_status(service: JobService, job_id: str) -> tuple[Job, dict[str, Any]]:
    """The job and its status, read off the event loop (a hanging store must not stall it)."""
    job = service.get(job_id, OPEN_OWNER)
    return job, service.status(job)


def model_file_paths(runtime: Runtime, status: dict[str, Any]) -> list[str]:
    """The models (GLB) only: a script loads each file it gets. Previews and cut-outs stay
    in the status, each file with its URL."""
    return [str(runtime.files.result_path(status["job_id"], result["name"]))
            for item in status["items"] for result in item["files"] if result["kind"] == "model"]


def register_api(runtime: Runtime, security: ApiSecurity) -> None:
    """Add the four named endpoints to the Blocks being built. A /generate counts against the
    caller's job starts (`security.count_start`), as an upload through REST does."""
    service = runtime.service

    async def generate(images: list[Any] | None, model: str | None, mode: str | None, options: Any,
                       fal_key: str | None = "", request: gr.Request = None,  # type: ignore[assignment]
                       progress: gr.Progress = gr.Progress()) -> AsyncIterator[tuple[dict[str, Any], Any]]:
        """Turn photos of objects into 3D models (GLB files): one model per photo, or one model from
        several views of one object. Waits until every model is made: seconds with the offline
        model, minutes with a FAL model.

        Args:
            images: the photos (1 to 25 by default; JPEG, PNG, WebP, HEIC, ...), each a public http(s) URL or a data: URI.
            model: a model id from the `models` tool, e.g. "local/relief"; "" for the default model.
            mode: "per_image" (one model per photo) or "multi_view" (one model from all photos); "" for the model's first.
            options: the model's parameters as a JSON object, e.g. {"seed": 1}; {} for its defaults (see `models`).
            fal_key: optional, your own FAL.AI key: FAL models then run on your account (never stored after the job, never shown); "" for this server's.

        Returns:
            the job status (job_id, state, and per photo its message, error and files, previews included) and the list of the GLB models, each with an absolute `url` to download it.
        """
        try:
            visitor = await security.may_start(request)
            status = await asyncio.to_thread(create_job, runtime, uploads_from(images), model, mode, options,
                                             fal_key, visitor)
            await security.count_start(visitor)
            async for status in follow_job(service, status["job_id"]):
                if status is None:  # the store is away for a moment: the job goes on
                    continue
                progress(status["progress"] / 100, desc=f"{status['counts']['succeeded']} of "
                         f"{len(status['items'])} models ready")
                if status["finished"]:
                    yield status, model_file_paths(runtime, status)
                else:
                    yield status, None
        except Exception as exc:  # noqa: BLE001 - the client gets words, never a traceback
            raise gr.Error(friendly(exc), print_exception=False) from None

    def job_status(job_id: str) -> dict[str, Any]:
        """The status of a job made by `generate`: its state, progress, and each photo's progress,
        message, error and result files.

        Args:
            job_id: the job_id that `generate` returned.

        Returns:
            job_id, state (queued, running, succeeded, partial, failed or cancelled), progress (0 to 100), and items: per photo its state, message, error and files, each file with a `url` relative to this server (e.g. /api/v1/download/<job_id>/duck.glb).
        """
        try:
            return service.status(service.get(job_id, OPEN_OWNER))
        except Exception as exc:  # noqa: BLE001
            raise gr.Error(friendly(exc), print_exception=False) from None

    def cancel_job(job_id: str) -> dict[str, Any]:
        """Stop a job: waiting photos never start, running ones stop; finished models stay.

        Args:
            job_id: the job_id that `generate` returned.

        Returns:
            the job's status afterwards, as `job_status` gives it.
        """
        try:
            return service.status(service.cancel(job_id, OPEN_OWNER))
        except Exception as exc:  # noqa: BLE001
            raise gr.Error(friendly(exc), print_exception=False) from None

    def models() -> list[dict[str, Any]]:
        """The 3D models this server offers, to choose `model`, `mode` and `options` for `generate`.

        Returns:
            per model its id, description, whether it is available here (and why not), the default one, its modes, the view order for multi_view, and its parameters with types, defaults, ranges and choices.
        """
        return service.models()

    with gr.Group(visible=False):
        images = NamedFiles(file_count="multiple", type="filepath", label="images")
        model = gr.Textbox("", label="model")
        mode = gr.Textbox("", label="mode")
        options = gr.JSON({}, label="options")
        fal_key = gr.Textbox("", label="fal_key", type="password")
        status = gr.JSON(label="status")
        files = gr.File(file_count="multiple", label="files")
    trigger = gr.Button(visible=False)
    # NamedFiles: the name a client gave (orig_name) names the results, not the temp file's "blob"
    trigger.click(generate, [images, model, mode, options, fal_key], [status, files], api_name="generate",
                  concurrency_limit=None, show_progress="hidden")
    gr.api(job_status, api_name="job_status", concurrency_limit=None)
    gr.api(cancel_job, api_name="cancel_job", concurrency_limit=None)
    gr.api(models, api_name="models", concurrency_limit=None)

"""The named Gradio API for scripts: /generate, /job_status, /cancel_job, /models.

Each returns exactly `JobService.status(job)` (the REST shape) and goes through the job service
only. /generate streams status while the job runs; the result files come on the last update
only, because gradio_client downloads every file output on every update.

(No `from __future__ import annotations` here: gr.api reads these functions' type hints to
describe the endpoints, and string annotations of local functions would show as Any.)
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from image2model.errors import AppError
from image2model.jobs.service import JobService, Upload
from image2model.runtime import Runtime
from image2model.web.ui_files import uploads_from
from image2model.web.ui_view import friendly

log = logging.getLogger(__name__)

WAIT_SECONDS = 1.0


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
               options: Any) -> dict[str, Any]:
    """Create the job (blocking: it reads and copies the images) and return its status."""
    job = runtime.service.create_job(uploads, model=model or None, mode=mode or None,
                                     params=parse_options(options))
    return runtime.service.status(job)


async def follow_job(service: JobService, job_id: str, every: float | None = None) -> AsyncIterator[dict[str, Any]]:
    """Yield the job's status now, then whenever it changes, until it is finished.

    Waits on the store's change events, never polls the queue. With `every`, also yields
    after that many quiet seconds (the page's elapsed times keep moving). A job deleted
    meanwhile ends the stream with AppError job_not_found.
    """
    job = await asyncio.to_thread(service.get, job_id)
    yield service.status(job)
    while not job.state.terminal:
        await service.wait_for_change_async(job_id, job.version, every or WAIT_SECONDS)
        fresh = await asyncio.to_thread(service.get, job_id)
        changed = fresh.version != job.version
        job = fresh
        if changed or every is not None:
            yield service.status(job)


def result_file_paths(runtime: Runtime, status: dict[str, Any]) -> list[str]:
    files = []
    for item in status["items"]:
        for result in item["files"]:
            files.append(str(runtime.files.result_path(status["job_id"], result["name"])))
    return files


def register_api(runtime: Runtime) -> None:
    """Add the four named endpoints to the Blocks being built."""
    service = runtime.service

    async def generate(images: list[Any] | None, model: str | None, mode: str | None, options: Any,
                       progress: gr.Progress = gr.Progress()) -> AsyncIterator[tuple[dict[str, Any], Any]]:
        """Turn images (1 to 25 by default) into 3D models. model: a catalog id ("" for the default); mode:
        "per_image" or "multi_view" ("" for the model's first); options: a JSON object of the
        model's parameters. Streams the job status while it runs; the last update carries the
        result files (GLB models, and previews when the model makes them)."""
        try:
            status = await asyncio.to_thread(create_job, runtime, uploads_from(images), model, mode, options)
            async for status in follow_job(service, status["job_id"]):
                progress(status["progress"] / 100, desc=f"{status['counts']['succeeded']} of "
                         f"{len(status['items'])} models ready")
                if status["finished"]:
                    yield status, result_file_paths(runtime, status)
                else:
                    yield status, None
        except Exception as exc:  # noqa: BLE001 - the client gets words, never a traceback
            raise gr.Error(friendly(exc), print_exception=False) from None

    def job_status(job_id: str) -> dict[str, Any]:
        """The status of a job: its state, progress and each image's result files (as URLs)."""
        try:
            return service.status(service.get(job_id))
        except Exception as exc:  # noqa: BLE001
            raise gr.Error(friendly(exc), print_exception=False) from None

    def cancel_job(job_id: str) -> dict[str, Any]:
        """Stop a job: waiting images never start, running ones stop; finished results stay."""
        try:
            return service.status(service.cancel(job_id))
        except Exception as exc:  # noqa: BLE001
            raise gr.Error(friendly(exc), print_exception=False) from None

    def models() -> list[dict[str, Any]]:
        """The model catalog: ids, descriptions, modes, view order and typed parameters."""
        return service.models()

    with gr.Group(visible=False):
        images = gr.File(file_count="multiple", type="filepath", label="images")
        model = gr.Textbox("", label="model")
        mode = gr.Textbox("", label="mode")
        options = gr.JSON({}, label="options")
        status = gr.JSON(label="status")
        files = gr.File(file_count="multiple", label="files")
    trigger = gr.Button(visible=False)
    trigger.click(generate, [images, model, mode, options], [status, files], api_name="generate",
                  concurrency_limit=None, show_progress="hidden")
    gr.api(job_status, api_name="job_status", concurrency_limit=None)
    gr.api(cancel_job, api_name="cancel_job", concurrency_limit=None)
    gr.api(models, api_name="models", concurrency_limit=None)

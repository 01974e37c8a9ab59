"""REST API v1: the original image2model contract over the one JobService.

Registered on the FastAPI app before Gradio is mounted at "/" (a route added after that mount
is shadowed). One id per job (`task_id` == `job_id`); errors are {"detail": message, "error":
{code, message, details}}. Access: with API_KEYS set, /api/v1 needs a key (Bearer or
X-API-Key) and a job belongs to the key that made it (any other key gets 404). Reading one job
(status, stream, downloads) also works with that job's token (`?token=`, from the upload
answer), for browsers that cannot send a header. Downloads of a job made on the page (owner
"") stay reachable by its unguessable id, because the page's download links carry no key.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Mount

from image2model.errors import AppError
from image2model.jobs.model import Job
from image2model.jobs.store import StoreUnavailable
from image2model.jobs.service import JobService, Upload, file_url
from image2model.metrics import refusals_counted
from image2model.providers.catalog import catalog
from image2model.runtime import Runtime
from image2model.storage import check_job_id
from image2model.web.rest import downloads
from image2model.web.envelope import HttpAppError, install_error_handlers
from image2model.web.rest.metrics_route import add_metrics_route
from image2model.web.rest.schemas import (
    STREAM_EVENT_MODELS, DeleteResponse, DownloadList, ErrorEnvelope, Health, JobLinks, JobStatus, ModelList,
    OriginalHealth, Ready, ResultFileInfo, UploadResponse,
)
from image2model.web.security import API_PREFIX, ApiSecurity, Caller, install_security
from image2model.web.tokens import JobTokens
from image2model.web.rest.sse import Watchers, job_events, parse_last_event_id, stream_is_over
from image2model.web.rest.uploads import ReceivedForm, UploadLimits, receive_form
from image2model.worker.liveness import pid_gone_here

log = logging.getLogger(__name__)

ERROR_TEXT = {400: "Bad input", 401: "Missing or invalid API key", 404: "No such job or file",
              413: "Too large", 415: "Not an accepted image type", 416: "Range not satisfiable",
              422: "Invalid parameter or field", 429: "Rate or spending limit reached",
              503: "A dependency is unavailable, or too many photos wait already (queue_full)", 507: "The server's disk is full; nothing was stored"}
MODEL_TYPES = ("model/gltf-binary", "image/webp", "image/png", "image/jpeg", "model/stl", "application/x-ply",
               "application/zip", "application/octet-stream")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
ANY_METHOD = [*ALL_METHODS, "TRACE", "CONNECT", "QUERY", "PROPFIND", "SEARCH"]
# Key optional, documented as such: downloads of page jobs, and reading one job with its token
# (`?token=`, or attached to the task id).
KEY_OPTIONAL = ("/download/", "/status/tasks/")
FAL_KEY_HELP = ("Your own FAL.AI key: this job's FAL requests run on your account, and this server's "
                "spending limit does not apply. Sealed while the job runs, deleted when it ends, never shown.")
TOKEN_HELP = ("This job's token (`token` in the upload answer): read access to this job where no key "
              "header can be sent, e.g. a browser's EventSource. Not needed when the API is open.")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorEnvelope, "description": ERROR_TEXT[s]} for s in statuses}


@dataclass
class Api:
    runtime: Runtime
    security: ApiSecurity
    watchers: Watchers
    limits: UploadLimits

    @property
    def service(self) -> JobService:
        return self.runtime.service

    @property
    def incoming(self) -> Path:
        """Where uploads are streamed to before the job service takes them."""
        return self.runtime.files.incoming

    def own_job(self, job_id: str, caller: Caller) -> Job:
        """Cancel, delete: only the owning key (anyone when the API is open); a token gives no
        such right, even attached to a task id."""
        return self.service.get(split_handle(job_id, None)[0], caller.owner_filter)

    def readable_job(self, job_id: str, caller: Caller, token: str | None) -> Job:
        """Status, stream: the owning key, or this job's token."""
        job_id, token = split_handle(job_id, token)
        return self.service.get(job_id, self.security.read_filter(job_id, caller, token))

    def downloadable_job(self, job_id: str, caller: Caller, token: str | None = None) -> Job:
        """Downloads: a page-made job by its id alone, a key's job with that key or its token."""
        job_id, token = split_handle(job_id, token)
        job = self.service.get(job_id)
        if caller.may_download(job.owner):
            return job
        if caller.key_owner is None:
            self.security.read_filter(job.id, caller, token)  # says what is missing unless the token fits
            return job
        raise AppError("job_not_found", "No job with that id (it may have expired).", 404)


def job_owner(runtime: Runtime) -> Callable[[str], str | None]:
    """Who owns a job (None when there is no such job), for the guard on Gradio's file route."""
    def owner_of(job_id: str) -> str | None:
        try:
            job = runtime.store.get(job_id)
        except StoreUnavailable:
            return "?"  # cannot tell: serve nothing rather than a key's files
        return job.owner if job is not None else None
    return owner_of


def split_handle(value: str, token: str | None) -> tuple[str, str | None]:
    """A job id, or a task handle `<job id>.<token>` (the upload's `task_id` when keys are
    required), as the job id and the token to check (a `?token=` given as well wins)."""
    job_id, dot, attached = value.partition(".")
    return check_job_id(job_id), (token or attached) if dot else token


def build_api(app: FastAPI, runtime: Runtime) -> None:
    settings = runtime.settings
    tokens = JobTokens(runtime.secret, settings.job_token_seconds)
    api = Api(runtime, ApiSecurity(settings, tokens), Watchers(runtime.service, settings.sse_heartbeat_seconds),
              UploadLimits(settings.max_images, settings.max_image_bytes))
    app.state.rest_api = api  # for operators and tests: open streams, limiter, keys in use
    install_error_handlers(app)
    install_security(app, settings, runtime.files.root, job_owner(runtime))
    # uploads only: the web's own temp files (workers' housekeeping sweeps both, from its start)
    left = runtime.files.remove_abandoned(pid_gone_here, results=False)
    if left:
        log.info("removed %d upload files left by stopped processes", len(left))
    router = APIRouter(prefix=API_PREFIX, tags=["jobs"])
    _job_routes(router, api)
    _download_routes(router, api)
    _catalog_routes(router, api)
    app.include_router(router)
    _health_routes(app, api)
    add_metrics_route(app, runtime, api.watchers)
    _fallback_route(app)
    _document_auth(app, api.security.keys.required)


# --- jobs ----------------------------------------------------------------------------------
SSE_EVENT = {  # one event, as OpenAPI < 3.2 describes event streams
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "completed", "failed", "cancelled", "error",
                                              "task_progress", "task_completed", "task_failed", "file_update"],
                  "description": "Ours, each followed by the same snapshot under the original API's "
                                 "name (task_*), with its fields added; file_update: one item changed"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer", "minimum": 0},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"anyOf": [{"$ref": f"#/components/schemas/{m.__name__}"}
                                             for m in STREAM_EVENT_MODELS]}},
    },
}


def upload_openapi(max_images: int) -> dict[str, Any]:
    """The multipart body in OpenAPI terms (the route parses the stream itself)."""
    properties = {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                  "maxItems": max_images,
                  "description": "1 to MAX_IMAGES images: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF."},
        "model": {"type": "string", "description": "A model id from GET /api/v1/models; empty for the default."},
        "mode": {"type": "string", "enum": ["per_image", "multi_view"],
                 "description": "One model per image, or one model from several views."},
        "params": {"type": "string", "description": "The model's parameters as a JSON object "
                   "(see params_schema in GET /api/v1/models)."},
        "face_limit": {"type": "integer", "description": "The original API's face cap: sent as the model's "
                       "own face-count parameter (brought into its range), or ignored with a note in "
                       "`notes` when the model has none."},
    }
    schema = {"type": "object", "required": ["files"], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _job_routes(router: APIRouter, api: Api) -> None:
    any_caller = api.security.dependency()
    reader = api.security.dependency(key_required=False)  # a key, or the job's token (checked by the route)
    upload_caller = api.security.dependency(groups=("api", "upload"))

    async def upload(request: Request, response: Response, queue_later: BackgroundTasks,
                     caller: Caller = Depends(upload_caller),
                     fal_key: str | None = Header(None, alias="X-Fal-Key", description=FAL_KEY_HELP)) -> dict:
        """Start a job. The images are streamed to disk with the size cap enforced while reading.
        Its items are queued once the answer is sent, so their start does not delay it."""
        with refusals_counted():  # refused before the job service saw it (size, type, form)
            form = await receive_form(request, api.incoming, api.limits)
        try:
            job, notes = await run_in_threadpool(_create_job, api, form, caller, fal_key)
        finally:
            await run_in_threadpool(form.cleanup)
        body = _upload_body(api, job, form, notes)
        response.headers["Location"] = body["links"]["status"]
        queue_later.add_task(api.service.queue_items, job)
        return body

    for path, listed in (("/upload/", True), ("/upload", False)):
        router.add_api_route(path, upload, methods=["POST"], status_code=202, response_model=UploadResponse,
                             include_in_schema=listed, openapi_extra=upload_openapi(api.limits.max_files),
                             summary="Upload images", responses=errors(400, 401, 413, 415, 422, 429, 503, 507))

    def status(task_id: str, caller: Caller = Depends(reader),
               token: str | None = Query(None, description=TOKEN_HELP)) -> Response:
        """The job's state, progress and each image's results."""
        # The hottest route: job_status() already has the JobStatus shape (a test keeps them in
        # step), so it is not re-validated through pydantic, and it is cached per job version.
        job_id, token = split_handle(task_id, token)
        body = api.service.status_json(job_id, api.security.read_filter(job_id, caller, token))
        return Response(body, media_type="application/json")

    for path, listed in (("/status/tasks/{task_id}", True), ("/status/tasks/{task_id}/status", False)):
        # the second: what clients of the original API call
        router.add_api_route(path, status, methods=["GET"], response_model=JobStatus, include_in_schema=listed,
                             responses=errors(401, 404, 422, 429, 503), summary="Job status")

    @router.get("/status/tasks/{task_id}/stream", response_class=StreamingResponse, response_model=None,
                summary="Job status as Server-Sent Events",
                responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                                 "description": "progress events, then completed, failed or cancelled; each "
                                                "event's data is a JobStatus and its id the job's version"},
                           204: {"description": "The job is over and the client has its last event"},
                           **errors(401, 404, 422, 429, 503)})
    async def stream(task_id: str, caller: Caller = Depends(reader),
                     token: str | None = Query(None, description=TOKEN_HELP),
                     last_event_id: str | None = Header(None, alias="Last-Event-ID")) -> Response:
        job = await run_in_threadpool(api.readable_job, task_id, caller, token)  # 404 before any stream opens
        return _event_stream(api, job, last_event_id)

    @router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobStatus,
                 responses=errors(401, 404, 422, 429, 503), summary="Cancel a job")
    def cancel(job_id: str, caller: Caller = Depends(any_caller)) -> dict:
        job = api.own_job(job_id, caller)
        return api.service.status(api.service.cancel(job.id, caller.owner_filter))

    @router.delete("/jobs/{job_id}", response_model=DeleteResponse, responses=errors(401, 404, 422, 429, 503),
                   summary="Delete a job and its files")
    async def delete(job_id: str, caller: Caller = Depends(any_caller)) -> dict:
        job = await run_in_threadpool(api.own_job, job_id, caller)
        await run_in_threadpool(api.service.delete, job.id, caller.owner_filter)
        api.watchers.job_deleted(job.id)
        return {"job_id": job.id, "deleted": True}


def _create_job(api: Api, form: ReceivedForm, caller: Caller, fal_key: str | None) -> tuple[Job, list[str]]:
    """The job, and notes on how the request was read (face_limit mapped or ignored)."""
    fields = form.fields
    uploads = [Upload(f.filename, f.path) for f in form.files]
    model = fields.get("model") or None
    notes = []
    with refusals_counted():  # the service counts its own refusals
        params = _parse_params(fields)
        face_limit = fields.get("face_limit", "").strip()
        if face_limit:
            params, note = api.service.model_spec(model, own_key=bool(fal_key)).with_face_limit(params, face_limit)
            notes.append(note)
    job = api.service.create_job(uploads, model=model, mode=fields.get("mode") or None, params=params,
                                 owner=caller.job_owner, fal_key=fal_key, share=caller.share, queue=False)
    if fal_key and fal_key.strip() and not job.own_fal_key:
        notes.append("Your FAL key was not used or kept: the offline model runs here for free.")
    return job, notes


def _parse_params(fields: dict[str, str]) -> dict[str, Any] | None:
    """`params`: a JSON object of the model's parameters."""
    raw = fields.get("params", "").strip()
    if not raw:
        return None
    try:
        params = json.loads(raw)
    except (ValueError, RecursionError):
        params = None
    if not isinstance(params, dict):
        raise AppError("invalid_parameter", "'params' must be a JSON object, e.g. {\"seed\": 42}.", 422,
                       {"field": "params"})
    return params


def _links(job_id: str) -> dict[str, str]:
    return {"status": f"{API_PREFIX}/status/tasks/{job_id}", "stream": f"{API_PREFIX}/status/tasks/{job_id}/stream",
            "downloads": f"{API_PREFIX}/download/{job_id}/all", "zip": f"{API_PREFIX}/download/{job_id}/all.zip",
            "cancel": f"{API_PREFIX}/jobs/{job_id}/cancel", "delete": f"{API_PREFIX}/jobs/{job_id}"}


def _upload_body(api: Api, job: Job, form: ReceivedForm, notes: list[str]) -> dict[str, Any]:
    status = api.service.status(job)
    count = len(form.files)
    token, expires = api.security.tokens.mint(job.id)
    # With keys required, task_id carries the token, so a client that builds its EventSource
    # URL from task_id alone (the original frontend) can follow the job; job_id stays plain.
    task_id = f"{job.id}.{token}" if api.security.keys.required else job.id
    return {
        "job_id": job.id, "task_id": task_id, "status": status["state"], "model": job.model,
        "mode": job.mode.value, "total_files": count,
        "uploaded_files": [{"filename": f.filename or f"image-{n + 1}", "file_size": f.size}
                           for n, f in enumerate(form.files)],
        "items": status["items"], "links": JobLinks(**_links(job.id)).model_dump(),
        "message": f"Accepted {count} image{'s' if count != 1 else ''}; follow links.stream for progress.",
        "notes": notes, "token": token, "token_expires_at": expires,
    }


def _event_stream(api: Api, job: Job, last_event_id: str | None) -> Response:
    last = parse_last_event_id(last_event_id)
    if stream_is_over(job, last):
        return Response(status_code=204)
    settings = api.runtime.settings
    events = job_events(api.watchers, job, last, settings.sse_heartbeat_seconds, settings.sse_retry_ms)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream; charset=utf-8", headers=headers)


# --- downloads -----------------------------------------------------------------------------
def _download_routes(router: APIRouter, api: Api) -> None:
    file_caller = api.security.dependency(key_required=False)
    token_query = Query(None, description=TOKEN_HELP)

    @router.get("/download/{job_id}/all", response_model=DownloadList, responses=errors(401, 404, 422, 429, 503),
                summary="List a job's result files", tags=["downloads"])
    def list_files(request: Request, job_id: str, caller: Caller = Depends(file_caller),
                   token: str | None = token_query) -> dict:
        job = api.downloadable_job(job_id, caller, token)
        return _file_list(job, api.security.public_base(request), _link_query(api, job))

    @router.get("/download/{job_id}/all.zip", response_class=StreamingResponse, response_model=None,
                summary="All result files as one ZIP (streamed)", tags=["downloads"],
                responses={200: {"content": {"application/zip": {"schema": {"type": "string",
                                                                             "format": "binary"}}},
                                 "description": "A ZIP of every result file"}, **errors(401, 404, 422, 429, 503)})
    def zip_all(request: Request, job_id: str, caller: Caller = Depends(file_caller),
                token: str | None = token_query) -> Response:
        return downloads.zip_response(api.runtime.files, api.downloadable_job(job_id, caller, token),
                                      head=request.method == "HEAD")

    # HEAD answers as GET would, without the body (a download manager asks first)
    router.add_api_route("/download/{job_id}/all", list_files, methods=["HEAD"], include_in_schema=False)
    router.add_api_route("/download/{job_id}/all.zip", zip_all, methods=["HEAD"], response_model=None,
                         include_in_schema=False)

    def download(job_id: str, filename: str, caller: Caller = Depends(file_caller),
                 format: Literal["glb", "obj", "stl", "ply", ""] | None = Query(  # noqa: A002 - the API's name
                     None, description="Convert the model: obj (a ZIP with .mtl and textures), stl or ply; "
                                       "glb or empty (a form's blank choice) for the model as it is."),
                 token: str | None = token_query, if_none_match: str | None = Header(None),
                 if_modified_since: str | None = Header(None)) -> Response:
        """One result file, with ETag, ranges and on-demand conversion."""
        job = api.downloadable_job(job_id, caller, token)
        path, info = downloads.result_file(api.runtime.files, job, filename)
        variant = "" if format in (None, "", "glb") else format
        etag = downloads.etag_for(job.id, filename, info, variant)
        if downloads.not_modified(if_none_match, etag, if_modified_since, info):
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": downloads.CACHE_CONTROL})
        if variant:
            return downloads.converted_response(api.runtime.files, path, job, filename, variant, etag)
        _, result = downloads.find_result(job, filename)
        return downloads.file_response(path, info, filename, result.content_type, etag)

    binary = {"schema": {"type": "string", "format": "binary"}}
    file_responses = {200: {"content": {t: binary for t in MODEL_TYPES}, "description": "The file (or its conversion)"},
                      206: {"description": "Part of the file (Range)"}, 304: {"description": "Not modified"},
                      **errors(400, 401, 404, 416, 422, 429, 503)}
    router.add_api_route("/download/{job_id}/{filename}", download, methods=["GET"], response_model=None,
                         response_class=Response, responses=file_responses, summary="Download a result file",
                         tags=["downloads"])
    router.add_api_route("/download/{job_id}/{filename}", download, methods=["HEAD"], response_model=None,
                         include_in_schema=False)


def _link_query(api: Api, job: Job) -> str:
    """What a link needs besides the URL: a fresh token when keys are required and the job is a
    key's (its owner may hand the link to a browser)."""
    if not api.security.keys.required or not job.owner:
        return ""
    return "?token=" + api.security.tokens.mint(job.id)[0]


def _file_list(job: Job, base: str, query: str) -> dict[str, Any]:
    """Our list, plus what the original API's clients read: absolute `download_urls[]` in the
    same order as `files[]`, `mime_type`, `created_time`, and the item's preview as
    `rendered_image`. Every link carries `query` (a key's job: a fresh token), so any of them
    works in a browser."""
    files, urls = [], []
    for item in job.items:
        preview = item.preview_file
        for f in item.files:
            url = file_url(job.id, f.name)
            rendered = ({"url": f"{base}{file_url(job.id, preview.name)}{query}"}
                        if preview is not None and f.kind == "model" else None)
            files.append(ResultFileInfo(
                filename=f.name, size=f.size, content_type=f.content_type, mime_type=f.content_type, kind=f.kind,
                item=item.index, item_name=item.name, url=f"{url}{query}", rendered_image=rendered,
                created_time=_iso_time(item.finished_at)))
            urls.append(f"{base}{url}{query}")
    return {"job_id": job.id, "state": job.state.value, "finished": job.state.terminal,
            "total_files": len(files), "files": files, "download_urls": urls,
            "zip_url": f"{API_PREFIX}/download/{job.id}/all.zip{query}"}


def _iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


# --- catalog, health, fallback -------------------------------------------------------------
def _catalog_routes(router: APIRouter, api: Api) -> None:
    any_caller = api.security.dependency()

    @router.get("/models", response_model=ModelList, responses=errors(401, 422, 429), tags=["models"],
                summary="The model catalog, each model's parameters as JSON Schema")
    def models(caller: Caller = Depends(any_caller)) -> dict:
        described = api.service.models()
        specs = catalog()
        for entry in described:
            entry["params_schema"] = specs[entry["id"]].params_json_schema()
        default = next((m["id"] for m in described if m["default"]), "")
        return {"default": default, "models": described}


def _health_routes(app: FastAPI, api: Api) -> None:
    @app.get("/health", response_model=Health, tags=["health"], summary="Alive")
    def health() -> dict:
        return {"status": "ok"}

    def original_health() -> dict:
        """Alive, in the original API's words (its monitors and tests call this)."""
        return {"status": "healthy", "service": "image2model", "version": app.version}

    for path, listed in ((f"{API_PREFIX}/health/", True), (f"{API_PREFIX}/health", False)):
        app.add_api_route(path, original_health, methods=["GET"], response_model=OriginalHealth, tags=["health"],
                          include_in_schema=listed, summary="Alive (the original API's health check)")
        app.add_api_route(path, original_health, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # load balancers probe so

    @app.get("/ready", response_model=Ready, responses=errors(503), tags=["health"],
             summary="Store, queue and data directory usable")
    def ready() -> dict:
        runtime = api.runtime
        store_ok = _safely(runtime.store.ping)
        checks = {"store": store_ok,
                  # in Redis mode the queue lives on the same server the store just answered from
                  "queue": store_ok if runtime.settings.use_redis else _safely(
                      lambda: runtime.huey.pending_count() >= 0),
                  "files": _safely(runtime.files.usable)}
        free_mb = runtime.files.free_mb()
        checks["disk"] = free_mb >= runtime.settings.min_free_disk_mb
        workers = _live_workers(runtime) if store_ok else 0
        checks["workers"] = workers > 0
        body = {"checks": checks, "queue": "redis" if runtime.settings.use_redis else "sqlite",
                "fal_configured": runtime.settings.fal_configured, "auth_required": api.security.keys.required,
                "workers": workers, "disk_free_mb": round(free_mb, 1)}
        if not all(checks.values()):
            failing = [READY_WORDS[name] for name, ok in checks.items() if not ok]
            raise AppError("not_ready", f"Not ready: {'; '.join(failing)}.", 503, body)
        return {"status": "ready", **body}

    app.add_api_route("/ready", ready, methods=["HEAD"], include_in_schema=False)


READY_WORDS = {"store": "the job store is unreachable", "queue": "the work queue is unreachable",
               "files": "the data directory is not writable", "disk": "the disk is (nearly) full",
               "workers": "no worker is running (start huey_consumer, or turn EMBEDDED_WORKER on)"}


def _live_workers(runtime: Runtime) -> int:
    try:
        return len(runtime.store.alive_processes(time.time()))
    except Exception:  # noqa: BLE001 - counted as none; the store check says why
        return 0



def _safely(check: Callable[[], object]) -> bool:
    try:
        return bool(check())
    except Exception:  # noqa: BLE001 - any failure means "not usable", logged for the operator
        log.warning("readiness check failed", exc_info=True)
        return False


def _document_auth(app: FastAPI, required: bool) -> None:
    """The OpenAPI security says what is true: no key when the API is open, a key everywhere
    but health, downloads and status reads (where a job token may stand in) when API_KEYS is set. The progress
    stream's event schemas are added to the components too."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if "security" not in operation:
                    continue
                if not required:
                    del operation["security"]
                elif any(part in path for part in KEY_OPTIONAL):
                    operation["security"] = [*operation["security"], {}]
        if not required:
            schema.get("components", {}).pop("securitySchemes", None)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in STREAM_EVENT_MODELS:  # the stream's events, which no route returns as JSON
            described = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in described.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components.setdefault(model.__name__, described)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _fallback_route(app: FastAPI) -> None:
    """Unknown /api/v1 paths and wrong methods (even QUERY or TRACE) get the envelope, not
    Gradio's 404 page: Gradio is mounted at "/" and would answer them."""

    async def fallback(request: Request) -> Response:
        routes = [r for r in app.router.routes
                  if not isinstance(r, Mount) and getattr(r, "endpoint", None) is not fallback]
        allowed = [m for m in ALL_METHODS
                   if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]
        if allowed:
            raise HttpAppError("method_not_allowed", f"{request.method} is not allowed here; use "
                               f"{' or '.join(allowed)}.", 405, headers={"Allow": ", ".join(allowed)})
        raise AppError("not_found", "No such API route; see /docs.", 404)

    for path in (f"{API_PREFIX}/{{rest:path}}", "/health", "/ready"):
        app.add_route(path, fallback, methods=ANY_METHOD, include_in_schema=False)


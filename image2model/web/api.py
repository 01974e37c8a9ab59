"""REST API v1: the original image2model contract over the one JobService.

Registered on the FastAPI app before Gradio is mounted at "/" (a route added after that mount
is shadowed). One id per job (`task_id` == `job_id`); errors are {"error": {code, message,
details}}. Access: with API_KEYS set, /api/v1 needs a Bearer key and a job belongs to the key
that made it (any other key gets 404). Downloads of a job made on the page (owner "") stay
reachable by its unguessable id, because the page's download links cannot carry a key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Mount

from image2model.errors import AppError
from image2model.jobs.model import Job
from image2model.jobs.service import JobService, Upload, file_url
from image2model.providers.catalog import catalog
from image2model.runtime import Runtime
from image2model.storage import check_job_id
from image2model.web import downloads
from image2model.web.envelope import HttpAppError, install_error_handlers
from image2model.web.schemas import (
    DeleteResponse, DownloadList, ErrorEnvelope, Health, JobLinks, JobStatus, ModelList, Ready, ResultFileInfo,
    UploadResponse,
)
from image2model.web.security import API_PREFIX, ApiSecurity, Caller, install_security, unauthorized
from image2model.web.sse import Watchers, job_events, parse_last_event_id, stream_is_over
from image2model.web.uploads import ReceivedForm, UploadLimits, receive_form, sweep_incoming

log = logging.getLogger(__name__)

ERROR_TEXT = {400: "Bad input", 401: "Missing or invalid API key", 404: "No such job or file",
              413: "Too large", 415: "Not an accepted image type", 416: "Range not satisfiable",
              422: "Invalid parameter or field", 429: "Rate or spending limit reached",
              503: "A dependency is unavailable", 507: "The server's disk is full; nothing was stored"}
MODEL_TYPES = ("model/gltf-binary", "image/webp", "image/png", "image/jpeg", "model/stl", "application/x-ply",
               "application/zip", "application/octet-stream")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
ANY_METHOD = [*ALL_METHODS, "TRACE", "CONNECT", "QUERY", "PROPFIND", "SEARCH"]
OPEN_DOWNLOADS = ("/download/",)  # key optional (page jobs): documented as such


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
        return self.runtime.settings.data_dir / "incoming"

    def own_job(self, job_id: str, caller: Caller) -> Job:
        """Status, stream, cancel, delete: only the owning key (anyone when the API is open)."""
        return self.service.get(check_job_id(job_id), caller.owner_filter)

    def downloadable_job(self, job_id: str, caller: Caller) -> Job:
        """Downloads: a page-made job by its id alone, a key's job only with that key."""
        job = self.service.get(check_job_id(job_id))
        if caller.may_download(job.owner):
            return job
        if caller.key_owner is None:
            raise unauthorized("missing_api_key", "This job's files need the key that created it.")
        raise AppError("job_not_found", "No job with that id (it may have expired).", 404)


def build_api(app: FastAPI, runtime: Runtime) -> None:
    settings = runtime.settings
    api = Api(runtime, ApiSecurity(settings), Watchers(runtime.service, settings.sse_heartbeat_seconds),
              UploadLimits(settings.max_images, int(settings.max_image_mb * 1024 * 1024)))
    app.state.rest_api = api  # for operators and tests: open streams, limiter, keys in use
    install_error_handlers(app)
    install_security(app, settings)
    sweep_incoming(api.incoming)
    router = APIRouter(prefix=API_PREFIX, tags=["jobs"])
    _job_routes(router, api)
    _download_routes(router, api)
    _catalog_routes(router, api)
    app.include_router(router)
    _health_routes(app, api)
    _fallback_route(app)
    _document_auth(app, api.security.keys.required)


# --- jobs ----------------------------------------------------------------------------------
SSE_EVENT = {  # one event, as OpenAPI < 3.2 describes event streams
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "completed", "failed", "cancelled", "error"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "retry": {"type": "integer", "minimum": 0},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"$ref": "#/components/schemas/JobStatus"}},
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
        "face_limit": {"type": "integer", "description": "Shortcut for params.face_limit (models that have it)."},
    }
    schema = {"type": "object", "required": ["files"], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _job_routes(router: APIRouter, api: Api) -> None:
    any_caller = api.security.dependency()
    upload_caller = api.security.dependency(groups=("api", "upload"))

    async def upload(request: Request, response: Response, caller: Caller = Depends(upload_caller)) -> dict:
        """Start a job. The images are streamed to disk with the size cap enforced while reading."""
        form = await receive_form(request, api.incoming, api.limits)
        try:
            job = await run_in_threadpool(_create_job, api, form, caller)
        finally:
            await run_in_threadpool(form.cleanup)
        body = _upload_body(api, job, form)
        response.headers["Location"] = body["links"]["status"]
        return body

    for path, listed in (("/upload/", True), ("/upload", False)):
        router.add_api_route(path, upload, methods=["POST"], status_code=202, response_model=UploadResponse,
                             include_in_schema=listed, openapi_extra=upload_openapi(api.limits.max_files),
                             summary="Upload images", responses=errors(400, 401, 413, 415, 422, 429, 503, 507))

    @router.get("/status/tasks/{task_id}", response_model=JobStatus, responses=errors(401, 404, 422, 429),
                summary="Job status")
    def status(task_id: str, caller: Caller = Depends(any_caller)) -> Response:
        # The hottest route: job_status() already has the JobStatus shape (a test keeps them in
        # step), so it is not re-validated through pydantic, and it is cached per job version.
        body = api.service.status_json(check_job_id(task_id), caller.owner_filter)
        return Response(body, media_type="application/json")

    @router.get("/status/tasks/{task_id}/stream", response_class=StreamingResponse, response_model=None,
                summary="Job status as Server-Sent Events",
                responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                                 "description": "progress events, then completed, failed or cancelled; each "
                                                "event's data is a JobStatus and its id the job's version"},
                           204: {"description": "The job is over and the client has its last event"},
                           **errors(401, 404, 422, 429)})
    async def stream(task_id: str, caller: Caller = Depends(any_caller),
                     last_event_id: str | None = Header(None, alias="Last-Event-ID")) -> Response:
        return await _event_stream(api, task_id, caller, last_event_id)

    @router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobStatus,
                 responses=errors(401, 404, 422, 429), summary="Cancel a job")
    def cancel(job_id: str, caller: Caller = Depends(any_caller)) -> dict:
        api.own_job(job_id, caller)
        return api.service.status(api.service.cancel(job_id, caller.owner_filter))

    @router.delete("/jobs/{job_id}", response_model=DeleteResponse, responses=errors(401, 404, 422, 429),
                   summary="Delete a job and its files")
    async def delete(job_id: str, caller: Caller = Depends(any_caller)) -> dict:
        await run_in_threadpool(api.own_job, job_id, caller)
        await run_in_threadpool(api.service.delete, job_id, caller.owner_filter)
        api.watchers.job_deleted(job_id)
        return {"job_id": job_id, "deleted": True}


def _create_job(api: Api, form: ReceivedForm, caller: Caller) -> Job:
    fields = form.fields
    uploads = [Upload(f.filename, f.path) for f in form.files]
    return api.service.create_job(uploads, model=fields.get("model") or None, mode=fields.get("mode") or None,
                                  params=_parse_params(fields), owner=caller.job_owner)


def _parse_params(fields: dict[str, str]) -> dict[str, Any] | None:
    """`params` (a JSON object) plus the original API's `face_limit` field."""
    raw = fields.get("params", "").strip()
    params: dict[str, Any] | None = None
    if raw:
        try:
            params = json.loads(raw)
        except (ValueError, RecursionError):
            params = None
        if not isinstance(params, dict):
            raise AppError("invalid_parameter", "'params' must be a JSON object, e.g. {\"seed\": 42}.", 422,
                           {"field": "params"})
    face_limit = fields.get("face_limit", "").strip()
    if face_limit:
        params = {**(params or {}), "face_limit": face_limit}  # typed and range-checked by the model
    return params


def _links(job_id: str) -> dict[str, str]:
    return {"status": f"{API_PREFIX}/status/tasks/{job_id}", "stream": f"{API_PREFIX}/status/tasks/{job_id}/stream",
            "downloads": f"{API_PREFIX}/download/{job_id}/all", "zip": f"{API_PREFIX}/download/{job_id}/all.zip",
            "cancel": f"{API_PREFIX}/jobs/{job_id}/cancel", "delete": f"{API_PREFIX}/jobs/{job_id}"}


def _upload_body(api: Api, job: Job, form: ReceivedForm) -> dict[str, Any]:
    status = api.service.status(job)
    count = len(form.files)
    return {
        "job_id": job.id, "task_id": job.id, "status": status["state"], "model": job.model,
        "mode": job.mode.value, "total_files": count,
        "uploaded_files": [{"filename": f.filename or f"image-{n + 1}", "file_size": f.size}
                           for n, f in enumerate(form.files)],
        "items": status["items"], "links": JobLinks(**_links(job.id)).model_dump(),
        "message": f"Accepted {count} image{'s' if count != 1 else ''}; follow links.stream for progress.",
    }


async def _event_stream(api: Api, task_id: str, caller: Caller, last_event_id: str | None) -> Response:
    job = await run_in_threadpool(api.own_job, task_id, caller)  # 404 before any stream opens
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

    @router.get("/download/{job_id}/all", response_model=DownloadList, responses=errors(401, 404, 422, 429),
                summary="List a job's result files", tags=["downloads"])
    def list_files(job_id: str, caller: Caller = Depends(file_caller)) -> dict:
        job = api.downloadable_job(job_id, caller)
        files = [ResultFileInfo(filename=f.name, size=f.size, content_type=f.content_type, kind=f.kind,
                                item=item.index, item_name=item.name, url=file_url(job.id, f.name))
                 for item in job.items for f in item.files]
        return {"job_id": job.id, "state": job.state.value, "finished": job.state.terminal,
                "total_files": len(files), "files": files, "zip_url": f"{API_PREFIX}/download/{job.id}/all.zip"}

    @router.get("/download/{job_id}/all.zip", response_class=StreamingResponse, response_model=None,
                summary="All result files as one ZIP (streamed)", tags=["downloads"],
                responses={200: {"content": {"application/zip": {"schema": {"type": "string",
                                                                             "format": "binary"}}},
                                 "description": "A ZIP of every result file"}, **errors(401, 404, 422, 429)})
    def zip_all(job_id: str, caller: Caller = Depends(file_caller)) -> Response:
        return downloads.zip_response(api.runtime.files, api.downloadable_job(job_id, caller))

    def download(job_id: str, filename: str, caller: Caller = Depends(file_caller),
                 format: Literal["glb", "obj", "stl", "ply"] | None = Query(  # noqa: A002 - the API's name
                     None, description="Convert the model: obj (a ZIP with .mtl and textures), stl or ply."),
                 if_none_match: str | None = Header(None)) -> Response:
        """One result file, with ETag, ranges and on-demand conversion."""
        job = api.downloadable_job(job_id, caller)
        path, info = downloads.result_file(api.runtime.files, job, filename)
        variant = "" if format in (None, "glb") else format
        etag = downloads.etag_for(job.id, filename, info, variant)
        if downloads.not_modified(if_none_match, etag):
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": downloads.CACHE_CONTROL})
        if variant:
            return downloads.converted_response(path, job, filename, variant, etag)
        _, result = downloads.find_result(job, filename)
        return downloads.file_response(path, info, filename, result.content_type, etag)

    binary = {"schema": {"type": "string", "format": "binary"}}
    file_responses = {200: {"content": {t: binary for t in MODEL_TYPES}, "description": "The file (or its conversion)"},
                      206: {"description": "Part of the file (Range)"}, 304: {"description": "Not modified"},
                      **errors(400, 401, 404, 416, 422, 429)}
    router.add_api_route("/download/{job_id}/{filename}", download, methods=["GET"], response_model=None,
                         response_class=Response, responses=file_responses, summary="Download a result file",
                         tags=["downloads"])
    router.add_api_route("/download/{job_id}/{filename}", download, methods=["HEAD"], response_model=None,
                         include_in_schema=False)


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
    but health and downloads (where it is optional) when API_KEYS is set."""
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
                elif any(part in path for part in OPEN_DOWNLOADS):
                    operation["security"] = [*operation["security"], {}]
        if not required:
            schema.get("components", {}).pop("securitySchemes", None)
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


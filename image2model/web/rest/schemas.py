"""Response models of the REST API: they document /openapi.json and check every response.

`JobStatus` mirrors `image2model.jobs.service.job_status` field for field (a test keeps the
two in step), so REST, SSE and the Gradio `/job_status` endpoint share one shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStateName = Literal["queued", "running", "succeeded", "partial", "failed", "cancelled"]
ItemStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors --------------------------------------------------------------------------------
class ErrorBody(Strict):
    code: str = Field(description="Stable machine code, e.g. job_not_found, file_too_large.")
    message: str = Field(description="What went wrong, for a person.")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorEnvelope(Strict):
    detail: str = Field(description="The message again, as plain text, for clients that show `detail`.")
    error: ErrorBody


# --- jobs ----------------------------------------------------------------------------------
class FileLink(Strict):
    name: str
    kind: str = Field(description="model or preview")
    size: int
    content_type: str
    url: str


class ItemErrorInfo(Strict):
    code: str
    message: str


class ItemStatus(Strict):
    index: int
    name: str = Field(description="The original file name (or 'a + b + c' for a multi-view item).")
    state: ItemStateName
    progress: float
    message: str
    queued_at: float
    started_at: float | None
    finished_at: float | None
    elapsed: float | None
    attempts: int
    fal_request_id: str | None
    notes: list[str] = Field(default_factory=list, description="What happened to this photo's paid "
                             "FAL request when an answer was lost or the app stopped: found again, "
                             "sent again, or left unsent so as not to pay twice")
    files: list[FileLink]
    stats: dict[str, Any]
    error: ItemErrorInfo | None


class JobStatus(Strict):
    job_id: str
    task_id: str = Field(description="The same id as job_id (the original API's name for it).")
    state: JobStateName
    finished: bool
    cancel_requested: bool = Field(description="A cancel was asked for: photos still running are being "
                                   "stopped (the state says cancelled once one is).")
    progress: float
    model: str
    mode: Literal["per_image", "multi_view"]
    params: dict[str, Any]
    created_at: float
    own_fal_key: bool = Field(description="Runs on the FAL key the caller gave (never shown), not this server's.")
    version: int = Field(description="Bumped on every change; the SSE event id.")
    counts: dict[str, int]
    items: list[ItemStatus]


# --- the progress stream's other events (see image2model/web/rest/original_events.py) ---------
class OriginalResult(Strict):
    job_id: str
    total_files: int
    successful_files: int
    failed_files: int


class OriginalJobEvent(JobStatus):
    """task_progress, task_completed, task_failed: our status plus the original API's fields."""

    status: Literal["queued", "processing", "completed", "failed", "cancelled"]
    current: int = Field(description="Images finished (made, failed or cancelled).")
    total: int
    total_files: int
    message: str
    result: OriginalResult | None = None
    summary: dict[str, int] | None = None
    error: str | None = None


class FileUpdate(Strict):
    """file_update: one image changed."""

    job_id: str
    task_id: str
    file_index: int
    filename: str
    status: Literal["pending", "processing", "completed", "failed", "cancelled"]
    progress: float
    message: str
    item: ItemStatus


class StreamError(Strict):
    """error: the job was deleted or expired while watched."""

    error: ErrorBody


class OriginalStreamError(Strict):
    """task_failed after `error`, in the original API's words."""

    error: str
    status: Literal["failed"]
    message: str


STREAM_EVENT_MODELS = (JobStatus, OriginalJobEvent, FileUpdate, StreamError, OriginalStreamError)


class UploadedFile(Strict):
    filename: str
    file_size: int


class JobLinks(Strict):
    status: str
    stream: str
    downloads: str
    zip: str
    cancel: str
    delete: str


class UploadResponse(Strict):
    job_id: str
    task_id: str = Field(description="The job id; with API_KEYS set, the job id with its token attached "
                         "(`<job_id>.<token>`), which status, stream and download paths take in place of "
                         "the job id without a key")
    status: JobStateName
    model: str
    mode: Literal["per_image", "multi_view"]
    total_files: int
    uploaded_files: list[UploadedFile]
    items: list[ItemStatus]
    links: JobLinks
    message: str
    notes: list[str] = Field(default_factory=list, description="How the request was read, e.g. "
                             "face_limit sent as the model's face_count, or ignored")
    token: str = Field(description="Read access to this job (status, stream, downloads) as `?token=`, "
                       "for clients that cannot send a key header, like a browser's EventSource")
    token_expires_at: int = Field(description="When the token stops working (epoch seconds); "
                                  "GET /download/{job}/all gives links with fresh ones")


class DeleteResponse(Strict):
    job_id: str
    deleted: bool


# --- downloads -----------------------------------------------------------------------------
class ResultFileInfo(Strict):
    filename: str
    size: int
    content_type: str
    kind: str
    item: int = Field(description="Index of the item (input image) this file belongs to.")
    item_name: str
    url: str
    mime_type: str = Field(description="The same as content_type (the original API's name).")
    created_time: str | None = Field(description="When the item finished (ISO 8601, UTC).")
    rendered_image: dict[str, str] | None = Field(
        description="The model's preview picture as {url}, when the model made one.")


class DownloadList(Strict):
    job_id: str
    state: JobStateName
    finished: bool
    total_files: int
    files: list[ResultFileInfo]
    download_urls: list[str] = Field(description="Absolute URLs of files[], in the same order (with a fresh "
                                     "?token= when the API needs keys)")
    zip_url: str


# --- catalog and health --------------------------------------------------------------------
class ModelInfo(Strict):
    id: str
    label: str
    description: str
    provider: str
    modes: list[str]
    min_views: int
    max_views: int
    view_order: str
    typical_seconds: float
    price: str
    available: bool
    unavailable_reason: str
    default: bool
    params: list[dict[str, Any]]
    params_schema: dict[str, Any] = Field(description="The model's parameters as JSON Schema.")


class ModelList(Strict):
    default: str
    models: list[ModelInfo]


class Health(Strict):
    status: Literal["ok"]


class OriginalHealth(Strict):
    status: Literal["healthy"]
    service: str
    version: str


class Ready(Strict):
    status: Literal["ready"]
    checks: dict[str, bool]
    queue: Literal["sqlite", "redis"]
    fal_configured: bool
    auth_required: bool
    workers: int = Field(description="worker processes that said they are alive in the last few seconds")
    disk_free_mb: float

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
    progress: float
    model: str
    mode: Literal["per_image", "multi_view"]
    params: dict[str, Any]
    created_at: float
    version: int = Field(description="Bumped on every change; the SSE event id.")
    counts: dict[str, int]
    items: list[ItemStatus]


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
    task_id: str
    status: JobStateName
    model: str
    mode: Literal["per_image", "multi_view"]
    total_files: int
    uploaded_files: list[UploadedFile]
    items: list[ItemStatus]
    links: JobLinks
    message: str


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


class DownloadList(Strict):
    job_id: str
    state: JobStateName
    finished: bool
    total_files: int
    files: list[ResultFileInfo]
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


class Ready(Strict):
    status: Literal["ready"]
    checks: dict[str, bool]
    queue: Literal["sqlite", "redis"]
    fal_configured: bool
    auth_required: bool
    workers: int = Field(description="worker processes that said they are alive in the last few seconds")
    disk_free_mb: float

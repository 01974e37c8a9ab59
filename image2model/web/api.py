"""REST API v1 (placeholder: replaced by the REST issue). Only the download route for now."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import FileResponse

from image2model.runtime import Runtime


def build_api(app: FastAPI, runtime: Runtime) -> None:
    @app.get("/api/v1/download/{job_id}/{filename}")
    def download(job_id: str, filename: str) -> FileResponse:
        runtime.service.get(job_id)
        path = runtime.files.result_path(job_id, filename)
        return FileResponse(path, filename=filename)

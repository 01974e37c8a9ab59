"""Serve a job's result files: one file (ranges, ETag, conversions), the list, or a ZIP.

A name is served only when the job's record lists it, and only as a regular, singly linked
file whose real path is exactly `<files root>/<job id>/results/<name>`: `..`, encoded
traversal, absolute paths, backslashes, NUL, symlinks (of the file or of any directory above
it) and hard links all end in the same 404.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from image2model.errors import AppError
from image2model.jobs.model import Item, Job, ResultFile
from image2model.media.archive import zip_results
from image2model.media.mesh_jobs import converted_model
from image2model.storage import FileStore
from image2model.web.envelope import error_response

CACHE_CONTROL = "private, no-cache"  # revalidate with the ETag; results never change in place


def _not_found(name: str) -> AppError:
    return AppError("file_not_found", "This job has no file by that name.", 404, {"name": name[:200]})


def find_result(job: Job, name: str) -> tuple[Item, ResultFile]:
    for item in job.items:
        for result in item.files:
            if result.name == name:
                return item, result
    raise _not_found(name)


def result_file(files: FileStore, job: Job, name: str) -> tuple[Path, os.stat_result]:
    """The real path and stat of a listed result, or 404 (see the module docstring)."""
    find_result(job, name)
    path = files.result_path(job.id, name)
    expected = files.root / job.id / "results" / name  # files.root is already resolved
    try:
        real = path.resolve(strict=True)
        info = os.lstat(real)
    except OSError:
        raise _not_found(name) from None
    if real != expected or not os.path.isfile(real) or os.path.islink(real) or info.st_nlink != 1:
        raise _not_found(name)
    return real, info


def etag_for(job_id: str, name: str, info: os.stat_result, variant: str = "") -> str:
    basis = f"{job_id}/{name}/{info.st_size}/{info.st_mtime_ns}/{variant}"
    return '"' + hashlib.sha256(basis.encode()).hexdigest()[:32] + '"'


def not_modified(if_none_match: str | None, etag: str, if_modified_since: str | None = None,
                 info: os.stat_result | None = None) -> bool:
    """RFC 9110 13.1: If-None-Match decides when it is sent; else If-Modified-Since, against
    the file's time (the Last-Modified we send, to the second). An unreadable date is ignored."""
    if if_none_match:
        tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
        return "*" in tags or etag in tags
    if not if_modified_since or info is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since).timestamp()
    except (TypeError, ValueError, IndexError):
        return False
    return int(info.st_mtime) <= since


class RangeFileResponse(FileResponse):
    """FileResponse whose range errors use the API's error envelope: an unreadable Range
    header is ignored (the whole file, as RFC 9110 allows), an unsatisfiable one is 416."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        requested = Headers(scope=scope).get("range")
        if requested is not None and self.stat_result is not None:
            try:
                self._parse_range_header(requested, self.stat_result.st_size)
            except MalformedRangeHeader:
                scope = dict(scope)
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]
            except RangeNotSatisfiable:
                size = self.stat_result.st_size
                response = error_response(416, "range_not_satisfiable",
                                          f"The requested range is outside the file ({size} bytes).",
                                          headers={"Content-Range": f"bytes */{size}"})
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def file_response(path: Path, info: os.stat_result, name: str, content_type: str, etag: str) -> Response:
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    return RangeFileResponse(path, media_type=content_type, filename=name, stat_result=info, headers=headers)


def converted_response(files: FileStore, path: Path, job: Job, name: str, fmt: str, etag: str) -> Response:
    """The model in another format, made on first demand in a child process and kept."""
    _, result = find_result(job, name)
    if result.kind != "model":
        raise AppError("unsupported_format", f"Only models can be converted; '{name}' is a {result.kind}.", 400,
                       {"name": name})
    converted, filename, content_type = converted_model(files, job.id, path, fmt)
    return file_response(converted, converted.stat(), filename, content_type, etag)


def listed_paths(files: FileStore, job: Job) -> list[Path]:
    paths = []
    for item in job.items:
        for result in item.files:
            try:
                paths.append(result_file(files, job, result.name)[0])
            except AppError:
                continue  # listed but gone (expired, deleted): leave it out of the ZIP
    return paths


def zip_response(files: FileStore, job: Job, head: bool = False) -> Response:
    """All results as one streamed ZIP; for HEAD, its headers only (the ZIP is not made)."""
    paths = listed_paths(files, job)
    if not paths:
        message = ("This job ended without any result files to download." if job.state.terminal
                   else "This job has no result files yet; each appears as its photo is done.")
        raise AppError("no_results", message, 404)
    stream: Iterator[bytes] = iter(()) if head else zip_results(paths)
    headers = {"Content-Disposition": f'attachment; filename="image2model-{job.id[:8]}.zip"',
               "Cache-Control": "no-store"}
    return StreamingResponse(stream, media_type="application/zip", headers=headers)

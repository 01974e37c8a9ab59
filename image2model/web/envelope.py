"""One error shape for the REST API: {"detail": message, "error": {"code", "message", "details"}}.

`detail` repeats the message as plain text because clients written for FastAPI (the original
image2model frontend among them) show `detail || message || error` to the user; an object
there would read "[object Object]".

Handlers are registered on the FastAPI app; they shape only responses for the API's own paths
(/api/v1, /health, /ready). Gradio is a mounted sub-app with its own handlers, and FastAPI's
own pages (/docs) keep their default shapes.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from image2model.errors import AppError, disk_full_error, is_disk_full
from image2model.jobs.store import StoreUnavailable

log = logging.getLogger(__name__)

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 406: "not_acceptable", 413: "request_too_large",
              415: "unsupported_media_type", 416: "range_not_satisfiable", 422: "invalid_request",
              429: "rate_limited", 503: "unavailable"}


class HttpAppError(AppError):
    """An AppError that also sets response headers (Retry-After, WWW-Authenticate...)."""

    def __init__(self, code: str, message: str, status: int = 400, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(code, message, status, details)
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"detail": message, "error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


def app_error_response(exc: AppError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, exc.details, getattr(exc, "headers", None))


def _ours(request: Request) -> bool:
    from image2model.web.security import is_api_path

    return is_api_path(request.url.path)


async def on_app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return app_error_response(exc)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not _ours(request):
        return await request_validation_exception_handler(request, exc)
    errors = [{"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")),
               "type": str(e.get("type", ""))} for e in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"]) or "request"
    return error_response(422, "invalid_request", f"Invalid {where}: {first['msg']}.", {"errors": errors})


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not _ours(request):
        return await http_exception_handler(request, exc)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


def outage_error(exc: BaseException) -> AppError | None:
    """An outage of something we depend on, as the plain answer a client can act on."""
    if isinstance(exc, StoreUnavailable):
        return HttpAppError("store_unavailable", "The job store is not reachable right now; please try "
                            "again in a minute.", 503, headers={"Retry-After": "5"})
    if is_disk_full(exc):
        return disk_full_error()
    return None


async def on_outage(request: Request, exc: Exception) -> Response:
    """A store outage or a full disk: one warning line, and a plain 503 / 507 answer."""
    outage = outage_error(exc)
    if outage is None:
        return await on_unexpected(request, exc)
    log.warning("%s on %s %s: %s", outage.code, request.method, request.url.path, exc)
    if not _ours(request):
        return PlainTextResponse(outage.message, status_code=outage.status)
    return app_error_response(outage)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """Last resort: a bug, not bad input. Logged with its traceback; the client gets no
    internals."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    if not _ours(request):
        return PlainTextResponse("Internal Server Error", status_code=500)
    return error_response(500, "internal_error", "Something went wrong on our side; it has been logged.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, on_app_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(StoreUnavailable, on_outage)
    app.add_exception_handler(OSError, on_outage)
    app.add_exception_handler(sqlite3.Error, on_outage)
    app.add_exception_handler(Exception, on_unexpected)

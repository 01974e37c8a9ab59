"""The access log (`ACCESS_LOG`), in place of uvicorn's.

A record for every request costs the status endpoint about 15 % of its throughput (1,750
against 2,040 requests a second, wrk on one uvicorn worker). This middleware decides at the
response's first message: with `errors` (the default) a request answered below 400 makes no
record at all (as fast as `off`); 4xx is logged at info level, 5xx at warning. uvicorn's own
access log is off (app.py). The path is logged without its query string, which can
hold a job token (`?token=`), and with a task handle's token (`<job id>.<token>`) hidden.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("image2model.access")
TASK_HANDLE = re.compile(r"(/[0-9a-f]{32})\.[^/]+")  # <job id>.<token>: keep the id, hide the token

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AccessLog:
    """Logs HTTP requests answered with an error (`errors_only`), or every one."""

    def __init__(self, app: ASGIApp, errors_only: bool = True) -> None:
        self.app = app
        self.lowest = 400 if errors_only else 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        async def send_and_log(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                if message["status"] >= self.lowest:
                    self._log(scope, message["status"], started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_log)
        except Exception:
            if not answered:  # the server answers 500 for an app that raised before answering
                self._log(scope, 500, started)
            raise

    @staticmethod
    def _log(scope: Scope, status: int, started: float) -> None:
        client = scope.get("client")
        method, path = scope.get("method", ""), TASK_HANDLE.sub(r"\1.(token)", scope.get("path", ""))
        log.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s %d", method, path, status, extra={
            "method": method, "path": path, "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "client": f"{client[0]}:{client[1]}" if client else None})

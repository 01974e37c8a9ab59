"""Logs as one line of key=value pairs, so one job can be followed across web and workers:
`grep job_id=<id>` finds its creation in the web process and every step in any worker."""

from __future__ import annotations

import logging
import os
import socket

CONTEXT_FIELDS = ("job_id", "item", "request_id", "model", "code")
_configured = False


class KeyValueFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.host = f"{socket.gethostname()}:{os.getpid()}"

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"proc={self.host}",
            f'msg="{record.getMessage()}"',
        ]
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                parts.append(f"{key}={value}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO") -> None:
    """Install the formatter on the root logger once per process."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "huey.consumer.Scheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True

"""Logs as one line of logfmt key=value pairs, so one job can be followed across web and workers:
`grep job_id=<id>` finds its creation in the web process and every step in any worker.

One event is always one line: a value with a space, `=`, a quote, a backslash or a control
character is double-quoted with `\\"`, `\\\\`, `\\n`, `\\r`, `\\t` (other control and line-break
characters as `\\uXXXX`) escaped, and a traceback goes into one escaped `exc=` field. So a
message from outside (a FAL error text holding `"` or a newline) can never forge a line or a
field.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from datetime import datetime
from typing import Any

CONTEXT_FIELDS = ("job_id", "item", "request_id", "model", "code")
_configured = False

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_PLAIN = re.compile(r'[^\s="\\]+')  # a bare value: no space, =, quote or backslash (and printable)


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)  # control, line-break and format characters (U+2028, NEL, U+202E...)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def logfmt_value(value: Any, always_quote: bool = False) -> str:
    """A value as logfmt: bare when it is a plain printable word, else quoted and escaped."""
    text = str(value)
    if not always_quote and _PLAIN.fullmatch(text) and text.isprintable():
        return text
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return '"' + "".join(map(_escaped, text)) + '"'


def logfmt_time(created: float) -> str:
    """Local time with milliseconds and the offset: 2026-12-01T10:29:12.123+00:00."""
    return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


class KeyValueFormatter(logging.Formatter):
    """time=, level=, logger=, proc=, msg= (always quoted), then the job context fields, then
    exc= and stack= when there is a traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.host = f"{socket.gethostname()}:{os.getpid()}"

    def format(self, record: logging.LogRecord) -> str:
        fields: list[tuple[str, Any]] = [
            ("time", logfmt_time(record.created)),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("proc", self.host),
        ]
        parts = [f"{key}={logfmt_value(value)}" for key, value in fields]
        parts.append(f"msg={logfmt_value(record.getMessage(), always_quote=True)}")
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                parts.append(f"{key}={logfmt_value(value)}")
        if record.exc_info:
            parts.append(f"exc={logfmt_value(self.formatException(record.exc_info), always_quote=True)}")
        elif record.exc_text:
            parts.append(f"exc={logfmt_value(record.exc_text, always_quote=True)}")
        if record.stack_info:
            parts.append(f"stack={logfmt_value(self.formatStack(record.stack_info), always_quote=True)}")
        return " ".join(parts)


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


"""One log event is one line a machine can parse, so one job can be followed across web and
workers: `grep job_id=<id>` (logfmt) or `jq 'select(.job_id=="<id>")'` (json) finds its
creation in the web process and every step in any worker.

Every `logging.getLogger(...)` call, ours and third parties' (uvicorn, huey, httpx), goes
through structlog's `ProcessorFormatter` on the root handler. Fields come in a fixed order:
time (local, milliseconds, offset), level, logger, proc, msg, then the context fields
(`job_id`, `item`, `request_id`, `worker`, ... passed as `extra=` or bound with
`log_context`), then `exc`/`stack` when there is a traceback.

`LOG_FORMAT=json` renders with `json.dumps` (ASCII only, so U+2028 and friends are escaped).
`LOG_FORMAT=logfmt` uses our own value escaping, not structlog's `LogfmtRenderer`: that one
leaves `\\r`, tabs, control characters and U+2028 raw (a message could split a line or forge
fields) and leaves backslashes unescaped in bare values. Here a value with a space, `=`, a
quote, a backslash or a control character is double-quoted with `\\"`, `\\\\`, `\\n`, `\\r`,
`\\t` (other control and line-break characters as `\\uXXXX`) escaped. So a message from
outside (a FAL error text holding `"` or a newline) can never forge a line or a field.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import structlog
from structlog.typing import EventDict

# extra= fields shown, in this order, after msg; the access log's fields come last
CONTEXT_FIELDS = ("job_id", "item", "request_id", "worker", "model", "code",
                  "method", "path", "status", "duration_ms", "client")
QUOTED_FIELDS = {"msg", "exc", "stack"}  # always quoted in logfmt, so `msg="` is easy to grep
FORMATS = ("logfmt", "json")
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


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (e.g. `worker=`) to every log line of this thread or task inside the block."""
    with structlog.contextvars.bound_contextvars(**fields):
        yield


_HOST = socket.gethostname()


def _ordered(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """The record's own fields first, then context, then the traceback: a readable line."""
    record: logging.LogRecord = event_dict["_record"]
    out: dict[str, Any] = {"time": logfmt_time(record.created), "level": record.levelname.lower(),
                           "logger": record.name, "proc": f"{_HOST}:{record.process or os.getpid()}",
                           "msg": event_dict["event"]}
    for key in CONTEXT_FIELDS:
        if event_dict.get(key) is not None:
            out[key] = event_dict[key]
    exc = event_dict.get("exception") or record.exc_text  # exc_text: a record formatted before
    if exc:
        out["exc"] = exc
    if event_dict.get("stack_info"):
        out["stack"] = event_dict["stack_info"]
    return out


def _logfmt(_: Any, __: str, event_dict: EventDict) -> str:
    return " ".join(f"{key}={logfmt_value(value, key in QUOTED_FIELDS)}" for key, value in event_dict.items())


def make_formatter(fmt: str = "logfmt") -> logging.Formatter:
    """The formatter for `LOG_FORMAT` (logfmt or json), for any stdlib handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else _logfmt
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,  # fields bound with log_context
            structlog.stdlib.ExtraAdder(allow=CONTEXT_FIELDS),  # extra= wins over the context
            structlog.processors.format_exc_info,  # exc_info -> "exception": the formatted text
            _ordered,
        ],
        processors=[renderer],
    )


def setup_logging(level: str = "INFO", fmt: str = "logfmt") -> None:
    """Install the formatter on the root logger once per process."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "huey.consumer.Scheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # what Python itself would print over several lines: warnings and uncaught exceptions
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    _configured = True


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    logging.getLogger("image2model.crash").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread else "?"
    logging.getLogger("image2model.crash").error("uncaught exception in thread %s", name,
                                                 exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

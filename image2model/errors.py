"""One error type for everything a user or client can get wrong or run into.

Every error carries a stable machine `code` (clients branch on it), a human `message`
(people read it), an HTTP-ish `status` (the REST layer uses it) and optional `details`.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Any


class AppError(Exception):
    """An expected failure with a stable code and a message fit for a person."""

    def __init__(self, code: str, message: str, status: int = 400, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __repr__(self) -> str:
        return f"AppError({self.code!r}, {self.message!r})"


SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """The kernel's ENOSPC / EDQUOT, or SQLite's SQLITE_FULL (the embedded store's disk)."""
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error() -> AppError:
    return AppError("disk_full", "The server's disk is full, so nothing more can be stored right now. "
                    "Nothing you sent before was lost; please try again later.", 507)

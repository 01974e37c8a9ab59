"""Receive a multipart upload straight to disk, enforcing the limits while reading.

Starlette's form parser keeps no per-file cap and spools to /tmp; this one feeds
`python-multipart`'s streaming parser from `request.stream()` and writes each file to a temp
file in the data directory. It stops with 413 the moment a file passes MAX_IMAGE_MB and with
400 the moment the (MAX_IMAGES + 1)-th file starts, so a hostile request never costs more than
one file's worth of disk and a few kilobytes of memory. The parser and the disk writes run in
the thread pool, one hop per received chunk, so the event loop never blocks on the disk.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from image2model.errors import AppError
from image2model.storage import UPLOAD_PREFIX, writer_prefix
from image2model.units import size_text

log = logging.getLogger(__name__)

FILE_FIELDS = ("files", "files[]")
TEXT_FIELDS = ("model", "mode", "params", "face_limit")
MAX_FIELD_BYTES = 64 * 1024
EXTRA_PARTS = 16  # non-file parts allowed besides the files
FILENAME_STAR = re.compile(r"filename\*\s*=\s*([^;]+)", re.IGNORECASE)
DECIMAL = re.compile(r"[0-9]{1,30}")  # ASCII digits only: "²".isdigit() is True, int("²") fails


@dataclass(frozen=True)
class UploadLimits:
    max_files: int
    max_file_bytes: int

    @property
    def max_body_bytes(self) -> int:
        """A request larger than every allowed file plus generous overhead is refused unread."""
        return self.max_files * (self.max_file_bytes + 16 * 1024) + EXTRA_PARTS * MAX_FIELD_BYTES

    def describe_file_limit(self) -> str:
        return size_text(self.max_file_bytes)


@dataclass
class ReceivedFile:
    filename: str
    path: Path
    size: int = 0


@dataclass
class ReceivedForm:
    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def cleanup(self) -> None:
        for received in self.files:
            received.path.unlink(missing_ok=True)


class _Collector:
    """python-multipart callbacks that route each part to a temp file or a small buffer."""

    def __init__(self, directory: Path, limits: UploadLimits):
        self.directory = directory
        self.limits = limits
        self.form = ReceivedForm()
        self.parts = 0
        self.finished = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._file: IO[bytes] | None = None
        self._current: ReceivedFile | None = None
        self._field_name: str | None = None
        self._field_value = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished, "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_files + EXTRA_PARTS:
            raise AppError("too_many_parts", "The request has too many form fields.", 400)
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        raw = self._headers.get(b"content-disposition", b"")
        _, options = parse_options_header(raw)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = _filename(raw, options)
        if name in FILE_FIELDS:
            self._start_file(filename or "")
        elif filename is not None:
            raise AppError("unexpected_field", f"Send images in the 'files' field, not '{name[:40]}'.", 400,
                           {"field": name[:40]})
        else:
            self._field_name = name
            self._field_value = bytearray()

    def _start_file(self, filename: str) -> None:
        if len(self.form.files) >= self.limits.max_files:
            raise AppError("too_many_images", f"You sent more than {self.limits.max_files} images; the limit "
                           f"is {self.limits.max_files} per job.", 400, {"limit": self.limits.max_files})
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=writer_prefix(UPLOAD_PREFIX))
        self._file = os.fdopen(fd, "wb")
        self._current = ReceivedFile(filename, Path(tmp))
        self.form.files.append(self._current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._current is not None and self._file is not None:
            self._current.size += len(chunk)
            if self._current.size > self.limits.max_file_bytes:
                shown = self._current.filename or f"image {len(self.form.files)}"
                raise AppError("file_too_large", f"'{shown}' is larger than the limit of "
                               f"{self.limits.describe_file_limit()} per image.", 413, {"file": shown})
            self._file.write(chunk)
        elif self._field_name is not None:
            self._field_value += chunk
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise AppError("field_too_large", f"The form field '{self._field_name[:40]}' is too long.", 413,
                               {"field": self._field_name[:40]})

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._current = None
        elif self._field_name is not None:
            if self._field_name in TEXT_FIELDS:
                if self._field_name in self.form.fields:  # which one was meant? never guess
                    raise AppError("invalid_field", f"The form field '{self._field_name}' was sent more than once; "
                                   "send it once.", 400, {"field": self._field_name})
                try:
                    self.form.fields[self._field_name] = self._field_value.decode("utf-8")
                except UnicodeDecodeError:
                    raise AppError("invalid_field", f"The form field '{self._field_name}' is not UTF-8 text.",
                                   400, {"field": self._field_name}) from None
            self._field_name = None

    def on_end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _filename(raw: bytes, options: dict[bytes, bytes]) -> str | None:
    """The part's file name: RFC 5987 `filename*=UTF-8''...` first, then `filename=`."""
    star = FILENAME_STAR.search(raw.decode("latin-1"))
    if star:
        value = star.group(1).strip().strip('"')
        charset, _, encoded = value.partition("''")
        if encoded:
            try:
                return urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="replace")
            except LookupError:  # a charset Python does not know: read it as UTF-8
                return urllib.parse.unquote(encoded, errors="replace")
    if b"filename" in options:
        return options[b"filename"].decode("utf-8", "replace")
    return None


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise AppError("unsupported_media_type",
                       "Send the images as multipart/form-data, in the field 'files'.", 415)
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise AppError("malformed_request", "The multipart request has no valid boundary.", 400)
    return boundary


def _check_declared_length(request: Request, limits: UploadLimits) -> None:
    declared = request.headers.get("content-length")
    if declared and DECIMAL.fullmatch(declared.strip()) and int(declared.strip()) > limits.max_body_bytes:
        raise AppError("request_too_large", f"The request is larger than {limits.max_files} images of "
                       f"{limits.describe_file_limit()} each.", 413)


async def receive_form(request: Request, directory: Path, limits: UploadLimits) -> ReceivedForm:
    """Parse the request into temp files; on any error nothing is left on disk."""
    boundary = _boundary(request)
    _check_declared_length(request, limits)
    directory.mkdir(parents=True, exist_ok=True)
    collector = _Collector(directory, limits)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise AppError("request_too_large", "The request is too large.", 413)
            if chunk:
                await run_in_threadpool(parser.write, chunk)
        await run_in_threadpool(parser.finalize)
        if not collector.finished:
            raise AppError("malformed_request", "The multipart request ended early.", 400)
    except MultipartParseError:
        collector.close()
        collector.form.cleanup()
        raise AppError("malformed_request", "The multipart request could not be parsed.", 400) from None
    except BaseException:
        collector.close()
        collector.form.cleanup()
        raise
    return collector.form

"""Helpers for the REST API tests: build request bodies, talk raw HTTP, check the envelope."""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from image2model.runtime import Runtime
from tests.conftest import free_port, make_settings
from tests.live_server import LiveServer

OPEN_LIMITS = {"rate_limit_api": "100000/minute", "rate_limit_upload": "100000/minute"}


@pytest.fixture
def backend() -> str:
    """Most REST tests run in embedded (SQLite) mode; Redis mode is tested where it matters."""
    return "sqlite"


def picture(size: tuple[int, int] = (96, 72), seed: int = 0) -> Image.Image:
    """A small object on white, different for each seed."""
    img = Image.new("RGB", size, "white")
    w, h = size
    colour = ((seed * 53) % 200, (seed * 97) % 200, 120)
    ImageDraw.Draw(img).ellipse((w * 0.2, h * 0.15, w * 0.8, h * 0.85), fill=colour)
    return img


def encode(img: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def png(seed: int = 0, size: tuple[int, int] = (96, 72)) -> bytes:
    return encode(picture(size, seed))


def post_images(client: httpx.Client, images: list[tuple[str, bytes]], headers: dict[str, str] | None = None,
                content_type: str = "image/png", **fields: str) -> httpx.Response:
    files = [("files", (name, data, content_type)) for name, data in images]
    return client.post("/api/v1/upload/", files=files, data=fields or None, headers=headers)


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> dict[str, Any]:
    """The response is the API's error envelope with this status, code and message parts."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail", "error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["detail"] == body["error"]["message"], body  # plain text, for clients that show `detail`
    assert body["error"]["code"] == code, body
    for fragment in fragments:
        assert fragment in body["error"]["message"], (fragment, body)
    return body["error"]


def assert_nothing_queued(runtime: Runtime) -> None:
    assert runtime.huey.pending_count() == 0
    assert runtime.store.all_job_ids() == []
    assert runtime.files.job_ids() == []
    incoming = runtime.settings.data_dir / "incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == [], "upload temp files were left behind"


def start_server(data_dir: Path, **overrides: Any) -> LiveServer:
    """A live server outside the function-scoped factory (module-scoped fixtures, extra
    processes' partners); the caller stops it and closes its runtime."""
    values = {"embedded_worker": True, "fal_key": "", **OPEN_LIMITS, **overrides}
    runtime = Runtime(make_settings(data_dir, values.pop("redis_url", ""), **values))
    return LiveServer(runtime, free_port()).start()


def raw_request(port: int, head: bytes, body: bytes = b"", read_timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client-side path normalisation); (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head + body)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is not None and len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest


def raw_get(port: int, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def wait_job(server: LiveServer, job_id: str, timeout: float = 60.0):  # noqa: ANN201 - a Job
    from tests.engine_helpers import wait_done

    return wait_done(server.runtime.service, job_id, timeout)

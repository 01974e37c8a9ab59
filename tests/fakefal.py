"""A fake FAL.AI server for tests: a real HTTP server on 127.0.0.1.

The real ``fal-client`` is pointed at it by patching four module globals in
``fal_client.client`` (see :func:`patch_fal_client`), so the whole client stack
(httpx, retries, status parsing, upload fallback) is exercised, never FAL itself.

It implements the queue (submit / status / result / cancel), ``run``, the CDN
token + CDN upload, the legacy storage upload fallback, and serves uploaded and
generated files. Generated models are a real, colourful, textured GLB.

Usage in-process::

    with running_fake(queue_seconds=0.1, run_seconds=0.3) as fake:
        client = fal_client.SyncClient(key="test-key")
        url = client.upload(png_bytes, "image/png", "cat.png")
        result = client.subscribe("fal-ai/trellis", {"image_url": url})

Usage from a subprocess (which cannot be monkeypatched): pass it
``fal_env(fake)``; the subprocess reads ``I2M_FAKE_FAL_URL`` and calls
``patch_fal_client(os.environ["I2M_FAKE_FAL_URL"])`` before creating clients.
This module imports only the stdlib at module level (numpy, PIL and trimesh are
imported lazily when a model is first generated), so that import is cheap.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import hashlib
import io
import json
import math
import mimetypes
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

#: Env var telling a subprocess where the fake lives (see :func:`fal_env`).
FAKE_FAL_URL_ENV = "I2M_FAKE_FAL_URL"

GLB_CONTENT_TYPE = "model/gltf-binary"

# Queue URLs use only [namespace/]owner/alias; these namespaces add a segment.
_APP_NAMESPACES = ("workflows", "comfy")

# Realistic error bodies, as FAL sends them (see the reference doc, section 5).
_DEFAULT_DETAILS: dict[int, str] = {
    400: "Bad request",
    401: "No user found for Key ID and Secret",
    403: "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing.",
    404: "Not found",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Runner scheduling failure",
    504: "Request timed out",
}
_DEFAULT_ERROR_TYPES: dict[int, str] = {
    500: "runner_server_error",
    503: "runner_scheduling_failure",
    504: "request_timeout",
}

_INVALID_JSON_DETAIL = [{"loc": ["body"], "msg": "Invalid JSON body", "type": "json_invalid"}]

FAIL_POINTS = ("submit", "status", "stream", "result", "upload", "cancel", "token", "download", "history")
HANG_POINTS = ("status", "stream", "result", "cancel", "history", "upload")
LOST_ANSWER_MODES = ("drop", "500", "hang")  # FAL accepted the submit, then: connection cut / 500 / silence

STREAM_LOG_SECONDS = 0.25  # a running model's log lines arrive this often on the stream


# --------------------------------------------------------------------------
# Pointing fal-client at the fake
# --------------------------------------------------------------------------


def patch_fal_client(base_url: "str | FakeFal") -> Callable[[], None]:
    """Point ``fal_client.client`` at a fake FAL base URL; return an undo function.

    Pure function (no server needed), so an app subprocess can call it with the
    URL from ``I2M_FAKE_FAL_URL``. Retries keep fal-client's logic but are
    shrunk so that retried 429s take milliseconds, not seconds.
    Create fal clients *after* patching: the CDN token manager copies
    ``REST_URL`` when it is built.
    """
    import fal_client.client as fc

    base = getattr(base_url, "base_url", base_url).rstrip("/")
    new_values: dict[str, Any] = {
        "RUN_URL_FORMAT": base + "/run/",
        "QUEUE_URL_FORMAT": base + "/queue/",
        "REST_URL": base + "/rest",
        "CDN_URL": base + "/cdn",
        "MAX_ATTEMPTS": 3,
        "BASE_DELAY": 0.01,
        "MAX_DELAY": 0.05,
    }
    old_values = {name: getattr(fc, name) for name in new_values if hasattr(fc, name)}
    for name in old_values:
        setattr(fc, name, new_values[name])

    def restore() -> None:
        for name, value in old_values.items():
            setattr(fc, name, value)

    return restore


def fal_env(
    fake: "FakeFal | str", *, key: str = "test-key", home_dir: str | None = None
) -> dict[str, str]:
    """Env vars a subprocess needs to talk to the fake.

    The subprocess must itself call ``patch_fal_client(os.environ[FAKE_FAL_URL_ENV])``:
    fal-client's URLs are module globals, and its env vars can only switch
    to https hosts. ``home_dir`` (an empty folder) keeps real ``fal auth login``
    tokens out of reach; with ``FAL_KEY`` set they are not read anyway.
    """
    env = {
        FAKE_FAL_URL_ENV: getattr(fake, "base_url", fake),
        "FAL_API_URL": getattr(fake, "base_url", fake) + "/v1",
        "FAL_KEY": key,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    if home_dir is not None:
        env["FAL_HOME_DIR"] = home_dir
    return env


@contextmanager
def running_fake(**knobs: Any) -> Iterator["FakeFal"]:
    """Start a fake, patch fal-client and set auth/proxy env vars; undo all on exit.

    ``knobs`` are FakeFal constructor arguments (queue_seconds, run_seconds,
    fail_cdn_upload, result_bytes, omit_output_field).
    """
    fake = FakeFal(**knobs)
    fake.start()
    restore = patch_fal_client(fake.base_url)
    with tempfile.TemporaryDirectory(prefix="fakefal-home-") as home:
        env = fal_env(fake, home_dir=home)
        env.pop(FAKE_FAL_URL_ENV)  # in-process we patched directly
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield fake
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            restore()
            fake.stop()


# --------------------------------------------------------------------------
# Model knowledge: output shapes and required inputs per endpoint
# --------------------------------------------------------------------------


def queue_base(app: str) -> str:
    """``[namespace/]owner/alias`` of an endpoint id: the part queue URLs keep."""
    parts = app.strip("/").split("/")
    keep = 3 if parts[0] in _APP_NAMESPACES else 2
    return "/".join(parts[:keep])


def required_fields(app: str) -> list[str]:
    """Image fields an endpoint cannot run without (light schema validation)."""
    app = app.strip("/")
    if app.startswith("fal-ai/trellis/multi"):
        return ["image_urls"]
    if app in ("fal-ai/trellis", "fal-ai/trellis-2", "fal-ai/triposr"):
        return ["image_url"]
    if app.startswith("fal-ai/hunyuan3d/v2/multi-view"):
        return ["front_image_url", "back_image_url", "left_image_url"]
    if app.startswith("fal-ai/hunyuan3d/v2"):
        return ["input_image_url"]
    if app.startswith(("fal-ai/hunyuan3d-v3/", "fal-ai/hunyuan-3d/")) and app.endswith(
        "image-to-3d"
    ):
        return ["input_image_url"]
    if app.startswith("tripo3d/"):
        if app.endswith("multiview-to-3d"):
            return ["front_image_url"]
        if app.endswith("image-to-3d"):
            return ["image_url"]
    if app.startswith("fal-ai/hyper3d/rodin/v2.5"):
        return ["image_urls"]
    if app.startswith("fal-ai/hyper3d/rodin"):
        return ["input_image_urls"]
    if app.startswith("fal-ai/meshy/"):
        if app.endswith("multi-image-to-3d"):
            return ["image_urls"]
        if app.endswith("image-to-3d"):
            return ["image_url"]
    return []


def missing_field_detail(field_name: str, msg: str = "field required") -> list[dict[str, Any]]:
    """A FastAPI/pydantic-style 422 ``detail`` list for one field."""
    return [{"loc": ["body", field_name], "msg": msg, "type": "missing"}]


def build_output(
    app: str,
    model: dict[str, Any],
    image: dict[str, Any],
    *,
    run_seconds: float,
    omit_model: bool = False,
) -> dict[str, Any]:
    """The output JSON of an endpoint, given File dicts for the model and a PNG image.

    ``omit_model`` drops the mesh fields, as a broken model response would.
    """
    app = app.strip("/")
    timings = {"prepare": 0.01, "inference": run_seconds, "export": 0.01}
    if app.startswith(("fal-ai/hunyuan3d-v3/", "fal-ai/hunyuan-3d/", "fal-ai/meshy/")):
        out: dict[str, Any] = {"model_glb": model, "model_urls": {"glb": model}, "seed": 1}
        if app.startswith(("fal-ai/hunyuan3d-v3/", "fal-ai/hunyuan-3d/")):
            out["thumbnail"] = image
        mesh_fields = ["model_glb", "model_urls"]
    elif app.startswith("fal-ai/trellis-2"):
        out = {"model_glb": model}
        mesh_fields = ["model_glb"]
    elif app.startswith("tripo3d/"):
        out = {"model_mesh": model, "rendered_image": image, "task_id": uuid.uuid4().hex}
        mesh_fields = ["model_mesh"]
    elif app.startswith("fal-ai/hyper3d/"):
        out = {"model_mesh": model, "seed": 1, "textures": []}
        mesh_fields = ["model_mesh"]
    else:  # trellis, trellis/multi, hunyuan3d/v2*, triposr, unknown apps
        out = {"model_mesh": model, "timings": timings}
        if app.startswith("fal-ai/hunyuan3d/"):
            out["seed"] = 1
        mesh_fields = ["model_mesh"]
    if omit_model:
        for name in mesh_fields:
            out.pop(name, None)
    return out


# --------------------------------------------------------------------------
# Generated assets (made once per process: trimesh export is not free)
# --------------------------------------------------------------------------


def _rainbow_texture(width: int = 512, height: int = 256) -> "Any":
    """A vivid hue-sweep checkerboard, so a viewer screenshot is unmistakably colourful."""
    import numpy as np
    from PIL import Image

    u = np.linspace(0.0, 1.0, width, endpoint=False)[None, :].repeat(height, 0)
    v = np.linspace(0.0, 1.0, height, endpoint=False)[:, None].repeat(width, 1)
    hue = (u * 3 * 256) % 256
    checker = (np.floor(u * 16) + np.floor(v * 8)) % 2
    hsv = np.stack([hue, np.full_like(u, 255), 255 - checker * 70], -1).astype(np.uint8)
    return Image.fromarray(hsv, "HSV").convert("RGB")


@functools.lru_cache(maxsize=1)
def fal_sized_glb(subdivisions: int = 7, texture_px: int = 2048) -> bytes:
    """A model the size FAL's make (Trellis 2 and Hunyuan3D aim at 500k faces, 2048 px
    textures): an icosphere of 327,680 faces, one vertex per face corner as a UV atlas leaves
    them, UVs and a textured material; about 30 MB. The fake's own sample is a 2,304-face
    sphere, far lighter to download and check than anything FAL sends."""
    import numpy as np
    import trimesh
    from PIL import Image

    rng = np.random.default_rng(7)
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    corners = sphere.vertices[sphere.faces].reshape(-1, 3) + rng.normal(0, 0.002, (len(sphere.faces) * 3, 3))
    shade = np.linspace(0, 255, texture_px, dtype=np.float32)
    pixels = np.stack([np.add.outer(shade, shade) / 2, np.tile(shade, (texture_px, 1)),
                       rng.integers(0, 40, (texture_px, texture_px))], -1).astype(np.uint8)
    visual = trimesh.visual.TextureVisuals(uv=rng.random((len(corners), 2)), image=Image.fromarray(pixels))
    mesh = trimesh.Trimesh(corners, np.arange(len(corners)).reshape(-1, 3), visual=visual, process=False)
    return mesh.export(file_type="glb")


def sample_glb() -> bytes:
    """A UV sphere with the rainbow texture, exported as binary glTF."""
    import numpy as np
    import trimesh

    n_lat, n_lon = 24, 48
    lat = np.linspace(0.0, math.pi, n_lat + 1)
    lon = np.linspace(0.0, 2 * math.pi, n_lon + 1)  # seam column duplicated for UVs
    lon_grid, lat_grid = np.meshgrid(lon, lat)
    vertices = np.stack(
        [
            np.sin(lat_grid) * np.cos(lon_grid),
            np.cos(lat_grid),
            np.sin(lat_grid) * np.sin(lon_grid),
        ],
        -1,
    ).reshape(-1, 3)
    uv = np.stack([lon_grid / (2 * math.pi), 1 - lat_grid / math.pi], -1).reshape(-1, 2)
    faces = []
    for i in range(n_lat):
        for j in range(n_lon):
            a = i * (n_lon + 1) + j
            c = a + n_lon + 1
            faces += [[a, a + 1, c], [a + 1, c + 1, c]]  # outward winding
    visual = trimesh.visual.TextureVisuals(uv=uv, image=_rainbow_texture())
    mesh = trimesh.Trimesh(vertices, np.array(faces), visual=visual, process=False)
    return mesh.export(file_type="glb")


@functools.lru_cache(maxsize=1)
def sample_png() -> bytes:
    """A small colourful PNG used as thumbnail / rendered preview."""
    buf = io.BytesIO()
    _rainbow_texture(256, 256).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------
# Server state
# --------------------------------------------------------------------------


@dataclass
class StoredFile:
    name: str
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class QueuedRequest:
    """One queue request; its phase is derived from the clock, not from a worker."""

    request_id: str
    app: str
    arguments: dict[str, Any]
    output: dict[str, Any]
    submitted_at: float
    queue_seconds: float
    run_seconds: float
    cancelled_at: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    sent_wall: float = field(default_factory=time.time)  # wall clock, for the Platform API's history

    def phase(self, now: float) -> str:
        """One of ``queued``, ``running``, ``done``, ``cancelled``."""
        if self.cancelled_at is not None:
            return "cancelled"
        return self._timeline_phase(now)

    def _timeline_phase(self, t: float) -> str:
        """Where the request would be at time ``t`` had nobody cancelled it."""
        elapsed = t - self.submitted_at
        if elapsed < self.queue_seconds:
            return "queued"
        if elapsed < self.queue_seconds + self.run_seconds:
            return "running"
        return "done"

    def next_change(self, now: float) -> float:
        """When the phase or the queue position changes next (inf once done)."""
        marks = [self.submitted_at + self.queue_seconds * f for f in (1 / 3, 2 / 3, 1)]
        marks.append(self.submitted_at + self.queue_seconds + self.run_seconds)
        return min((t for t in marks if t > now), default=math.inf)

    def queue_position(self, now: float) -> int:
        """Counts down 2, 1, 0 over the queue time, like a real queue draining."""
        if self.queue_seconds <= 0:
            return 0
        remaining = 1 - (now - self.submitted_at) / self.queue_seconds
        return max(0, min(2, int(3 * remaining)))

    def progress(self, now: float) -> float:
        """Fraction of the run phase done, 0..1."""
        if self.run_seconds <= 0:
            return 1.0
        ran = now - self.submitted_at - self.queue_seconds
        return max(0.0, min(1.0, ran / self.run_seconds))

    def logs(self, now: float) -> list[dict[str, Any]]:
        """All log lines so far (a poll returns the full log; a stream sends the new lines)."""
        until = self.cancelled_at if self.cancelled_at is not None else now
        reached = self._timeline_phase(until)
        messages: list[str] = []
        if reached != "queued":  # append-only, like a real log: a line every 10 %
            pct = int(100 * self.progress(until))
            messages += ["Loading pipeline", "Preprocessing image"]
            messages += [f"Sampling: {p}%" for p in range(0, pct + 1, 10)]
        if reached == "done":
            messages += ["Exporting GLB", "Done"]
        if self.cancelled_at is not None:
            messages.append("Request cancelled")
        stamp = datetime.now(timezone.utc).isoformat()
        return [
            {"message": m, "level": "INFO", "source": "stdout", "timestamp": stamp}
            for m in messages
        ]


@dataclass
class Failure:
    """An injected error: answer ``times`` matching requests (None = forever)."""

    status: int
    on: str
    times: int | None
    detail: Any = None
    ingress: bool = False  # answered by FAL's front proxy (nginx page, no x-fal-request-id)


@dataclass
class _PendingUpload:
    name: str
    content_type: str


class _Handler(BaseHTTPRequestHandler):
    """Routes each HTTP request to the owning FakeFal."""

    protocol_version = "HTTP/1.1"  # keep-alive, like FAL; every reply has Content-Length
    # Headers and body go out in two writes; with Nagle's algorithm on, the body waited for
    # the client's delayed ACK: 40 ms on every request, which real FAL does not add.
    disable_nagle_algorithm = True
    server: "_Server"
    timeout = 60  # drop idle keep-alive connections eventually

    def setup(self) -> None:
        super().setup()
        self.server.fake._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track_connection(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the request log lives in ``fake.requests_log``."""

    def do_GET(self) -> None:
        self.server.fake._dispatch(self)

    do_POST = do_PUT = do_HEAD = do_DELETE = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when 25 workers call at once,
    # and each dropped SYN costs the client a 1 s retransmit: real FAL has no such limit.
    request_queue_size = 256
    fake: "FakeFal"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops its keep-alive connection is normal, not a traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class FakeFal:
    """In-memory FAL: queue, run, storage and file serving on 127.0.0.1:<free port>.

    Knobs (plain attributes, safe to change while running): ``queue_seconds``,
    ``run_seconds`` (snapshotted per request at submit), ``fail_cdn_upload``,
    ``result_bytes``, ``omit_output_field``, ``status_stream``, ``stream_breaks_after``,
    ``stream_silent``; plus :meth:`fail`.
    Counters: ``submits``, ``submit_counts_by_sha256``, ``uploads``,
    ``status_polls``, ``status_streams``, ``requests_log``, ``cancelled``, ``cancel_calls``.
    ``status_stream``, ``stream_breaks_after`` and ``stream_silent`` shape the status stream.
    The Platform API's request history (``GET /v1/models/requests/by-endpoint``) lists ended
    requests, and unfinished ones too with ``history_lists_unfinished``; ``store_payloads``
    False leaves out their inputs. :meth:`lose_submit_answers` accepts submits and then loses
    the answer; :meth:`hang` makes calls hang.
    """

    def __init__(
        self,
        queue_seconds: float = 0.0,
        run_seconds: float = 0.0,
        *,
        fail_cdn_upload: bool = False,
        result_bytes: bytes | None = None,
        omit_output_field: bool = False,
        status_stream: bool = True,
        stream_breaks_after: int | None = None,
        stream_silent: bool = False,
    ) -> None:
        self.queue_seconds = queue_seconds
        self.run_seconds = run_seconds
        self.fail_cdn_upload = fail_cdn_upload
        self.result_bytes = result_bytes
        self.omit_output_field = omit_output_field
        self.status_stream = status_stream  # False: answer 404, like a FAL without the endpoint
        self.stream_breaks_after = stream_breaks_after  # cut each stream after this many events
        self.stream_silent = stream_silent  # hold streams open but send nothing (a buffering proxy)
        self.history_lists_unfinished = False  # real FAL may list a request only once it has ended
        self.store_payloads = True  # the account keeps request inputs (X-Fal-Store-IO)

        self._lock = threading.RLock()
        self._files: dict[str, StoredFile] = {}  # file id -> file
        self._pending_uploads: dict[str, _PendingUpload] = {}
        self._requests: dict[str, QueuedRequest] = {}
        self._cdn_tokens: set[str] = set()
        self._failures: list[Failure] = []
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # wakes hanging handlers when the fake stops
        self.reset()

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> "FakeFal":
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"FakeFal:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections, so clients fail fast."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeFal":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (still known after stop, so URLs stay comparable)."""
        if self._port is None:
            raise RuntimeError("FakeFal was never started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def platform_url(self) -> str:
        """What FAL_API_URL points at (FAL's is https://api.fal.ai/v1)."""
        return self.base_url + "/v1"

    # ---- knobs and counters ----------------------------------------------

    def reset(self) -> None:
        """Clear counters and injected failures (stored files and requests stay)."""
        with self._lock:
            self.submits: list[dict[str, Any]] = []
            self.submit_counts_by_sha256: collections.Counter[str] = collections.Counter()
            self.uploads: list[dict[str, Any]] = []
            self.status_polls = 0
            self.status_streams = 0
            self.requests_log: list[tuple[str, str]] = []
            self.keys_used: list[tuple[str, str, str]] = []  # (method, path, the Key header's secret)
            self.rejected_keys: set[str] = set()  # keys answered 401, as FAL answers an unknown key
            self.cancelled: list[str] = []
            self.cancel_calls: list[str] = []
            self.history_calls = 0
            self._failures = []
            self._lost_answers: list[list[Any]] = []  # [mode, times left or None, hang seconds]
            self._hangs: list[list[Any]] = []  # [on, times left or None, seconds]

    def set_latency(self, queue_seconds: float, run_seconds: float) -> None:
        """Change latency for requests submitted from now on."""
        with self._lock:
            self.queue_seconds = queue_seconds
            self.run_seconds = run_seconds

    def fail(
        self,
        status: int,
        *,
        on: str = "submit",
        times: int | None = None,
        detail: Any = None,
        ingress: bool = False,
    ) -> None:
        """Make the next ``times`` requests of kind ``on`` answer ``status``.

        ``on``: submit (queue submit and run), status, result, cancel, upload
        (CDN upload, storage initiate and its PUT), token (CDN token), download
        (GET /files). ``detail`` None picks a realistic FAL message. ``ingress``: the answer comes
        from the proxy in front of FAL (an nginx page, no x-fal-request-id), as when it never got there.
        """
        if on not in FAIL_POINTS:
            raise ValueError(f"on must be one of {FAIL_POINTS}, not {on!r}")
        with self._lock:
            self._failures.append(Failure(status, on, times, detail, ingress))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures = []
            self._lost_answers = []
            self._hangs = []

    def lose_submit_answers(self, mode: str, *, times: int | None = None, hang_seconds: float = 70.0) -> None:
        """Accept the next ``times`` submits (they are queued and counted, as FAL bills them),
        then lose the answer: ``drop`` cuts the connection, ``500`` answers a gateway error,
        ``hang`` says nothing for ``hang_seconds``."""
        if mode not in LOST_ANSWER_MODES:
            raise ValueError(f"mode must be one of {LOST_ANSWER_MODES}")
        with self._lock:
            self._lost_answers.append([mode, times, hang_seconds])

    def hang(self, on: str, *, seconds: float = 120.0, times: int | None = None) -> None:
        """The next ``times`` calls of kind ``on`` say nothing for ``seconds`` (then answer)."""
        if on not in HANG_POINTS:
            raise ValueError(f"on must be one of {HANG_POINTS}")
        with self._lock:
            self._hangs.append([on, times, seconds])

    def _take(self, armed: list[list[Any]], match: Callable[[list[Any]], bool]) -> list[Any] | None:
        with self._lock:
            for entry in armed:
                if match(entry) and entry[1] != 0:
                    if entry[1] is not None:
                        entry[1] -= 1
                    return entry
        return None

    def _maybe_hang(self, on: str) -> None:
        entry = self._take(self._hangs, lambda e: e[0] == on)
        if entry is not None:
            self._stopping.wait(entry[2])

    @property
    def requests(self) -> list[QueuedRequest]:
        with self._lock:
            return list(self._requests.values())

    def peak_in_flight(self, since: float = 0.0) -> int:
        """The most queue requests that were accepted and not yet finished at one moment
        (of those submitted from `since` on, a time.monotonic())."""
        edges = []
        for req in (r for r in self.requests if r.submitted_at >= since):
            end = req.cancelled_at if req.cancelled_at is not None else \
                req.submitted_at + req.queue_seconds + req.run_seconds
            edges += [(req.submitted_at, 1), (end, -1)]
        peak = current = 0
        for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):  # an end before a start at a tie
            current += step
            peak = max(peak, current)
        return peak

    def file_bytes(self, url: str) -> bytes | None:
        """Bytes of a file this fake stores, by its URL (or None)."""
        stored = self._file_for_url(url)
        return stored.data if stored else None

    # ---- internals: bookkeeping ------------------------------------------

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _take_failure(self, on: str) -> Failure | None:
        """Consume one use of the first active failure for ``on``."""
        with self._lock:
            for failure in self._failures:
                if failure.on != on or failure.times == 0:
                    continue
                if failure.times is not None:
                    failure.times -= 1
                return failure
        return None

    def _store(self, name: str, content_type: str, data: bytes) -> str:
        """Keep a file in memory and return its public URL."""
        file_id = uuid.uuid4().hex
        with self._lock:
            self._files[file_id] = StoredFile(name, content_type, data)
        return f"{self.base_url}/files/{file_id}/{name}"

    def _file_for_url(self, url: str) -> StoredFile | None:
        if self._port is None or not url.startswith(self.base_url + "/files/"):
            return None
        parts = urlsplit(url).path.split("/")  # ["", "files", id, name]
        if len(parts) < 4:
            return None
        with self._lock:
            return self._files.get(parts[2])

    def _input_hashes(self, value: Any) -> set[str]:
        """sha256 of every stored file (or data URI) referenced anywhere in ``value``."""
        found: set[str] = set()
        if isinstance(value, dict):
            for item in value.values():
                found |= self._input_hashes(item)
        elif isinstance(value, list):
            for item in value:
                found |= self._input_hashes(item)
        elif isinstance(value, str):
            stored = self._file_for_url(value)
            if stored is not None:
                found.add(stored.sha256)
            elif value.startswith("data:") and ";base64," in value:
                try:
                    data = base64.b64decode(value.split(";base64,", 1)[1], validate=True)
                    found.add(hashlib.sha256(data).hexdigest())
                except (binascii.Error, ValueError):
                    pass
        return found

    def _record_submit(self, app: str, arguments: dict[str, Any], request_id: str, via: str) -> None:
        hashes = self._input_hashes(arguments)
        with self._lock:
            self.submits.append(
                {"app": app, "arguments": arguments, "request_id": request_id, "via": via}
            )
            self.submit_counts_by_sha256.update(hashes)

    def _make_output(self, app: str, run_seconds: float) -> dict[str, Any]:
        """Store fresh result files and build the endpoint's output JSON."""
        data = self.result_bytes if self.result_bytes is not None else sample_glb()
        model_url = self._store("model.glb", GLB_CONTENT_TYPE, data)
        png = sample_png()
        image_url = self._store("preview.png", "image/png", png)
        model = {"url": model_url, "content_type": GLB_CONTENT_TYPE,
                 "file_name": "model.glb", "file_size": len(data)}
        image = {"url": image_url, "content_type": "image/png",
                 "file_name": "preview.png", "file_size": len(png)}
        return build_output(app, model, image, run_seconds=run_seconds,
                            omit_model=self.omit_output_field)

    def _queue_urls(self, req: QueuedRequest) -> dict[str, str]:
        base = f"{self.base_url}/queue/{queue_base(req.app)}/requests/{req.request_id}"
        return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}

    # ---- internals: HTTP -------------------------------------------------

    def _dispatch(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        path, query = split.path, parse_qs(split.query)
        method = h.command
        key = _presented_key(h)
        with self._lock:
            self.requests_log.append((method, path))
            if key:
                self.keys_used.append((method, path, key))
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        reply = _Reply(h)
        try:
            if path.startswith(("/queue/", "/run/", "/rest/", "/v1/")) and (not key or key in self.rejected_keys):
                return reply.error(401)
            if path == "/v1/models/requests/by-endpoint" and method == "GET":
                return self._handle_history(reply, query)
            if path.startswith("/queue/"):
                return self._handle_queue(reply, method, path[len("/queue/"):], query, body)
            if path.startswith("/run/") and method == "POST":
                return self._handle_run(reply, path[len("/run/"):], body)
            if path == "/rest/storage/auth/token" and method == "POST":
                return self._handle_token(reply)
            if path == "/cdn/files/upload" and method == "POST":
                return self._handle_cdn_upload(reply, h, body)
            if path == "/rest/storage/upload/initiate" and method == "POST":
                return self._handle_initiate(reply, body)
            if path.startswith("/upload/") and method == "PUT":
                return self._handle_put_upload(reply, path[len("/upload/"):], h, body)
            if path.startswith("/files/") and method in ("GET", "HEAD"):
                return self._handle_download(reply, path, head=method == "HEAD")
            return reply.error(404, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _inject(self, reply: "_Reply", on: str, *, app: str = "", request_id: str | None = None) -> bool:
        """Answer with an injected failure if one is armed; True if it did."""
        failure = self._take_failure(on)
        if failure is None:
            return False
        if failure.ingress:
            reply.gateway(failure.status)
            return True
        detail = failure.detail
        if detail is None and failure.status == 422:
            fields = required_fields(app) or ["image_url"]
            detail = missing_field_detail(fields[0], "Image could not be processed")
            detail[0]["type"] = "image_load_error"
        reply.error(failure.status, detail, request_id=request_id)
        return True

    def _handle_queue(self, reply: "_Reply", method: str, rest: str,
                      query: dict[str, list[str]], body: bytes) -> None:
        parts = rest.strip("/").split("/")
        if method == "POST":
            if len(parts) < 2 or not all(parts[:2]):
                return reply.error(404, "Application not found")
            return self._handle_submit(reply, rest.strip("/"), body)
        # .../requests/{id}  |  .../requests/{id}/status[/stream]  |  .../requests/{id}/cancel
        if parts[-2:] == ["status", "stream"]:
            action, suffix = "stream", 2
        elif parts[-1] in ("status", "cancel"):
            action, suffix = parts[-1], 1
        else:
            action, suffix = "result", 0
        id_index = len(parts) - suffix - 1
        if id_index < 2 or parts[id_index - 1] != "requests":
            return reply.error(404, "Not Found")
        request_id, prefix = parts[id_index], "/".join(parts[: id_index - 1])
        expected = {"status": "GET", "stream": "GET", "result": "GET", "cancel": "PUT"}[action]
        if method != expected:
            return reply.error(405, "Method Not Allowed")
        with self._lock:
            req = self._requests.get(request_id)
            if action == "status":
                self.status_polls += 1
            if action == "stream":
                self.status_streams += 1
            if action == "cancel":
                self.cancel_calls.append(request_id)
        if req is None or queue_base(req.app) != prefix:
            # Real FAL keys requests by owner/alias only; a subpath here is a client bug.
            if action == "cancel":
                return reply.json(404, {"status": "NOT_FOUND"}, request_id=request_id)
            return reply.error(404, "Request not found", request_id=request_id)
        if action == "stream" and not self.status_stream:
            return reply.error(404, "Not Found", request_id=request_id)
        if self._inject(reply, action, app=req.app, request_id=request_id):
            return None
        self._maybe_hang(action)
        now = time.monotonic()
        if action == "stream":
            return self._stream_status(reply, req, query)
        if action == "status":
            return self._reply_status(reply, req, now, query)
        if action == "cancel":
            return self._reply_cancel(reply, req, now)
        return self._reply_result(reply, req, now)

    def _accept_arguments(self, reply: "_Reply", app: str, body: bytes) -> dict[str, Any] | None:
        """The submitted arguments, or None after answering 422 (or an injected failure)."""
        arguments = _parse_json_object(body)
        if arguments is None:
            reply.error(422, _INVALID_JSON_DETAIL)
            return None
        if self._inject(reply, "submit", app=app):
            return None
        for name in required_fields(app):
            if arguments.get(name) is None:
                reply.error(422, missing_field_detail(name))
                return None
        return arguments

    def _handle_submit(self, reply: "_Reply", app: str, body: bytes) -> None:
        arguments = self._accept_arguments(reply, app, body)
        if arguments is None:
            return None
        with self._lock:
            queue_seconds, run_seconds = self.queue_seconds, self.run_seconds
        req = QueuedRequest(
            request_id=str(uuid.uuid4()), app=app, arguments=arguments,
            output=self._make_output(app, run_seconds), submitted_at=time.monotonic(),
            queue_seconds=queue_seconds, run_seconds=run_seconds,
        )
        with self._lock:
            self._requests[req.request_id] = req
        self._record_submit(app, arguments, req.request_id, via="queue")
        lost = self._take(self._lost_answers, lambda e: True)
        if lost is not None:
            return self._lose_answer(reply, lost[0], lost[2])
        reply.json(200, {"request_id": req.request_id, **self._queue_urls(req),
                         "status": "IN_QUEUE", "queue_position": 0},
                   request_id=req.request_id)

    def _lose_answer(self, reply: "_Reply", mode: str, hang_seconds: float) -> None:
        """The submit is accepted (and would be billed); its answer never arrives intact."""
        if mode == "500":
            return reply.error(500, "Internal server error")
        if mode == "hang":
            self._stopping.wait(hang_seconds)
        reply.drop()

    def _handle_history(self, reply: "_Reply", query: dict[str, list[str]]) -> None:
        """FAL's Platform API: requests of one endpoint, newest first, with their inputs."""
        with self._lock:
            self.history_calls += 1
        if self._inject(reply, "history"):
            return None
        self._maybe_hang("history")
        endpoint = (query.get("endpoint_id") or [""])[0]
        start = (query.get("start") or [""])[0]
        since = datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() if start else time.time() - 86400
        limit = min(100, int((query.get("limit") or ["50"])[0]))
        offset = int(base64.b64decode((query.get("cursor") or ["MA=="])[0]).decode())
        now = time.monotonic()
        entries = []
        for req in self.requests:
            phase = req.phase(now)
            ended = phase in ("done", "cancelled")
            if req.app != endpoint or req.sent_wall < since or (not ended and not self.history_lists_unfinished):
                continue
            entry: dict[str, Any] = {
                "request_id": req.request_id, "endpoint_id": req.app,
                "sent_at": _iso(req.sent_wall), "started_at": _iso(req.sent_wall + req.queue_seconds),
                "ended_at": _iso(req.sent_wall + req.queue_seconds + req.run_seconds) if ended else None,
                "status_code": 200 if ended else None, "duration": req.run_seconds if ended else None,
            }
            if self.store_payloads:
                entry["json_input"] = req.arguments
                entry["json_output"] = req.output if phase == "done" else None
            entries.append(entry)
        entries.sort(key=lambda e: e["sent_at"], reverse=True)
        page = entries[offset: offset + limit]
        more = offset + limit < len(entries)
        reply.json(200, {"items": page, "has_more": more,
                         "next_cursor": base64.b64encode(str(offset + limit).encode()).decode() if more else None})

    def _status_payload(self, req: QueuedRequest, now: float, with_logs: bool) -> dict[str, Any]:
        phase = req.phase(now)
        logs = req.logs(now) if with_logs else None
        data: dict[str, Any] = {"request_id": req.request_id, **self._queue_urls(req), "logs": logs}
        if phase == "queued":
            data.update(status="IN_QUEUE", queue_position=req.queue_position(now))
        elif phase == "running":
            data.update(status="IN_PROGRESS")
        else:
            data.update(status="COMPLETED", metrics={"inference_time": req.run_seconds})
            if phase == "cancelled":
                data.update(error="Request was cancelled", error_type="request_cancelled")
        return data

    def _reply_status(self, reply: "_Reply", req: QueuedRequest, now: float,
                      query: dict[str, list[str]]) -> None:
        data = self._status_payload(req, now, _wants_logs(query))
        code = 200 if data["status"] == "COMPLETED" else 202
        reply.json(code, data, request_id=req.request_id)

    def _stream_status(self, reply: "_Reply", req: QueuedRequest, query: dict[str, list[str]]) -> None:
        """FAL's status stream: the current status at once, then an event whenever the status
        or queue position changes and, while running, every STREAM_LOG_SECONDS (a model
        logging its progress); each event carries only the log lines that are new. The
        server closes the stream after COMPLETED."""
        with_logs = _wants_logs(query)
        reply.start_stream(req.request_id)
        if self.stream_silent:  # like a proxy that buffers events: the client hears nothing
            while self.stream_silent and req.phase(time.monotonic()) not in ("done", "cancelled"):
                req.cancelled.wait(0.05)
            return
        sent_logs = 0
        last_key: tuple[Any, ...] | None = None
        last_sent = 0.0
        events = 0
        while True:
            now = time.monotonic()
            data = self._status_payload(req, now, with_logs)
            key = (data["status"], data.get("queue_position"))
            if key != last_key or now - last_sent >= STREAM_LOG_SECONDS:
                if with_logs:
                    all_logs = data["logs"] or []
                    data["logs"], sent_logs = all_logs[sent_logs:], len(all_logs)
                if not reply.event(data):
                    return
                events += 1
                last_key, last_sent = key, now
                if data["status"] == "COMPLETED":
                    return
                if self.stream_breaks_after is not None and events >= self.stream_breaks_after:
                    return  # the connection drops mid-request, as proxies sometimes do
            wake = min(req.next_change(now), last_sent + STREAM_LOG_SECONDS)
            req.cancelled.wait(max(0.0, wake - time.monotonic()))

    def _reply_cancel(self, reply: "_Reply", req: QueuedRequest, now: float) -> None:
        if req.phase(now) in ("done", "cancelled"):
            return reply.json(400, {"status": "ALREADY_COMPLETED"}, request_id=req.request_id)
        with self._lock:
            req.cancelled_at = now
            self.cancelled.append(req.request_id)
        req.cancelled.set()
        reply.json(202, {"status": "CANCELLATION_REQUESTED"}, request_id=req.request_id)

    def _reply_result(self, reply: "_Reply", req: QueuedRequest, now: float) -> None:
        phase = req.phase(now)
        if phase == "cancelled":
            return reply.error(400, "Request was cancelled", request_id=req.request_id)
        if phase != "done":
            return reply.error(400, "Request is still in progress", request_id=req.request_id)
        reply.json(200, req.output, request_id=req.request_id)

    def _handle_run(self, reply: "_Reply", app: str, body: bytes) -> None:
        """Synchronous endpoint: sleep for the whole queue+run time, then answer."""
        app = app.strip("/")
        arguments = self._accept_arguments(reply, app, body)
        if arguments is None:
            return None
        with self._lock:
            queue_seconds, run_seconds = self.queue_seconds, self.run_seconds
        request_id = str(uuid.uuid4())
        self._record_submit(app, arguments, request_id, via="run")
        output = self._make_output(app, run_seconds)
        time.sleep(queue_seconds + run_seconds)
        reply.json(200, output, request_id=request_id)

    def _handle_token(self, reply: "_Reply") -> None:
        if self._inject(reply, "token"):
            return None
        token = "fake-cdn-" + uuid.uuid4().hex
        with self._lock:
            self._cdn_tokens.add(token)
        expires = datetime.now(timezone.utc) + timedelta(hours=1)
        reply.json(200, {"token": token, "token_type": "Bearer",
                         "base_url": self.base_url + "/cdn", "expires_at": expires.isoformat()})

    def _handle_cdn_upload(self, reply: "_Reply", h: _Handler, body: bytes) -> None:
        auth = h.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        with self._lock:
            known = token in self._cdn_tokens
        if not known:
            return reply.error(401, "Invalid CDN token")
        if self.fail_cdn_upload:
            return reply.error(500, "CDN upload unavailable")
        self._maybe_hang("upload")
        if self._inject(reply, "upload"):
            return None
        content_type = h.headers.get("Content-Type") or "application/octet-stream"
        name = h.headers.get("X-Fal-File-Name") or _random_name(content_type)
        url = self._store(name, content_type, body)
        self._record_upload(name, content_type, body, "cdn")
        reply.json(200, {"access_url": url})

    def _handle_initiate(self, reply: "_Reply", body: bytes) -> None:
        self._maybe_hang("upload")
        if self._inject(reply, "upload"):
            return None
        payload = _parse_json_object(body) or {}
        content_type = payload.get("content_type") or "application/octet-stream"
        name = payload.get("file_name") or _random_name(content_type)
        upload_id = uuid.uuid4().hex
        with self._lock:
            self._pending_uploads[upload_id] = _PendingUpload(name, content_type)
        reply.json(200, {"upload_url": f"{self.base_url}/upload/{upload_id}",
                         "file_url": f"{self.base_url}/files/{upload_id}/{name}"})

    def _handle_put_upload(self, reply: "_Reply", upload_id: str, h: _Handler, body: bytes) -> None:
        """The signed-URL PUT of the storage fallback (no FAL auth, like GCS)."""
        with self._lock:
            pending = self._pending_uploads.pop(upload_id, None)
        if pending is None:
            return reply.error(404, "Unknown upload")
        if self._inject(reply, "upload"):
            with self._lock:  # keep it retryable
                self._pending_uploads[upload_id] = pending
            return None
        content_type = h.headers.get("Content-Type") or pending.content_type
        with self._lock:
            self._files[upload_id] = StoredFile(pending.name, content_type, body)
        self._record_upload(pending.name, content_type, body, "fallback")
        reply.json(200, {})

    def _record_upload(self, name: str, content_type: str, data: bytes, path: str) -> None:
        with self._lock:
            self.uploads.append({"name": name, "content_type": content_type, "size": len(data),
                                 "sha256": hashlib.sha256(data).hexdigest(), "path": path})

    def _handle_download(self, reply: "_Reply", path: str, *, head: bool) -> None:
        stored = self._file_for_url(self.base_url + path)
        if stored is None:
            return reply.error(404, "File not found")
        if self._inject(reply, "download"):
            return None
        reply.raw(200, stored.data, stored.content_type, head=head)


class _Reply:
    """Writes complete HTTP/1.1 responses; always tags them with x-fal-request-id."""

    def __init__(self, handler: _Handler) -> None:
        self._h = handler

    def start_stream(self, request_id: str) -> None:
        """An event stream: no length, so the connection closes when it ends."""
        h = self._h
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Connection", "close")
        h.send_header("x-fal-request-id", request_id)
        h.end_headers()
        h.close_connection = True

    def drop(self) -> None:
        """Cut the connection without an answer."""
        h = self._h
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def event(self, data: Any) -> bool:
        """One server-sent event; False once the client has gone."""
        try:
            self._h.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
            self._h.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def raw(self, code: int, data: bytes, content_type: str, *, head: bool = False,
            request_id: str | None = None, headers: dict[str, str] | None = None) -> None:
        h = self._h
        h.send_response(code)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("x-fal-request-id", request_id or str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        if not head:
            h.wfile.write(data)

    def gateway(self, code: int) -> None:
        """An error page from the proxy in front of FAL: the request never reached FAL."""
        phrase = f"{code} {HTTPStatus(code).phrase}"
        page = f"<html><head><title>{phrase}</title></head><body><center><h1>{phrase}</h1></center>" \
               "<hr><center>nginx</center></body></html>"
        data = page.encode()
        h = self._h
        h.send_response(code)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def json(self, code: int, payload: Any, *, request_id: str | None = None,
             headers: dict[str, str] | None = None) -> None:
        self.raw(code, json.dumps(payload).encode(), "application/json",
                 request_id=request_id, headers=headers)

    def error(self, code: int, detail: Any = None, *, request_id: str | None = None) -> None:
        """``{"detail": ...}`` with FAL's default message and error-type header."""
        if detail is None:
            detail = _DEFAULT_DETAILS.get(code) or HTTPStatus(code).phrase
        headers = {}
        if code in _DEFAULT_ERROR_TYPES:
            headers["x-fal-error-type"] = _DEFAULT_ERROR_TYPES[code]
        if code == 422:
            headers["x-fal-retryable"] = "false"
        self.json(code, {"detail": detail}, request_id=request_id, headers=headers)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def _wants_logs(query: dict[str, list[str]]) -> bool:
    return (query.get("logs") or ["0"])[0].lower() in ("1", "true", "yes")


def _presented_key(h: BaseHTTPRequestHandler) -> str:
    """FAL API calls need ``Authorization: Key <id:secret>``; the secret, or "" without one."""
    scheme, _, secret = (h.headers.get("Authorization") or "").partition(" ")
    return secret.strip() if scheme == "Key" else ""


def _parse_json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _random_name(content_type: str) -> str:
    """Like the CDN: unnamed uploads get a random name with a fitting extension."""
    ext = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin"
    return uuid.uuid4().hex + ext

"""Who is calling, may they, and how often: API keys, client addresses, rate limits, headers.

- Keys (API_KEYS) are compared as SHA-256 digests with `hmac.compare_digest`, never logged and
  never stored: a job records only `owner_id(key)`, a short non-secret fingerprint.
- The client address comes from X-Forwarded-For only when the direct peer is a trusted proxy
  (TRUSTED_PROXIES); otherwise anyone could pick their own rate-limit bucket.
- Rate limits use `limits.aio` (moving window): Redis when REDIS_URL is set, so every process
  and machine shares one count; in memory otherwise. If Redis fails, a per-process memory
  limiter takes over rather than letting every request through.
- Headers: API and download responses get nosniff and a deny-everything CSP; the Gradio page
  gets nothing from here, so it stays embeddable in a Space's iframe.
- Range: a Range header Gradio's file route would crash on is dropped before it gets there.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from image2model.config import Settings
from image2model.metrics import UPLOADS_REFUSED
from image2model.web.envelope import HttpAppError, error_response
from image2model.web.tokens import JobTokens

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
OPEN_PATHS = ("/health", "/ready")
DOCS_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
RATE_STATE = "image2model_rate_headers"  # request.state key the header middleware reads
OWNER_ID_LENGTH = 16

bearer = HTTPBearer(auto_error=False, description="One of the keys in API_KEYS.")
key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                          description="One of the keys in API_KEYS (the same as a Bearer key).")
START_REFUSAL = ("You have started as many jobs as this site takes from one visitor for now; please try again "
                 "in {wait} s.")
KEY_HELP = "send the header 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


def owner_id(key: str) -> str:
    """The non-secret id a key's jobs are filed under (the key itself is never stored)."""
    return hashlib.sha256(key.encode()).hexdigest()[:OWNER_ID_LENGTH]


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/") or path in OPEN_PATHS


# --- keys ----------------------------------------------------------------------------------
class ApiKeys:
    def __init__(self, keys: list[str]):
        self._digests = [(hashlib.sha256(k.encode()).digest(), owner_id(k)) for k in keys]

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def owner_for(self, presented: str | None) -> str | None:
        """The owner id of a valid key, else None. Every configured key is compared, in
        constant time, so timing tells nothing about which key or how much of it matched."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for candidate, owner in self._digests:
            if hmac.compare_digest(digest, candidate):
                found = owner
        return found


# --- client address ------------------------------------------------------------------------
class ClientAddress:
    def __init__(self, trusted: list[str]):
        self.networks = [ipaddress.ip_network(t, strict=False) for t in trusted]

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def __call__(self, request: Any) -> str:
        """The first untrusted hop, reading X-Forwarded-For right to left, when the direct
        peer is a trusted proxy; otherwise the direct peer. Takes a Starlette request or a
        gr.Request (whose headers may be a plain dict)."""
        client = getattr(request, "client", None)
        peer = getattr(client, "host", None) or "unknown"
        if not self.networks or not self.trusted(peer):
            return peer
        headers = getattr(request, "headers", None) or {}
        values = headers.getlist("x-forwarded-for") if hasattr(headers, "getlist") \
            else [headers.get("x-forwarded-for") or ""]
        hops = [h.strip() for value in values for h in value.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusted(hop):
                return hop[:64]
        return hops[0][:64] if hops else peer


# --- rate limits ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # epoch seconds when a slot frees up

    def headers(self, now: float) -> dict[str, str]:
        headers = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(max(0, self.remaining)),
                   "X-RateLimit-Reset": str(math.ceil(self.reset))}
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.reset - now)))
        return headers


def limiter_storage(settings: Settings) -> Storage:
    if settings.use_redis:
        # short timeouts: a stuck Redis must cost a request a moment, not hang it
        return storage_from_string(f"async+{settings.redis_url}", implementation="redispy",
                                   wrap_exceptions=True, key_prefix="image2model-limits",
                                   socket_timeout=2.0, socket_connect_timeout=2.0)
    return MemoryStorage()


def limits_of(setting: str) -> list[RateLimitItem]:
    return [] if setting == "off" else parse_many(setting)


class RateLimiter:
    """Named groups of limits ("api", "upload", "login") counted per caller identity."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.groups: dict[str, list[RateLimitItem]] = {
            "api": limits_of(settings.rate_limit_api),
            "upload": limits_of(settings.rate_limit_upload),
            "login": limits_of(settings.rate_limit_login),
        }
        self._main: MovingWindowRateLimiter | None = None  # built on first use, inside the loop
        self._fallback: MovingWindowRateLimiter | None = None
        self._warned_at = 0.0

    def _strategies(self) -> tuple[MovingWindowRateLimiter, MovingWindowRateLimiter]:
        if self._main is None or self._fallback is None:
            self._main = MovingWindowRateLimiter(limiter_storage(self.settings))
            self._fallback = MovingWindowRateLimiter(MemoryStorage())
        return self._main, self._fallback

    async def hit(self, group: str, identity: str, *, count: bool = True) -> Verdict | None:
        """Count one request against every limit of the group; the tightest verdict. With
        count=False, only whether one more would be allowed (nothing is counted)."""
        verdicts = [await self._hit_one(item, group, identity, count) for item in self.groups.get(group, [])]
        if not verdicts:
            return None
        refused = [v for v in verdicts if not v.allowed]
        if refused:
            return max(refused, key=lambda v: v.reset)
        return min(verdicts, key=lambda v: v.remaining)

    async def _hit_one(self, item: RateLimitItem, group: str, identity: str, count: bool) -> Verdict:
        main, fallback = self._strategies()
        try:
            return await self._verdict(main, item, group, identity, count)
        except StorageError:
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("rate-limit storage unreachable; counting in this process only for now")
            return await self._verdict(fallback, item, group, identity, count)

    @staticmethod
    async def _verdict(strategy: MovingWindowRateLimiter, item: RateLimitItem, group: str,
                       identity: str, count: bool) -> Verdict:
        allowed = await (strategy.hit if count else strategy.test)(item, group, identity)
        stats = await strategy.get_window_stats(item, group, identity)
        return Verdict(allowed, item.amount, stats.remaining, stats.reset_time)


# --- the caller ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Caller:
    key_owner: str | None  # owner id of the presented key; None without one
    auth_required: bool  # API_KEYS is set
    address: str

    @property
    def job_owner(self) -> str:
        """Recorded on jobs this caller creates."""
        return self.key_owner or ""

    @property
    def owner_filter(self) -> str | None:
        """What the job service matches a job's owner against; None (anyone) when open."""
        return self.key_owner if self.auth_required else None

    @property
    def share(self) -> str:
        """Whose fair share of the queue this caller's jobs run in: its key, or its address
        (the same identity its rate limits count)."""
        return f"key:{self.key_owner}" if self.key_owner else f"ip:{self.address}"

    def may_download(self, job_owner: str) -> bool:
        """Files of a page-made job (owner "") are reachable by its unguessable id, since a
        browser cannot send a key; a key's jobs only with that key."""
        return not self.auth_required or job_owner == "" or job_owner == self.key_owner


class ApiSecurity:
    def __init__(self, settings: Settings, tokens: JobTokens):
        self.keys = ApiKeys(settings.api_key_list)
        self.address = ClientAddress(settings.trusted_proxy_list)
        self.limiter = RateLimiter(settings)
        self.tokens = tokens

    def read_filter(self, job_id: str, caller: Caller, token: str | None) -> str | None:
        """Who may read a job (status, stream): the owner filter for the job service, once
        the caller showed its key, or a job token for this very job."""
        if not caller.auth_required or caller.key_owner is not None:
            return caller.owner_filter
        if self.tokens.valid(job_id, token):
            return None
        if token:
            raise unauthorized("invalid_token", "That job token is not valid for this job, or it has expired; "
                               "get a fresh one from GET /api/v1/download/{job}/all with your key.")
        raise unauthorized("missing_api_key", f"This API needs a key: {KEY_HELP}. Where no header can be "
                           "sent (a browser's EventSource), add ?token=<the job's token from the upload answer>.")

    def public_base(self, request: Request) -> str:
        """This server's address as the client reached it (through a trusted proxy: as the
        proxy says), for links that must work from another origin."""
        headers = request.headers
        peer = request.client.host if request.client else ""
        if self.address.trusted(peer) and headers.get("x-forwarded-host"):
            proto = headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
            host = headers["x-forwarded-host"].split(",")[0].strip()
            return f"{proto}://{host}{request.scope.get('root_path', '')}"
        return str(request.base_url).rstrip("/")

    def dependency(self, *, key_required: bool = True, groups: tuple[str, ...] = ("api",)
                   ) -> Callable[..., Awaitable[Caller]]:
        """A FastAPI dependency: count the request, then check the key (so guessing keys is
        rate-limited too)."""

        async def caller(request: Request,
                         credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                         header_key: str | None = Depends(key_header)) -> Caller:
            presented = credentials.credentials if credentials else header_key
            owner = self.keys.owner_for(presented) if self.keys.required else None
            address = self.address(request)
            found = Caller(owner, self.keys.required, address)
            await self._count(request, found.share, groups)
            if self.keys.required:
                if presented and owner is None:
                    raise unauthorized("invalid_api_key", "That API key is not valid.")
                if owner is None and key_required:
                    raise unauthorized("missing_api_key", f"This API needs a key: {KEY_HELP}.")
            return found

        return caller

    async def _count(self, request: Request, identity: str, groups: tuple[str, ...]) -> None:
        headers = await self.count(identity, groups)
        if headers:
            setattr(request.state, RATE_STATE, headers)

    async def count(self, identity: str, groups: tuple[str, ...], refusal: str = "Too many requests; try again "
                    "in {wait} s.", *, peek: bool = False) -> dict[str, str]:
        """Count one request in each group; the last group's rate headers, or HttpAppError
        rate_limited (its message from `refusal`) once a limit is reached. With peek, only
        whether one more would pass."""
        now = time.time()
        headers: dict[str, str] = {}
        for group in groups:
            verdict = await self.limiter.hit(group, identity, count=not peek)
            if verdict is None:
                continue
            headers = verdict.headers(now)
            if not verdict.allowed:
                if group == "upload":
                    UPLOADS_REFUSED.labels("rate_limited").inc()
                wait = headers["Retry-After"]
                raise HttpAppError("rate_limited", refusal.format(wait=wait), 429,
                                   {"limit": verdict.limit, "retry_after": int(wait)}, headers=headers)
        return headers

    async def may_start(self, request: Any) -> str:
        """Before a job is made from the page, /generate or an MCP tool: HttpAppError
        rate_limited when this visitor has no starts left. Returns whom to count once the job
        is made (`count_start`): a mistake does not use up a visitor's starts. They share the
        REST upload's group and bucket (ip:<address>), so every door has one budget."""
        identity = f"ip:{self.address(request)}"
        await self.count(identity, ("upload",), START_REFUSAL, peek=True)
        return identity

    async def count_start(self, identity: str) -> None:
        await self.limiter.hit("upload", identity)


def unauthorized(code: str, message: str) -> HttpAppError:
    return HttpAppError(code, message, 401, headers={"WWW-Authenticate": "Bearer"})


# --- response headers and CORS -------------------------------------------------------------
API_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; sandbox",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """Pure ASGI (streams pass straight through): hardening headers for the API and its
    downloads, nosniff for the docs, nothing for the page."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if is_api_path(path):
            extra = API_HEADERS
        elif path in DOCS_PATHS:
            extra = {"X-Content-Type-Options": "nosniff"}
        else:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers[name] = value
                headers.setdefault("Cache-Control", "no-store")
                rate: dict[str, str] | None = (scope.get("state") or {}).get(RATE_STATE)
                for name, value in (rate or {}).items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


GRADIO_FILE_ROUTE = "/file="  # Gradio 6: /gradio_api/file=<absolute path>
GRADIO_RANGE = re.compile(rb"bytes=[0-9]{1,18}-[0-9]{0,18}")  # the one form Gradio's file route parses safely


class GradioRangeGuard:
    """Pure ASGI: a Range header Gradio's file route cannot parse is dropped (the whole file is
    sent, as RFC 9110 allows), not left to crash it. Gradio 6.31 checks the numbers with
    str.isnumeric(), so "bytes=²-³" reached int() and gave a 500; so did two ranges or a
    second dash. The API's own downloads parse ranges themselves and keep theirs."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_api_path(scope.get("path", "")):
            headers = scope.get("headers") or []
            if any(k.lower() == b"range" and not GRADIO_RANGE.fullmatch(v.strip()) for k, v in headers):
                scope = {**scope, "headers": [(k, v) for k, v in headers if k.lower() != b"range"]}
        await self.app(scope, receive, send)


class KeyedJobFiles:
    """Pure ASGI: Gradio's file route (`.../file=<path>`) serves what lies under the data
    directory by its path, a job's photos and models included. A job made with an API key
    belongs to that key (the REST routes check it), so its files are not served there: 404,
    as to any other caller without the key. Page jobs (no owner) are served as before."""

    def __init__(self, app: ASGIApp, root: Path, owner_of: Callable[[str], str | None]):
        self.app = app
        self.root = root.resolve()
        self.owner_of = owner_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        marker = path.find(GRADIO_FILE_ROUTE)
        if marker >= 0 and not is_api_path(path):
            job_id = self._job_of(path[marker + len(GRADIO_FILE_ROUTE):])
            if job_id and await run_in_threadpool(self.owner_of, job_id):
                response = error_response(404, "file_not_found", "No such file.")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _job_of(self, target: str) -> str | None:
        """The job directory a file path lies in (after resolving `..` and links), if any."""
        try:
            relative = Path(os.path.realpath(target)).relative_to(self.root)
        except ValueError:
            return None
        return relative.parts[0] if relative.parts else None


class ApiCors:
    """CORS for the API only (CORS_ORIGINS); the page keeps Gradio's own CORS handling.

    A preflight from an origin not allowed (or with none allowed) is answered as CORS means:
    204 with no allow headers, so the browser refuses, rather than 405 or 400."""

    def __init__(self, app: ASGIApp, origins: list[str]):
        self.app = app
        self.any_origin = "*" in origins
        self.origins = set(origins)
        self.cors = CORSMiddleware(
            app, allow_origins=origins, allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "X-Fal-Key", "Content-Type", "Last-Event-ID", "Range",
                           "If-None-Match"],
            expose_headers=["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                            "Content-Disposition", "ETag", "Location", "Content-Range"],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin", b"").decode("latin-1")
        preflight = scope["method"] == "OPTIONS" and origin and b"access-control-request-method" in headers
        if preflight and not (self.any_origin or origin in self.origins):
            await send({"type": "http.response.start", "status": 204,
                        "headers": [(b"vary", b"Origin"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.cors(scope, receive, send)


def install_security(app: Any, settings: Settings, files_root: Path, owner_of: Callable[[str], str | None]) -> None:
    """Middleware (CORS inside, headers outside, so errors and preflights get headers too)
    and the start-up warnings. `owner_of(job_id)`: the job's owner, "" or None for none."""
    app.add_middleware(ApiCors, origins=settings.cors_origin_list)
    app.add_middleware(KeyedJobFiles, root=files_root, owner_of=owner_of)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(GradioRangeGuard)
    keys = settings.api_key_list
    if not keys:
        log.warning("API_KEYS is not set: the REST API at %s is open to anyone who can reach this server",
                    API_PREFIX)
    elif any(len(k) < 16 for k in keys):
        log.warning("an API key in API_KEYS is shorter than 16 characters; long random keys are safer")

"""Every setting, read from the environment (and an optional `.env`).

`.env.example` and the README list the same names with the same defaults; change all three
together.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from limits import parse_many
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    """A Space with persistent storage mounts /data; everywhere else use ./data."""
    space_storage = Path("/data")
    if space_storage.is_dir() and os.access(space_storage, os.W_OK):
        return space_storage
    return Path("data").resolve()


class Settings(BaseSettings):
    # env_ignore_empty: `NAME=` (as in .env.example) means "use the default", not "empty value".
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True)

    # FAL.AI. Without a key the FAL models are listed as unavailable and the offline model is used.
    fal_key: str = Field(default="", repr=False)
    # Redis switches the queue, the job store and the rate limits to Redis together.
    redis_url: str = Field(default="", repr=False)
    data_dir: Path = Field(default_factory=_default_data_dir)

    # Limits on a submission.
    max_images: int = Field(default=25, ge=1, le=1000)
    max_image_mb: float = Field(default=20.0, gt=0)
    # New jobs are refused while this many photos already wait for a worker (0: no limit), so
    # one visitor cannot queue hours of work ahead of everyone; rate_limit_upload bounds each visitor.
    max_waiting_images: int = Field(default=200, ge=0)
    max_image_pixels: int = Field(default=50_000_000, ge=1)  # decompression-bomb guard
    fal_max_side: int = Field(default=2048, ge=64)  # larger images are downscaled before upload
    max_result_mb: float = Field(default=200.0, gt=0)
    fal_images_per_hour: int = Field(default=200, ge=0)  # spending guard across everyone; 0 = off

    # Workers: threads for the short steps (upload, submit, download, checks) and offline builds.
    # Waiting on FAL holds no thread: up to fal_concurrency requests per process are in flight
    # at once, followed by one watcher. FAL's own limit is per account (2 for a new one, up to
    # 40 as credit is bought); requests past it wait in FAL's queue, which costs nothing.
    workers: int = Field(default=25, ge=1, le=256)
    fal_concurrency: int = Field(default=40, ge=1, le=10000)
    # Offline builds run in this many processes of their own (empty: one per core; 0: in the
    # worker threads of this process, which saves their memory but not the GIL's time).
    offline_processes: int | None = Field(default=None, ge=0, le=256)
    embedded_worker: bool | None = None  # None: on unless REDIS_URL is set
    default_model: str = ""  # empty: a FAL model with a key, the offline model without

    # Reliability.
    item_deadline_seconds: float = Field(default=900.0, gt=0)
    fal_retries: int = Field(default=4, ge=0, le=20)
    retry_base_seconds: float = Field(default=2.0, ge=0)
    retry_max_seconds: float = Field(default=60.0, ge=0)
    fal_poll_seconds: float = Field(default=1.0, gt=0)
    # One call to FAL (status, result, cancel) waits at most this long, so a hung FAL never
    # holds an item past its deadline or a cancel; a submit may take longer to answer.
    fal_call_timeout_seconds: float = Field(default=5.0, gt=0)
    fal_submit_timeout_seconds: float = Field(default=30.0, gt=0)
    # FAL's Platform API, where a submit whose answer was lost is looked up by its inputs.
    fal_api_url: str = "https://api.fal.ai/v1"
    # How long after a lost submit FAL may take to list the request (it may list it only once
    # it has ended): the lookup repeats until then before it counts as "not there".
    fal_reconcile_seconds: float = Field(default=300.0, ge=0)
    # When the lookup cannot decide (no stored inputs, key not allowed, API down): "fail" the
    # photo with a plain message (it may have been charged), or "resubmit" it (may pay twice).
    fal_uncertain_submit: Literal["fail", "resubmit"] = "fail"
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    stale_after_seconds: float = Field(default=60.0, gt=0)
    max_item_attempts: int = Field(default=3, ge=1)  # worker crashes tolerated per item
    # Every worker process says it is alive this often, reaps dead workers' items and queues
    # lost tasks again; its items are taken over once it has been silent for worker_ttl.
    reap_seconds: float = Field(default=3.0, gt=0)
    worker_ttl_seconds: float = Field(default=10.0, gt=0)

    # Housekeeping. Below this much free disk, /ready says so and uploads are refused (507).
    min_free_disk_mb: float = Field(default=100.0, ge=0)
    retention_hours: float = Field(default=24.0, gt=0)

    # Web (used by later layers; listed here so every setting lives in one place).
    port: int = Field(default=7860, validation_alias=AliasChoices("PORT", "GRADIO_SERVER_PORT"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["logfmt", "json"] = "logfmt"  # one event per line either way
    # A line for every request costs about 15 % of the status endpoint's throughput: by default
    # only requests answered with an error are logged (5xx at warning level).
    access_log: Literal["errors", "all", "off"] = "errors"

    # Page: the browser keeps a list of recent job ids in localStorage under this key,
    # encrypted with this secret. Both are fixed so the list survives a restart. The secret
    # only protects a list of job ids (which are unguessable themselves); still, set your own.
    browser_state_key: str = "image2model-recent-jobs"
    browser_state_secret: str = Field(default="image2model-recent-jobs-secret-change-me", repr=False)

    # REST API access (image2model/web/security.py). Lists are comma-separated.
    api_keys: str = Field(default="", repr=False)  # empty: /api/v1 is open (a warning is logged)
    # The operator's page at /admin (login: admin / this key). Empty: there is no such page.
    admin_key: str = Field(default="", repr=False)
    rate_limit_api: str = "100/minute"  # per key, or per client address without one; "off" = none
    rate_limit_upload: str = "10/minute"  # job creation, on top of rate_limit_api; "off" = none
    rate_limit_login: str = "5/minute;30/hour"  # /admin login attempts per client address; "off" = none
    trusted_proxies: str = ""  # IPs/CIDRs whose X-Forwarded-For is believed, e.g. "10.0.0.0/8"
    cors_origins: str = ""  # origins allowed to call the API from a browser; "*" = any
    # Job tokens: a job's read access (status, stream, downloads) that a browser can put in a
    # URL (`?token=`) where it cannot send a key, e.g. an EventSource. Good for this long.
    job_token_seconds: float = Field(default=3600.0, gt=0)
    # Seals users' own FAL keys at rest and signs job tokens; the same on every machine.
    # Empty: one is made at first start and kept in the job store (SQLite or Redis).
    secret_key: str = Field(default="", repr=False)
    # Metrics (Prometheus). /metrics on the web process needs `Authorization: Bearer <token>`;
    # empty = /metrics is off (it shows volumes). A huey_consumer serves its own on this port
    # (0 = off), bound to this address (a private one: it has no token).
    metrics_token: str = Field(default="", repr=False)
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_address: str = "127.0.0.1"
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    sse_retry_ms: int = Field(default=3000, ge=0)
    # MCP server for AI agents at /gradio_api/mcp/. None: on without a FAL key (the offline
    # model costs nothing), off with one, because every call an agent makes spends money.
    mcp_server: bool | None = None

    @field_validator("log_format", "access_log", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("rate_limit_api", "rate_limit_upload", "rate_limit_login")
    @classmethod
    def _limit_or_off(cls, value: str) -> str:
        """`off` turns a limit off (an empty `NAME=` means the default, like every setting);
        anything else must be a limit such as `100/minute`, checked now rather than later."""
        value = value.strip()
        if value.lower() in ("", "off", "none"):
            return "off"
        parse_many(value)  # ValueError names the text it could not read
        return value

    @property
    def api_key_list(self) -> list[str]:
        return _split(self.api_keys)

    @property
    def trusted_proxy_list(self) -> list[str]:
        return _split(self.trusted_proxies)

    @property
    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def use_redis(self) -> bool:
        return bool(self.redis_url)

    @property
    def run_embedded_worker(self) -> bool:
        if self.embedded_worker is None:
            return not self.use_redis
        return self.embedded_worker

    @property
    def fal_configured(self) -> bool:
        return bool(self.fal_key.strip())

    @property
    def max_image_bytes(self) -> int:
        """MAX_IMAGE_MB in bytes: what every check and every message of the cap uses."""
        return int(self.max_image_mb * 1024 * 1024)

    @property
    def mcp_enabled(self) -> bool:
        if self.mcp_server is None:
            return not self.fal_configured
        return self.mcp_server

    @property
    def retention_seconds(self) -> float:
        return self.retention_hours * 3600.0


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class BadSettings(SystemExit):
    """A setting that cannot be read: the process stops at start with the reason, in one
    line per setting and no traceback (the web app, a consumer, the health check)."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing env."""
    try:
        return Settings()
    except ValidationError as exc:
        raise BadSettings(settings_problems(exc)) from None


def settings_problems(exc: ValidationError) -> str:
    """What is wrong, by the environment variable's name: "PORT='abc': Input should be ..."."""
    lines = ["image2model cannot start: a setting is not valid (see .env.example)."]
    for error in exc.errors():
        name = str(error["loc"][0]).upper() if error.get("loc") else "a setting"
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        lines.append(f"  {name}={error.get('input')!r}: {message}")
    return "\n".join(lines)

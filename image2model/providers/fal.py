"""Run an item on a hosted FAL.AI model through fal-client's queue API.

The order matters for money: upload, submit, and store the request id *before* waiting, so a
retry or a restarted worker resumes the same paid request instead of submitting again.
Errors are classified by HTTP status, never by message text.

Waiting follows FAL's status stream (server-sent events), which reports completion the moment
it happens; where the stream is unavailable or breaks, polling takes over.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fal_client
import httpx
from fal_client.auth import MissingCredentialsError

from image2model.media.images import prepare_image
from image2model.providers.base import ItemCancelled, ItemFailed, ItemRun, ProviderOutput

log = logging.getLogger(__name__)

FAST_POLL_SECONDS = 0.1  # fal-client's own polling interval
STREAM_QUIET_SECONDS = 1.0  # a status stream silent this long is reopened (after a stop check)
PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")
DOWNLOAD_CHUNK = 1024 * 256


def classify_http_error(status: int, detail: Any) -> ItemFailed:
    """One FAL HTTP status to one item failure; only transient classes are retryable."""
    text = describe_detail(detail)
    if status == 401:
        return ItemFailed("fal_key_rejected", "FAL rejected the API key. Check FAL_KEY.")
    if status == 403:
        return ItemFailed(
            "fal_access_denied",
            "FAL refused the request: the account is locked or its balance is exhausted "
            f"(top up at fal.ai/dashboard/billing). FAL said: {text}",
        )
    if status == 422:
        return ItemFailed("fal_invalid_input", f"The model rejected the input: {text}")
    if status in (408, 409, 429) or status >= 500:
        label = "busy" if status == 429 else f"unavailable (HTTP {status})"
        return ItemFailed("fal_unavailable", f"FAL is {label}: {text}", retryable=True)
    if status == 404:
        return ItemFailed("fal_not_found", f"FAL does not know this request or model: {text}")
    return ItemFailed("fal_error", f"FAL answered HTTP {status}: {text}")


def describe_detail(detail: Any) -> str:
    """FAL's `detail` as one line: a string, or a list of validation errors."""
    if isinstance(detail, list):
        parts = []
        for entry in detail:
            if isinstance(entry, dict):
                where = ".".join(str(x) for x in entry.get("loc", []) if x != "body")
                msg = entry.get("msg") or entry.get("message") or str(entry)
                parts.append(f"{where}: {msg}" if where else str(msg))
            else:
                parts.append(str(entry))
        return "; ".join(parts)[:500] or "no details"
    return str(detail or "no details")[:500]


def error_detail(response: httpx.Response) -> Any:
    """FAL's `detail` from an error answer, else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    return body.get("detail", body) if isinstance(body, dict) else body


def dig(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def file_url(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) and value.startswith(("http://", "https://")) else None


class StreamUnavailable(Exception):
    """FAL's status stream cannot be used for this request; polling takes over."""


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event; comments and other fields are skipped."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def parse_status(text: str) -> fal_client.Status | None:
    """One status event as fal-client's own status objects (None for a kind we don't know)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a status event is not a JSON object")
    kind = data.get("status")
    if kind == "IN_QUEUE":
        return fal_client.Queued(position=int(data.get("queue_position") or 0))
    if kind == "IN_PROGRESS":
        return fal_client.InProgress(logs=data.get("logs"))
    if kind == "COMPLETED":
        return fal_client.Completed(logs=data.get("logs"), metrics=data.get("metrics") or {},
                                    error=data.get("error"), error_type=data.get("error_type"))
    return None


@dataclass
class StatusWatch:
    """Turns FAL statuses, streamed or polled, into item progress.

    Progress comes from the model's log percentages, else from elapsed time against the
    model's typical duration (which also tells polling when to speed up)."""

    item: ItemRun
    typical: float
    since: float = field(default_factory=time.monotonic)
    seen_unfinished: float = 0.0  # how long after submit (or resume) FAL last said "not done"
    last_percent: float | None = None
    last_logs: list[dict[str, Any]] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.since

    def saw(self, status: fal_client.Status, asked_at: float) -> bool:
        """Report one status, asked for `asked_at` seconds after the start; True once done."""
        if isinstance(status, fal_client.Completed):
            return True
        self.seen_unfinished = max(self.seen_unfinished, asked_at)
        if isinstance(status, fal_client.Queued):
            self.item.progress(5, f"Waiting in FAL's queue (position {status.position + 1})")
        elif isinstance(status, fal_client.InProgress):
            if status.logs:  # a stream sends only new lines; a poll sends them all
                self.last_logs = status.logs
                logged = percent_from_logs(status.logs)
                self.last_percent = logged if logged is not None else self.last_percent
            self.item.progress(*running_progress(self.elapsed(), self.typical, self.last_percent, self.last_logs))
        return False


def percent_from_logs(logs: list[dict[str, Any]] | None) -> float | None:
    for entry in reversed(logs or []):
        match = PERCENT.search(str(entry.get("message", "")))
        if match and float(match.group(1)) <= 100:
            return float(match.group(1))
    return None


class PooledSyncClient(fal_client.SyncClient):
    """fal-client 1.0.3 (pinned) builds a new httpx.Client, with its own SSL context (about
    20 ms of CPU), for every CDN upload: 25 images at once spent half a second on that alone.
    This reuses one upload client for as long as the CDN token stays the same."""

    def _get_cdn_client(self) -> httpx.Client:
        token = self._token_manager.get_token().token
        with _CDN_LOCK:
            cached = self.__dict__.get("_pooled_cdn")
            if cached is None or cached[0] != token:
                cached = (token, super()._get_cdn_client())
                object.__setattr__(self, "_pooled_cdn", cached)  # the dataclass is frozen
            return cached[1]


_CDN_LOCK = threading.Lock()


class FalProvider:
    """One fal-client and one download client per process, shared by all worker threads
    (httpx clients are thread-safe and keep their connections alive)."""

    def __init__(self, key: str, fal_max_side: int, http_timeout: float = 60.0):
        self.key = key
        self.fal_max_side = fal_max_side
        self.http_timeout = http_timeout
        self._lock = threading.Lock()
        self._fal: fal_client.SyncClient | None = None
        self._plain: httpx.Client | None = None

    def _client(self) -> fal_client.SyncClient:
        with self._lock:
            if self._fal is None:
                self._fal = PooledSyncClient(key=self.key, default_timeout=self.http_timeout)
            return self._fal

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Key {self.key}"}

    def _http(self) -> httpx.Client:
        """Plain HTTP for downloads and status streams (fal-client has no stream call)."""
        with self._lock:
            if self._plain is None:
                self._plain = httpx.Client(follow_redirects=True, timeout=self.http_timeout)
            return self._plain

    def run(self, item: ItemRun) -> ProviderOutput:
        if not self.key.strip():  # fal-client would retry a malformed header for a minute
            raise ItemFailed("fal_key_missing", "No FAL key is configured on this worker: set FAL_KEY.")
        client = self._client()
        try:
            return self._run(client, item)
        except fal_client.FalClientHTTPError as exc:
            raise classify_http_error(exc.status_code, exc.message) from exc
        except (fal_client.FalClientTimeoutError, httpx.TimeoutException) as exc:
            raise ItemFailed("fal_unavailable", f"FAL did not answer in time: {exc}", retryable=True) from exc
        except httpx.HTTPStatusError as exc:
            raise classify_http_error(exc.response.status_code, error_detail(exc.response)) from exc
        except httpx.TransportError as exc:
            raise ItemFailed("fal_unavailable", f"Could not reach FAL: {exc}", retryable=True) from exc
        except MissingCredentialsError as exc:
            raise ItemFailed("fal_key_missing", "No FAL key is configured: set FAL_KEY.") from exc

    def _run(self, client: fal_client.SyncClient, item: ItemRun) -> ProviderOutput:
        spec = item.spec
        request_id = item.request_id
        if request_id is None:
            urls = self._upload_inputs(client, item)
            item.check_stop()
            handle = client.submit(spec.id, spec.fal_arguments(urls, item.params, item.mode))
            request_id = handle.request_id
            item.remember_request(request_id)
            log.info("fal submitted", extra={"job_id": item.job_id, "item": item.index, "request_id": request_id})
        else:
            item.progress(5, "Resuming the FAL request")
            log.info("fal resumed", extra={"job_id": item.job_id, "item": item.index, "request_id": request_id})
        handle = client.get_handle(spec.id, request_id)
        run_seconds = self._wait(client, item, handle)
        item.progress(90, "Downloading the model")
        result = self._fetch_result(handle.response_url)
        self._download_model(result, item)
        has_preview = self._download_preview(result, item)
        return ProviderOutput(has_preview=has_preview, run_seconds=run_seconds)

    def _upload_inputs(self, client: fal_client.SyncClient, item: ItemRun) -> list[str]:
        urls = []
        for n, path in enumerate(item.inputs, start=1):
            item.check_stop()
            item.progress(1 + 2 * n / len(item.inputs), f"Uploading image {n} of {len(item.inputs)}")
            prepared = prepare_image(path, item.work_dir, self.fal_max_side)
            urls.append(client.upload_file(prepared))
        return urls

    def _wait(self, client: fal_client.SyncClient, item: ItemRun, handle: fal_client.SyncRequestHandle) -> float:
        """Wait until FAL completes; when the item must stop, tell FAL to stop too. Returns how
        long the request took after submit (or resume), never more than it did."""
        try:
            watch = StatusWatch(item, item.typical_seconds())
            try:
                return self._follow_stream(handle.status_url + "/stream", item, watch)
            except StreamUnavailable as exc:
                log.info("fal status stream unavailable, polling: %s", exc,
                         extra={"job_id": item.job_id, "item": item.index, "request_id": handle.request_id})
            return self._poll(handle, item, watch)
        except (ItemCancelled, ItemFailed) as exc:
            if isinstance(exc, ItemCancelled) or exc.code == "deadline_exceeded":
                self._cancel(client, item, handle.request_id)
            raise

    def _follow_stream(self, url: str, item: ItemRun, watch: StatusWatch) -> float:
        """Follow the status stream until COMPLETED. FAL sends the current status as soon as a
        stream opens, and closes it after COMPLETED. A stream that stays quiet for
        STREAM_QUIET_SECONDS is opened again, after a check for cancel and the deadline; one
        that ends early, answers anything but events, or says nothing three times running is
        unavailable."""
        timeout = httpx.Timeout(self.http_timeout, read=STREAM_QUIET_SECONDS)
        headers = {**self._auth, "Accept": "text/event-stream"}
        silent = 0
        while True:
            item.check_stop()
            events = 0
            try:
                with self._http().stream("GET", url, params={"logs": "1"}, headers=headers,
                                         timeout=timeout) as response:
                    kind = response.headers.get("content-type", "")
                    if response.status_code != 200 or not kind.startswith("text/event-stream"):
                        raise StreamUnavailable(f"HTTP {response.status_code} {kind}".strip())
                    for data in sse_data(response.iter_lines()):
                        events += 1
                        status = parse_status(data)
                        if status is not None and watch.saw(status, watch.elapsed()):
                            return watch.elapsed()
                        item.check_stop()
                raise StreamUnavailable("the stream ended before the request finished")
            except httpx.ReadTimeout as exc:
                silent = silent + 1 if events == 0 else 0
                if silent >= 3:
                    raise StreamUnavailable("the stream sent nothing") from exc
            except (httpx.TransportError, ValueError) as exc:
                raise StreamUnavailable(str(exc) or type(exc).__name__) from exc

    def _poll(self, handle: fal_client.SyncRequestHandle, item: ItemRun, watch: StatusWatch) -> float:
        """Poll until COMPLETED; returns the last time FAL said it was not done, a lower bound
        of its duration, so slow polling never teaches us that a model is slower than it is."""
        while True:
            item.check_stop()
            asked = watch.elapsed()
            status = handle.status(with_logs=True)
            if watch.saw(status, asked):
                return watch.seen_unfinished
            item.sleep(poll_interval(item.poll_seconds, watch.elapsed(), watch.typical))

    def _fetch_result(self, url: str) -> Any:
        """The model's output. (fal-client's result() would first ask for the status again,
        which costs a round trip after the stream has already said COMPLETED.)"""
        response = self._http().get(url, headers=self._auth)
        if response.status_code >= 400:
            raise classify_http_error(response.status_code, error_detail(response))
        try:
            return response.json()
        except ValueError as exc:
            raise ItemFailed("invalid_model", "FAL finished but its answer was not readable.") from exc

    def _download_model(self, result: Any, item: ItemRun) -> None:
        url = next((file_url(dig(result, f)) for f in item.spec.mesh_fields if file_url(dig(result, f))), None)
        if url is None:
            raise ItemFailed("invalid_model", "FAL finished but returned no model file.")
        self._download(url, item.model_target, item)

    def _download_preview(self, result: Any, item: ItemRun) -> bool:
        for name in item.spec.preview_fields:
            url = file_url(dig(result, name))
            if url:
                try:
                    self._download(url, item.preview_target, item)
                    return True
                except (ItemFailed, httpx.HTTPError) as exc:  # a preview is a bonus, never a failure
                    log.warning("preview download failed: %s", exc, extra={"job_id": item.job_id})
        return False

    def _download(self, url: str, target: Path, item: ItemRun) -> None:
        cap = item.max_result_bytes
        with self._http().stream("GET", url) as response:
            response.raise_for_status()
            declared = int(response.headers.get("content-length") or 0)
            if declared > cap:
                raise ItemFailed("result_too_large", f"The model file is {declared / 1e6:.0f} MB, over the "
                                 f"{cap / 1e6:.0f} MB limit.")
            try:
                item.write_file(target, response.iter_bytes(DOWNLOAD_CHUNK), max_bytes=cap)
            except Exception as exc:
                if getattr(exc, "code", "") == "file_too_large":
                    raise ItemFailed("result_too_large", f"The model file is over the {cap / 1e6:.0f} MB "
                                     "limit.") from exc
                raise

    def cancel(self, item: ItemRun) -> None:
        if item.request_id:
            self._cancel(self._client(), item, item.request_id)

    def _cancel(self, client: fal_client.SyncClient, item: ItemRun, request_id: str) -> None:
        try:
            client.cancel(item.spec.id, request_id)
            log.info("fal cancel sent", extra={"job_id": item.job_id, "item": item.index, "request_id": request_id})
        except (fal_client.FalClientError, httpx.HTTPError) as exc:
            log.warning("fal cancel failed: %s", exc, extra={"job_id": item.job_id, "request_id": request_id})


def poll_interval(base: float, elapsed: float, typical: float) -> float:
    """Poll at the configured pace, and fast once the model should be nearly done, so a
    finished model is noticed within a tenth of a second without hammering FAL all along."""
    if elapsed >= 0.85 * typical:
        return min(base, FAST_POLL_SECONDS)
    return base


def running_progress(elapsed: float, typical: float, logged: float | None,
                     logs: list[dict[str, Any]] | None) -> tuple[float, str]:
    """Progress 5..88 while FAL runs: the model's own percentage when it logs one, else an
    estimate from elapsed time against the typical duration that never claims to be done."""
    last_line = ""
    if logs:
        last_line = str(logs[-1].get("message", "")).strip().splitlines()[0][:80] if logs[-1].get("message") else ""
    if logged is not None:
        return 5 + 83 * logged / 100, last_line or f"Generating ({logged:.0f}%)"
    fraction = elapsed / max(typical, 1.0)
    if fraction < 1:
        left = typical - elapsed
        return 5 + 75 * fraction, last_line or f"Generating, about {left:.0f} s left"
    return 80 + 8 * (1 - math.exp(-(fraction - 1))), last_line or "Generating, taking longer than usual"

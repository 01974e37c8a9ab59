"""Run an item on a hosted FAL.AI model through fal-client's queue API.

The order matters for money: upload and store the input URLs, store the intent to submit,
submit once (never retried blindly: FAL bills on accepting it), and store the request id
*before* waiting, so a retry or a restarted worker resumes the same paid request. A submit
whose answer was lost (a crash, a dropped connection, a gateway 500, no answer at all) is
looked up in FAL's request history by its input URLs (`reconcile.py`) before anything is sent
again. Errors are classified by HTTP status, never by message text (`errors.py`).

Every call waits a bounded time (`fal_call_timeout_seconds`), so a hung FAL never holds an
item past a cancel or its deadline.

A worker thread only uploads and submits (or finds the request to resume); the waiting, which
is most of an item's life, belongs to the process's one `FalWatcher`, and the download to the
runner's finishing threads. So the number of requests in flight is `FAL_CONCURRENCY`, FAL's
own account limit, not the number of worker threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fal_client
import fal_client.client as fal_internals
import httpx
from fal_client.auth import MissingCredentialsError

from image2model.media.images import prepare_image
from image2model.metrics import (
    DOWNLOAD, FAL_RECONCILIATIONS, FAL_RESUMES, count_fal_error, count_fal_response, timed,
)
from image2model.providers.base import WATCHING, ItemFailed, ItemRun, ProviderOutput, Watching
from image2model.providers.fal.errors import classify_http_error, error_detail
from image2model.providers.fal.reconcile import RequestHistory, SubmitLedger
from image2model.providers.fal.status import StatusWatch
from image2model.providers.fal.watcher import FalWatcher, Watch
from image2model.units import size_text

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_SECONDS = 20.0  # a CDN that sends nothing for this long is given up on
DOWNLOAD_CHUNK = 1024 * 256
ERROR_BODY_BYTES = 4096  # of a refused download's answer, read to quote its start
T = TypeVar("T")


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
    """One fal-client and one plain HTTP client per process, shared by all worker threads
    (httpx clients are thread-safe and keep their connections alive), and one watcher."""

    def __init__(self, key: str, fal_max_side: int, *, api_url: str = "https://api.fal.ai/v1",
                 call_timeout: float = 5.0, submit_timeout: float = 30.0, reconcile_seconds: float = 300.0,
                 uncertain_submit: str = "fail", upload_timeout: float = 60.0, concurrency: int = 40):
        self.key = key
        self.fal_max_side = fal_max_side
        self.call_timeout = call_timeout
        self.submit_timeout = submit_timeout
        self.upload_timeout = upload_timeout
        self.reconcile_seconds = reconcile_seconds
        self.uncertain_submit = uncertain_submit
        self.api_url = api_url
        self.concurrency = concurrency
        # one slot per request in flight: taken before an item is claimed, given back when it ends
        self.slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._fal: fal_client.SyncClient | None = None
        self._plain: httpx.Client | None = None
        self._watcher: FalWatcher | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> FalProvider:
        return cls(settings.fal_key, settings.fal_max_side, api_url=settings.fal_api_url,
                   call_timeout=settings.fal_call_timeout_seconds,
                   submit_timeout=settings.fal_submit_timeout_seconds,
                   reconcile_seconds=settings.fal_reconcile_seconds,
                   uncertain_submit=settings.fal_uncertain_submit, concurrency=settings.fal_concurrency)

    def _client(self) -> fal_client.SyncClient:
        """fal-client, for uploads (which cost nothing, so its own retries are welcome) and
        request handles."""
        with self._lock:
            if self._fal is None:
                self._fal = PooledSyncClient(key=self.key, default_timeout=self.upload_timeout)
            return self._fal

    def _key(self, item: ItemRun) -> str:
        """The person's own key for their job, else this server's."""
        return item.fal_key or self.key

    def _auth(self, item: ItemRun) -> dict[str, str]:
        return {"Authorization": f"Key {self._key(item)}"}

    def _refused(self, response: httpx.Response, item: ItemRun) -> ItemFailed:
        return classify_http_error(response.status_code, error_detail(response), own_key=bool(item.fal_key))

    def _http(self) -> httpx.Client:
        """Plain HTTP, one try per call, for everything that is not an upload."""
        with self._lock:
            if self._plain is None:
                self._plain = httpx.Client(follow_redirects=True, timeout=self.call_timeout,
                                           event_hooks={"response": [count_fal_response]})
            return self._plain

    def watcher(self) -> FalWatcher:
        with self._lock:
            if self._watcher is None:
                self._watcher = FalWatcher(self.call_timeout)
            return self._watcher

    def run(self, item: ItemRun) -> Watching:
        if not self._key(item).strip():  # fal-client would retry a malformed header for a minute
            raise ItemFailed("fal_key_missing", "No FAL key is configured on this worker: set FAL_KEY.")
        # a person's own key gets a client of its own, dropped with this run
        client = PooledSyncClient(key=item.fal_key, default_timeout=self.upload_timeout) if item.fal_key \
            else self._client()
        return self._translated(item, lambda: self._start(client, item))

    def _translated(self, item: ItemRun, step: Callable[[], T]) -> T:
        """fal-client's and httpx's errors as item failures (transient ones retryable)."""
        try:
            return step()
        except fal_client.FalClientHTTPError as exc:
            raise classify_http_error(exc.status_code, exc.message, own_key=bool(item.fal_key)) from exc
        except (fal_client.FalClientTimeoutError, httpx.TimeoutException) as exc:
            count_fal_error(method_of(exc))
            raise ItemFailed("fal_unavailable", f"FAL did not answer in time: {exc}", retryable=True) from exc
        except httpx.HTTPStatusError as exc:
            raise self._refused(exc.response, item) from exc
        except httpx.TransportError as exc:
            count_fal_error(method_of(exc))
            raise ItemFailed("fal_unavailable", f"Could not reach FAL: {exc}", retryable=True) from exc
        except MissingCredentialsError as exc:
            raise ItemFailed("fal_key_missing", "No FAL key is configured: set FAL_KEY.") from exc

    def _start(self, client: fal_client.SyncClient, item: ItemRun) -> Watching:
        """Submit (or find the request to resume), then hand the waiting to the watcher."""
        spec = item.spec
        ledger = SubmitLedger(item)
        request_id = item.request_id
        if request_id is None and ledger.intent_at is not None:
            # a submit went out before and its answer never reached the store
            request_id = self._reconcile(item, ledger, "The app stopped while sending this photo to FAL")
        since = time.monotonic()  # when FAL's clock started: the submit, or now for a resumed request
        if request_id is None:
            urls = ledger.input_urls
            if not urls:
                urls = self._upload_inputs(client, item)
                ledger.keep_inputs(urls)
            item.check_stop()
            since = time.monotonic()
            request_id = self._submit_once(item, ledger, spec.fal_arguments(urls, item.params, item.mode))
        else:
            item.progress(5, "Resuming the FAL request")
            FAL_RESUMES.inc()
            log.info("fal resumed", extra={"job_id": item.job_id, "item": item.index, "request_id": request_id})
        handle = client.get_handle(spec.id, request_id)

        def ended(run_seconds: float | None, error: BaseException | None) -> None:
            item.settle(lambda: self._translated(item, lambda: self._collect(item, handle.response_url,
                                                                              run_seconds, error)))

        self.watcher().follow(Watch(
            item=item, request_id=request_id, status_url=handle.status_url, headers=self._auth(item),
            own_key=bool(item.fal_key), status=StatusWatch(item.typical_seconds(), since=since),
            poll_seconds=item.poll_seconds, ended=ended))
        return WATCHING

    def _collect(self, item: ItemRun, response_url: str, run_seconds: float | None,
                 error: BaseException | None) -> ProviderOutput:
        """After the watch: the model's files, or the reason the watch ended."""
        if error is not None:
            raise error
        item.progress(90, "Downloading the model")
        result = self._fetch_result(response_url, item)
        self._download_model(result, item)
        has_preview = self._download_preview(result, item)
        return ProviderOutput(has_preview=has_preview, run_seconds=run_seconds)

    def _submit_once(self, item: ItemRun, ledger: SubmitLedger, arguments: dict[str, Any]) -> str:
        """POST the submit exactly once. fal-client's submit would retry it by itself (up to
        10 times on a timeout or a dropped connection), and each try that FAL accepted is paid."""
        ledger.save_intent()
        url = fal_internals.QUEUE_URL_FORMAT + item.spec.id  # pinned fal-client: see test_fal_internals
        ctx = {"job_id": item.job_id, "item": item.index}
        try:
            response = self._http().post(url, json=arguments, headers=self._auth(item),
                                         timeout=httpx.Timeout(self.submit_timeout, connect=self.call_timeout))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # never reached FAL: nothing was paid
            count_fal_error("POST")
            ledger.clear_intent()
            raise ItemFailed("fal_unavailable", f"Could not reach FAL: {exc}", retryable=True) from exc
        except httpx.HTTPError as exc:  # sent, and the answer is lost
            count_fal_error("POST")
            log.warning("fal submit answer lost: %s", exc, extra=ctx)
            return self._after_lost_answer(item, ledger, f"FAL's answer to this photo was lost ({type(exc).__name__})")
        if response.status_code >= 500 and fal_internals._is_ingress_error(response):
            # the proxy in front of FAL answered (fal-client's own test, which retries these
            # freely): the photo never reached FAL, so nothing to look up and nothing paid
            count_fal_error("POST")
            ledger.clear_intent(f"FAL's front door answered HTTP {response.status_code}; the photo never reached FAL")
            raise ItemFailed("fal_unavailable", f"FAL is unavailable (HTTP {response.status_code} from its "
                             "front door).", retryable=True)
        if response.status_code == 408 or response.status_code >= 500:
            log.warning("fal submit answered HTTP %d", response.status_code, extra=ctx)
            return self._after_lost_answer(item, ledger, f"FAL answered HTTP {response.status_code} to this photo")
        if response.status_code >= 400:  # refused: FAL did not take it
            ledger.clear_intent()
            raise self._refused(response, item)
        try:
            request_id = str(response.json()["request_id"])
        except (ValueError, KeyError, TypeError):
            return self._after_lost_answer(item, ledger, "FAL's answer to this photo was unreadable")
        ledger.sent(request_id, "sent to FAL")
        log.info("fal submitted", extra={**ctx, "request_id": request_id})
        return request_id

    def _after_lost_answer(self, item: ItemRun, ledger: SubmitLedger, why: str) -> str:
        """The request FAL took; when FAL proves it took none, a retryable failure: the next
        try sends it again (the inputs stay uploaded), and FAL_RETRIES bounds how often, as for
        any refusal, instead of sending it again here for as long as FAL keeps failing."""
        try:
            request_id = self._reconcile(item, ledger, why)
        except ItemFailed as exc:
            if exc.code != "deadline_exceeded":
                raise
            ledger.note(f"{why}; the photo's time ran out while FAL's history was checked for it")
            raise ItemFailed("fal_submit_uncertain", f"{why}, and the photo's time limit ran out while FAL's "
                             "request history was checked for it, so it may have been charged. Check the FAL "
                             "dashboard, then try this photo again.") from exc
        if request_id is None:
            raise ItemFailed("fal_unavailable", f"{why}, and FAL's history shows it never arrived.", retryable=True)
        return request_id

    def _reconcile(self, item: ItemRun, ledger: SubmitLedger, why: str) -> str | None:
        """The request FAL accepted for this item, found by its inputs; None once FAL proves it
        has none. When FAL cannot tell, FAL_UNCERTAIN_SUBMIT decides, and the item says so."""
        history = RequestHistory(self._http(), self.api_url, self._auth(item), self.call_timeout)
        item.progress(4, "Checking with FAL whether this photo arrived")
        verdict = history.find(item, ledger, self.reconcile_seconds)
        ctx = {"job_id": item.job_id, "item": item.index, "request_id": verdict.request_id}
        if verdict.request_id:
            FAL_RECONCILIATIONS.labels("adopted").inc()
            ledger.sent(verdict.request_id, f"{why}; found it in FAL's history and carried on with it (not paid twice)")
            log.info("fal request adopted from history", extra=ctx)
            return verdict.request_id
        if verdict.absent:
            FAL_RECONCILIATIONS.labels("absent").inc()
            ledger.clear_intent(f"{why}; FAL's history shows it never arrived (nothing was paid)")
            log.info("fal request not in history; the next try sends it again", extra=ctx)
            return None
        if self.uncertain_submit == "resubmit":
            FAL_RECONCILIATIONS.labels("undecided_resubmitted").inc()
            ledger.clear_intent(f"{why}; FAL's history could not tell ({verdict.reason}), so it was sent "
                                "again as configured (it may be charged twice)")
            log.warning("fal history undecided (%s); resubmitting as configured", verdict.reason, extra=ctx)
            return None
        FAL_RECONCILIATIONS.labels("undecided_failed").inc()
        ledger.note(f"{why}; FAL's history could not tell whether it arrived ({verdict.reason})")
        log.warning("fal history undecided (%s); failing the item", verdict.reason, extra=ctx)
        raise ItemFailed("fal_submit_uncertain",
                         f"{why}, and FAL could not tell whether it arrived ({verdict.reason}); it may have "
                         "been charged. It was not sent again, to avoid paying twice: check the FAL "
                         "dashboard, then try this photo again.")

    def _upload_inputs(self, client: fal_client.SyncClient, item: ItemRun) -> list[str]:
        urls = []
        for n, path in enumerate(item.inputs, start=1):
            item.check_stop()
            item.progress(1 + 2 * n / len(item.inputs), f"Uploading image {n} of {len(item.inputs)}")
            prepared = prepare_image(path, item.work_dir, self.fal_max_side)
            urls.append(client.upload_file(prepared))
        return urls

    def _fetch_result(self, url: str, item: ItemRun) -> Any:
        """The model's output. (fal-client's result() would first ask for the status again,
        which costs a round trip after the stream has already said COMPLETED.)"""
        response = self._http().get(url, headers=self._auth(item))
        if response.status_code >= 400:
            raise self._refused(response, item)
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
        timeout = httpx.Timeout(DOWNLOAD_TIMEOUT_SECONDS, connect=self.call_timeout)
        with timed(DOWNLOAD), self._http().stream("GET", url, timeout=timeout) as response:
            if response.status_code >= 400:
                raise self._download_refused(response, item)
            declared = int(response.headers.get("content-length") or 0)
            if declared > cap:
                raise ItemFailed("result_too_large", f"The model file is {size_text(declared)}, over the "
                                 f"limit of {size_text(cap)}.")
            try:
                item.write_file(target, checked(response.iter_bytes(DOWNLOAD_CHUNK), item), max_bytes=cap)
            except Exception as exc:
                if getattr(exc, "code", "") == "file_too_large":
                    raise ItemFailed("result_too_large", f"The model file is over the limit of "
                                     f"{size_text(cap)}.") from exc
                raise

    def _download_refused(self, response: httpx.Response, item: ItemRun) -> ItemFailed:
        """A file server's refusal: transient ones retryable (the request is resumed, not
        paid again); a missing file says so, quoting the first ERROR_BODY_BYTES the server sent
        (a streamed answer's body is unread until asked for)."""
        body = next(response.iter_bytes(ERROR_BODY_BYTES), b"")
        text = body.decode("utf-8", "replace").strip()[:300] or "no details"
        if response.status_code in (404, 410):
            return ItemFailed("fal_result_missing", f"FAL finished, but its file server no longer has the model "
                              f"file (HTTP {response.status_code}): {text}")
        return classify_http_error(response.status_code, text, own_key=bool(item.fal_key))

    def close(self) -> None:
        """Stop following requests (they stay running at FAL and are resumed after a restart)."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()

    def cancel(self, item: ItemRun) -> None:
        """Tell FAL to stop the item's request: one bounded try (the item ends either way)."""
        if not item.request_id:
            return
        ctx = {"job_id": item.job_id, "item": item.index, "request_id": item.request_id}
        try:
            handle = self._client().get_handle(item.spec.id, item.request_id)
            response = self._http().put(handle.cancel_url, headers=self._auth(item))
            log.info("fal cancel sent: HTTP %d", response.status_code, extra=ctx)
        except httpx.HTTPError as exc:
            log.warning("fal cancel failed: %s", exc, extra=ctx)


def method_of(exc: Exception) -> str:
    """The HTTP method of the request a transport error belongs to."""
    try:
        return exc.request.method  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when no request is set
        return "unknown"


def checked(chunks: Iterable[bytes], item: ItemRun) -> Iterator[bytes]:
    """A download that stops between chunks when the item must stop."""
    for chunk in chunks:
        item.check_stop()
        yield chunk


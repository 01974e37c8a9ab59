"""One watcher per process follows every open FAL request.

Waiting on FAL is most of an item's life and needs nothing but an open connection, so a
thread per request capped throughput at the thread count. Here a worker thread submits and
hands the request over; the watcher's event loop follows FAL's status stream for all of them
(polling where the stream cannot be used), and its ticker thread does the store work for all
of them: progress, cancel and deadline checks, which are reads the event loop must not wait
on. When a request ends, its item is settled: the runner's finishing threads download and
check the model, or handle the reason it ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx

from image2model.metrics import count_fal_response
from image2model.providers.base import ItemFailed, ItemRun
from image2model.providers.fal.errors import classify_http_error, error_detail
from image2model.providers.fal.status import StatusWatch, StreamUnavailable, parse_status, poll_interval, sse_data

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25  # progress, cancel and deadline are looked at this often for every request
FIRST_QUIET_SECONDS = 1.0  # a new stream that sends nothing this long is reopened
QUIET_SECONDS = 15.0  # a stream that did send events may then be quiet this long (FAL sends on change)
SILENT_TRIES = 3  # streams opened this many times in a row without one event: use polling
# Progress writes of all watched requests together, at most, a second: each one wakes every
# reader of its job, so 1,000 open requests writing twice a second each took the process.
PROGRESS_WRITES_PER_SECOND = 100
MIN_PROGRESS_SECONDS = 0.5


@dataclass(eq=False)
class Watch:
    """One open request: where to ask about it, what it said, and whom to tell at the end."""

    item: ItemRun
    request_id: str
    status_url: str
    headers: dict[str, str]
    own_key: bool
    status: StatusWatch
    poll_seconds: float
    ended: Callable[[float | None, BaseException | None], None]  # (run seconds, or why it stopped)
    task: concurrent.futures.Future | None = None
    settled: bool = False
    next_progress_at: float = 0.0  # time.monotonic()
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log_extra(self) -> dict[str, object]:
        return {"job_id": self.item.job_id, "item": self.item.index, "request_id": self.request_id}


class FalWatcher:
    def __init__(self, call_timeout: float, tick_seconds: float = TICK_SECONDS):
        self.call_timeout = call_timeout
        self.tick_seconds = tick_seconds
        self._watches: set[Watch] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()

    def follow(self, watch: Watch) -> None:
        loop = self._started()
        with self._lock:
            self._watches.add(watch)
        watch.task = asyncio.run_coroutine_threadsafe(self._follow(watch), loop)

    def open_requests(self) -> int:
        with self._lock:
            return len(self._watches)

    def close(self) -> None:
        """Stop following (the requests go on at FAL; their items are resumed elsewhere)."""
        self._closed.set()
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for watch in self._snapshot():
            if watch.task is not None:
                watch.task.cancel()
        if self._http is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._http.aclose(), loop).result(5)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
        loop.call_soon_threadsafe(loop.stop)
        for thread in self._threads:
            thread.join(5)

    # --- threads ------------------------------------------------------------------------
    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                if self._closed.is_set():
                    raise RuntimeError("the FAL watcher is closed")
                loop = asyncio.new_event_loop()
                self._http = httpx.AsyncClient(
                    follow_redirects=True, timeout=self.call_timeout,
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
                    event_hooks={"response": [counted]})
                self._threads = [threading.Thread(target=loop.run_forever, name="i2m-fal-watcher", daemon=True),
                                 threading.Thread(target=self._tick_loop, name="i2m-fal-ticker", daemon=True)]
                for thread in self._threads:
                    thread.start()
                self._loop = loop
            return self._loop

    def _snapshot(self) -> list[Watch]:
        with self._lock:
            return list(self._watches)

    def _tick_loop(self) -> None:
        while not self._closed.wait(self.tick_seconds):
            watches = self._snapshot()
            every = max(MIN_PROGRESS_SECONDS, len(watches) / PROGRESS_WRITES_PER_SECOND)
            for watch in watches:
                self._tick(watch, every)

    def _tick(self, watch: Watch, progress_every: float) -> None:
        """The store's side of one watch: stop it when it must stop, else show its progress."""
        with watch.lock:
            if watch.settled:
                return
            try:
                watch.item.check_stop()
                now = time.monotonic()
                shown = watch.status.progress()
                if shown is not None and now >= watch.next_progress_at:
                    watch.next_progress_at = now + progress_every
                    watch.item.progress(*shown)
                return
            except Exception as exc:  # noqa: BLE001 - cancel, deadline, shutdown, ownership lost
                reason: BaseException = exc
        if watch.task is not None:
            watch.task.cancel()
        self._end(watch, None, reason)

    def _end(self, watch: Watch, run_seconds: float | None, error: BaseException | None) -> None:
        with self._lock:
            self._watches.discard(watch)
        with watch.lock:
            if watch.settled:
                return
            watch.settled = True
        try:
            watch.ended(run_seconds, error)
        except Exception:  # noqa: BLE001 - the watcher must outlive one item's trouble
            log.exception("a watched FAL request could not be settled", extra=watch.log_extra())

    # --- the event loop -----------------------------------------------------------------
    async def _follow(self, watch: Watch) -> None:
        try:
            try:
                seconds = await self._stream(watch)
            except StreamUnavailable as exc:
                log.info("fal status stream unavailable, polling: %s", exc, extra=watch.log_extra())
                seconds = await self._poll(watch)
        except asyncio.CancelledError:
            return  # stopped by the ticker, which settles the item
        except Exception as exc:  # noqa: BLE001 - told to the item, which fails or retries
            self._end(watch, None, exc)
            return
        self._end(watch, seconds, None)

    async def _stream(self, watch: Watch) -> float:
        """Follow the status stream until COMPLETED; returns how long the request took. FAL
        sends the current status as soon as a stream opens, and closes it after COMPLETED. A
        stream that ends early, answers anything but events, or says nothing SILENT_TRIES
        times running is unavailable."""
        assert self._http is not None
        url = watch.status_url + "/stream"
        headers = {**watch.headers, "Accept": "text/event-stream"}
        quiet, silent = FIRST_QUIET_SECONDS, 0
        while True:
            events = 0
            try:
                async with self._http.stream("GET", url, params={"logs": "1"}, headers=headers,
                                             timeout=httpx.Timeout(self.call_timeout, read=quiet)) as response:
                    kind = response.headers.get("content-type", "")
                    if response.status_code != 200 or not kind.startswith("text/event-stream"):
                        raise StreamUnavailable(f"HTTP {response.status_code} {kind}".strip())
                    async for data in sse_data(response.aiter_lines()):
                        events += 1
                        status = parse_status(data)
                        if status is not None and watch.status.saw(status, watch.status.elapsed()):
                            return watch.status.elapsed()
                raise StreamUnavailable("the stream ended before the request finished")
            except httpx.ReadTimeout as exc:
                silent = silent + 1 if events == 0 else 0
                if silent >= SILENT_TRIES:
                    raise StreamUnavailable("the stream sent nothing") from exc
                if events:
                    quiet = QUIET_SECONDS
            except (httpx.TransportError, ValueError) as exc:
                raise StreamUnavailable(str(exc) or type(exc).__name__) from exc

    async def _poll(self, watch: Watch) -> float:
        """Poll until COMPLETED; returns the last time FAL said it was not done, a lower bound
        of its duration, so slow polling never teaches us that a model is slower than it is."""
        progress = watch.status
        while True:
            asked = progress.elapsed()
            if progress.saw(await self._status(watch), asked):
                return progress.seen_unfinished
            await asyncio.sleep(poll_interval(watch.poll_seconds, progress.elapsed(), progress.typical))

    async def _status(self, watch: Watch):  # noqa: ANN202 - a fal_client.Status
        """One status call, one try, bounded wait (fal-client's would retry a hang for minutes)."""
        assert self._http is not None
        response = await self._http.get(watch.status_url, params={"logs": "1"}, headers=watch.headers)
        if response.status_code >= 400:
            raise classify_http_error(response.status_code, error_detail(response), own_key=watch.own_key)
        try:
            status = parse_status(response.text)
        except (ValueError, TypeError) as exc:
            raise ItemFailed("fal_unavailable", "FAL's status answer was unreadable.", retryable=True) from exc
        if status is None:
            raise ItemFailed("fal_unavailable", "FAL sent a status this app does not know.", retryable=True)
        return status


async def counted(response: httpx.Response) -> None:
    count_fal_response(response)

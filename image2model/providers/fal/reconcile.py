"""Finding a paid FAL request whose id we never heard.

FAL bills a submit when it accepts it, and its queue API has no idempotency key. So before a
submit the item records its intent (when, and the CDN URLs of its inputs, which are unique per
upload); when the answer is lost, or the app died before storing the id, the request is looked
up in FAL's Platform API (`GET /models/requests/by-endpoint?expand=payloads`) by those URLs.
FAL may list a request only once it has ended, so absence counts as proof only after
`fal_reconcile_seconds`, or at once when the listing shows unfinished requests too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx

from image2model.providers.base import ItemRun

CLOCK_MARGIN_SECONDS = 120.0  # our clock and FAL's may differ; look a little earlier
SETTLE_SECONDS = 2.0  # a request just accepted may take a moment to reach FAL's history
RECHECK_SECONDS = 3.0
HISTORY_TRIES = 3  # an unreachable history is tried this often before it counts as undecided
MAX_PAGES = 50
PAGE_SIZE = 100
MAX_EVENTS = 20


class SubmitLedger:
    """The item's record of its submit, kept in the job store before anything is paid."""

    def __init__(self, item: ItemRun):
        self.item = item
        self.record: dict[str, Any] = dict(item.submit_record or {})

    @property
    def input_urls(self) -> list[str]:
        return list(self.record.get("input_urls") or [])

    @property
    def intent_at(self) -> float | None:
        return self.record.get("intent_at")

    def keep_inputs(self, urls: list[str]) -> None:
        """The uploads' URLs, stored with the intent (one write): an item resumed after that
        never uploads (or is matched) twice, and one that stopped before has nothing to match."""
        self.record["input_urls"] = list(urls)

    def save_intent(self) -> None:
        self.record["intent_at"] = time.time()
        self._save()

    def clear_intent(self, note: str | None = None) -> None:
        self.record["intent_at"] = None
        if note:
            self._add_note(note)
        self._save()

    def note(self, text: str) -> None:
        self._add_note(text)
        self._save()

    def sent(self, request_id: str, text: str) -> None:
        """FAL has the request: its id and this note in one write."""
        self._add_note(text)
        self.item.remember_request(request_id, self.record)

    def _add_note(self, text: str) -> None:
        events = list(self.record.get("events") or [])
        events.append({"at": round(time.time(), 3), "text": text})
        self.record["events"] = events[-MAX_EVENTS:]

    def _save(self) -> None:
        self.item.remember_submit(self.record)


@dataclass(frozen=True)
class Verdict:
    request_id: str | None = None  # found: adopt it
    absent: bool = False  # FAL proved it has no such request: send it
    reason: str = ""  # neither: why FAL could not tell


class HistoryUnusable(Exception):
    """The history answered, but will not tell us (no access, no such API)."""


class RequestHistory:
    def __init__(self, http: httpx.Client, api_url: str, auth: dict[str, str], timeout: float):
        self.http = http
        self.url = api_url.rstrip("/") + "/models/requests/by-endpoint"
        self.auth = auth
        self.timeout = timeout

    def find(self, item: ItemRun, ledger: SubmitLedger, window_seconds: float) -> Verdict:
        intent_at = ledger.intent_at or time.time()
        wanted = set(ledger.input_urls)
        if not wanted:
            return Verdict(absent=True)  # nothing was uploaded, so nothing can have been sent
        failures = 0
        while True:
            item.check_stop()
            try:
                entries = list(self._entries(item.spec.id, intent_at - CLOCK_MARGIN_SECONDS))
            except HistoryUnusable as exc:
                return Verdict(reason=str(exc))
            except (httpx.HTTPError, ValueError) as exc:
                failures += 1
                if failures >= HISTORY_TRIES:
                    return Verdict(reason=f"FAL's request history did not answer: {describe(exc)}")
                item.sleep(RECHECK_SECONDS)
                continue
            found = matching_request(entries, wanted)
            if found:
                return Verdict(request_id=found)
            if any(not isinstance(e.get("json_input"), dict) for e in entries):
                return Verdict(reason="this FAL account does not keep request inputs, so the photo "
                                      "cannot be recognised")
            waited = time.time() - intent_at
            lists_unfinished = any(not e.get("ended_at") for e in entries)
            if waited >= SETTLE_SECONDS and (lists_unfinished or waited >= window_seconds):
                return Verdict(absent=True)
            left = max(0.0, window_seconds - waited)
            item.progress(4, f"Checking with FAL whether this photo arrived (up to {left:.0f} s more)")
            item.sleep(RECHECK_SECONDS)

    def _entries(self, endpoint_id: str, since: float) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"endpoint_id": endpoint_id, "start": iso8601(since),
                                  "expand": "payloads", "limit": PAGE_SIZE}
        for _ in range(MAX_PAGES):
            response = self.http.get(self.url, params=params, headers=self.auth, timeout=self.timeout)
            if response.status_code in (401, 403):
                raise HistoryUnusable(f"the FAL key may not read the request history (HTTP {response.status_code})")
            if response.status_code == 404:
                raise HistoryUnusable("FAL's request history is not available (HTTP 404)")
            response.raise_for_status()
            page = response.json()
            yield from (e for e in page.get("items") or [] if isinstance(e, dict))
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not cursor:
                return
            params["cursor"] = cursor


def matching_request(entries: list[dict[str, Any]], wanted: set[str]) -> str | None:
    """The earliest request whose inputs contain every one of our input URLs."""
    hits = [e for e in entries if e.get("request_id") and wanted <= set(strings_in(e.get("json_input")))]
    hits.sort(key=lambda e: str(e.get("sent_at") or ""))
    return str(hits[0]["request_id"]) if hits else None


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def iso8601(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return str(exc) or type(exc).__name__

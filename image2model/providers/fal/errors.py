"""FAL's HTTP refusals as item failures, classified by status code, never by message text."""

from __future__ import annotations

from typing import Any

import httpx

from image2model.providers.base import ItemFailed


def classify_http_error(status: int, detail: Any, own_key: bool = False) -> ItemFailed:
    """One FAL HTTP status to one item failure; only transient classes are retryable.
    `own_key`: the request ran on the FAL key the person gave, not on this server's."""
    text = describe_detail(detail)
    if status == 401 and own_key:
        return ItemFailed("fal_key_rejected", f"FAL did not accept the FAL key you gave: {text}. Check the key "
                          "on fal.ai/dashboard/keys, or leave the field empty to use this server's.")
    if status == 401:
        return ItemFailed("fal_key_rejected", f"FAL rejected the API key ({text}). Check FAL_KEY.")
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

"""Job tokens: read access to one job (status, stream, downloads) for a limited time, in a
form a URL can carry, for the clients that cannot send a header (a browser's EventSource, a
plain download link). Never the API key in a URL.

A token is `<expiry>.<signature>`, the signature an HMAC of the job id and the expiry under a
key derived from the server secret: nothing is stored, and any web process can check it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time

from image2model.sealing import derived_key

SIGNATURE_BYTES = 24


class JobTokens:
    def __init__(self, secret: bytes, lifetime_seconds: float):
        self._key = derived_key(secret, "job-token")
        self.lifetime = lifetime_seconds

    def _signature(self, job_id: str, expires: int) -> str:
        digest = hmac.new(self._key, f"{job_id}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:SIGNATURE_BYTES]).decode("ascii")

    def mint(self, job_id: str, now: float | None = None) -> tuple[str, int]:
        """A token for this job and when it stops working (epoch seconds)."""
        expires = math.ceil((time.time() if now is None else now) + self.lifetime)
        return f"{expires}.{self._signature(job_id, expires)}", expires

    def valid(self, job_id: str, token: str | None, now: float | None = None) -> bool:
        if not token or len(token) > 100:
            return False
        expiry, _, signature = token.partition(".")
        if not expiry.isascii() or not expiry.isdigit() or len(expiry) > 12:
            return False
        if int(expiry) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(signature.encode(), self._signature(job_id, int(expiry)).encode())

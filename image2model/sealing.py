"""The server secret, and what it protects: users' own FAL keys at rest, and job tokens.

The secret is SECRET_KEY when set. Otherwise one is made at first start and kept in the job
store, so every process and machine of a deployment agrees on it without configuration; that
keeps sealed keys out of logs and dumps of job records, but whoever can read the whole store
can read the secret too, so a deployment that takes users' keys should set SECRET_KEY.
Each use gets its own key derived from the secret, so a token can never open a sealed key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets

from cryptography.fernet import Fernet, InvalidToken

from image2model.config import Settings
from image2model.jobs.store import JobStore

log = logging.getLogger(__name__)


def server_secret(settings: Settings, store: JobStore) -> bytes:
    configured = settings.secret_key.strip()
    if configured:
        return configured.encode()
    if settings.use_redis:
        log.warning("SECRET_KEY is not set: users' FAL keys are sealed with a secret kept in Redis beside "
                    "them; set SECRET_KEY (the same on every machine) to keep the two apart")
    return store.shared_secret(secrets.token_urlsafe(32)).encode()


def derived_key(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, f"image2model:{purpose}".encode(), hashlib.sha256).digest()


class KeyUnreadable(Exception):
    """A sealed key this process cannot open: sealed under another SECRET_KEY, or damaged."""


class Sealer:
    """Authenticated encryption (Fernet: AES-CBC with HMAC) of short secrets like a FAL key."""

    def __init__(self, secret: bytes):
        self._fernet = Fernet(base64.urlsafe_b64encode(derived_key(secret, "fal-key")))

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, ValueError) as exc:
            raise KeyUnreadable("the sealed key cannot be opened with this server's secret") from exc

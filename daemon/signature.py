"""``X-Hub-Signature-256``: HMAC-SHA256 of the exact request bytes, keyed with the app secret.

Pure functions, no I/O: the web edge checks the header before anything is enqueued and the
``verify`` actor checks the stored bytes again. See docs/whatsapp.md, *Webhook signatures*.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="
_HEX_DIGITS = frozenset("0123456789abcdef")


class SignatureError(Exception):
    """The signature is missing, malformed or wrong: the request is refused with 401."""


def sign(body: bytes, secret: str) -> str:
    """The header value Meta would send for ``body``: ``sha256=<64 lowercase hex>``."""
    return _PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secret: str) -> None:
    """Check ``header`` against ``body`` in constant time.

    Raises:
        SignatureError: when the header is missing, not ``sha256=`` + 64 hex digits, or wrong.
    """
    if header is None:
        raise SignatureError("missing")
    value = header.strip()
    if not value[: len(_PREFIX)].lower() == _PREFIX:
        raise SignatureError("malformed")
    digest = value[len(_PREFIX) :].lower()
    if len(digest) != 64 or not _HEX_DIGITS.issuperset(digest):
        raise SignatureError("malformed")
    expected = sign(body, secret)[len(_PREFIX) :]
    if not hmac.compare_digest(expected, digest):
        raise SignatureError("mismatch")

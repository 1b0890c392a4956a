"""X-Hub-Signature-256 over the exact bytes (docs/whatsapp.md, *Webhook signatures*)."""

from __future__ import annotations

import json

import pytest

from daemon.signature import SignatureError, sign, verify
from tests.support.meta import meta_bytes, signature_vector


def test_the_shared_vector_passes() -> None:
    """The fixture's exact bytes and header verify with its app secret."""
    vector = signature_vector()
    body = vector["body_utf8"].encode("utf-8")
    verify(body, vector["header"], vector["app_secret"])
    assert sign(body, vector["app_secret"]) == vector["header"]


@pytest.mark.parametrize(
    "reserialise",
    [
        lambda obj: json.dumps(obj).encode(),
        lambda obj: json.dumps(obj, separators=(",", ":")).encode(),
        lambda obj: json.dumps(obj, ensure_ascii=False).encode("utf-8"),
    ],
)
def test_reserialised_json_fails(reserialise: object) -> None:
    """The same JSON re-serialised gives other bytes, and the signature no longer matches."""
    vector = signature_vector()
    obj = json.loads(vector["body_utf8"])
    body = reserialise(obj)  # type: ignore[operator]
    assert body != vector["body_utf8"].encode()
    with pytest.raises(SignatureError):
        verify(body, vector["header"], vector["app_secret"])


def test_meta_serialisation_reproduces_the_vector() -> None:
    """The tests' signer serialises like Meta: compact, ASCII escapes, escaped slashes."""
    vector = signature_vector()
    assert meta_bytes(json.loads(vector["body_utf8"])) == vector["body_utf8"].encode()


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha256=zz",
        "sha1=" + "a" * 40,
        "md5=" + "a" * 64,
        "sha256=" + "g" * 64,
        "sha256=" + "0" * 64,
        "sha256=" + "0" * 65,
    ],
)
def test_missing_malformed_and_wrong_signatures_fail(header: str | None) -> None:
    """Anything but the right sha256 HMAC is refused."""
    with pytest.raises(SignatureError):
        verify(b"{}", header, "secret")


def test_uppercase_hex_and_whitespace_are_tolerated() -> None:
    """Hex case and surrounding white space do not matter; the digest does."""
    header = sign(b"{}", "secret")
    verify(b"{}", "  " + header.upper().replace("SHA256=", "sha256=") + " ", "secret")

"""The Graph API as wapipe uses it, emulated: one core for the sandbox, the tests and the benchmark.

Transport-free and storage-free: :func:`route` says which call a request is, :func:`check_send`
makes Meta's checks of a send, and the ``*_answer`` functions build Meta's answers (docs/whatsapp.md,
*Sending*, *Media*, *Error codes*). The sandbox's emulator (:mod:`daemon.sandbox`, Redis-backed,
on the web's aiohttp server), the tests' scriptable fake (``tests/support/fake_graph.py``) and
the benchmark's lean server (``bench/fake_graph.py``, a bare asyncio protocol that costs the
measured machine less CPU) each bring their own transport and storage around it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from daemon import send_rules

#: A path under the Graph API's base (``/{version}/…``), or a media download.
_MESSAGES = re.compile(r"^/(?P<version>v\d+\.\d+)/(?P<phone_number_id>[^/]+)/messages$")
_MEDIA_UPLOAD = re.compile(r"^/(?P<version>v\d+\.\d+)/(?P<phone_number_id>[^/]+)/media$")
_NODE = re.compile(r"^/(?P<version>v\d+\.\d+)/(?P<node_id>[^/]+)$")

Kind = Literal["send", "read", "media_info", "node", "media_upload", "unknown"]
READ_ANSWER: dict[str, Any] = {"success": True}


@dataclass(frozen=True, slots=True)
class Call:
    """Which Graph API call a request is, and its path's ids."""

    kind: Kind
    #: The phone number id of a send, read receipt or upload; the node or media id of a GET.
    target: str = ""


def route(method: str, path: str, body: object = None, *, node_read: bool = False) -> Call:
    """The call ``method path`` (with its JSON ``body`` for a POST) makes.

    ``node_read``: a GET that asks for ``fields`` (``GET /me``, ``GET /{phone number id}``, as
    ``wapipe check`` makes) rather than a media URL.
    """
    if method == "POST":
        if match := _MESSAGES.match(path):
            kind: Kind = "read" if isinstance(body, dict) and body.get("status") == "read" else "send"
            return Call(kind, match["phone_number_id"])
        if match := _MEDIA_UPLOAD.match(path):
            return Call("media_upload", match["phone_number_id"])
    elif method == "GET" and (match := _NODE.match(path)):
        return Call("node" if node_read else "media_info", match["node_id"])
    return Call("unknown")


def error_body(
    code: int, message: str, *, details: str | None = None, fbtrace_id: str = "fake"
) -> dict[str, Any]:
    """A Graph API error object, as Meta sends it."""
    error: dict[str, Any] = {
        "message": f"(#{code}) {message}",
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": fbtrace_id,
    }
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}


#: (HTTP status, code, message) of the refusals the fakes make.
TOKEN_REFUSED = (401, 190, "Invalid OAuth access token")
UNKNOWN_MEDIA = (400, 100, "Invalid parameter: unknown media id")


def check_send(body: object) -> send_rules.Refusal | None:
    """Meta's checks of a send, read receipt or typing indicator body: the refusal, or None."""
    return send_rules.refusal(body)


def recipient_of(body: dict[str, Any]) -> str:
    return str(body.get("to") or body.get("recipient"))


def in_reply_to(body: dict[str, Any]) -> str | None:
    """The inbound message a send quotes (``context.message_id``), if any."""
    context = body.get("context")
    message_id = context.get("message_id") if isinstance(context, dict) else None
    return message_id if isinstance(message_id, str) else None


def send_answer(recipient: str, outbound_id: str) -> dict[str, Any]:
    """Meta's answer to an accepted send."""
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": recipient, "wa_id": recipient.lstrip("+")}],
        "messages": [{"id": outbound_id}],
    }


def media_info_answer(media_id: str, url: str, mime_type: str, content: bytes | None = None, *,
                      sha256: str | None = None, size: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Meta's answer to ``GET /{media_id}``: a short-lived URL and what the file is (its hash and
    size from ``content``, or as given)."""
    if content is not None:
        sha256, size = hashlib.sha256(content).hexdigest(), len(content)
    return {
        "messaging_product": "whatsapp",
        "url": url,
        "mime_type": mime_type,
        "sha256": sha256,
        "file_size": str(size),
        "id": media_id,
    }

"""Serialise and sign webhooks the way Meta does (docs/whatsapp.md, *Webhook signatures*)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from daemon.signature import sign
from daemon.simulate import meta_body

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"  # webhook samples and a signature vector


#: Compact, ASCII-escaped JSON with ``/`` escaped as ``\\/``: the bytes Meta puts on the wire.
meta_bytes = meta_body


def signed(body: bytes, secret: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, secret)}


def webhook_samples() -> dict[str, dict[str, Any]]:
    with (FIXTURES / "webhooks.json").open(encoding="utf-8") as f:
        return json.load(f)


def signature_vector() -> dict[str, str]:
    with (FIXTURES / "signature_vector.json").open(encoding="utf-8") as f:
        return json.load(f)


def text_envelope(
    message_id: str,
    body: str = "hi",
    *,
    sender: str | None = "447700900123",
    phone_number_id: str = "620000000000001",
    user_id: str | None = None,
) -> dict[str, Any]:
    """A one-message text webhook."""
    message: dict[str, Any] = {
        "id": message_id,
        "timestamp": str(int(time.time())),  # the test's clock: the 24-hour window is open
        "type": "text",
        "text": {"body": body},
    }
    contact: dict[str, Any] = {"profile": {"name": "Ana"}}
    if sender is not None:
        message["from"] = sender
        contact["wa_id"] = sender
    if user_id is not None:
        message["from_user_id"] = user_id
        contact["user_id"] = user_id
    return envelope([message], phone_number_id=phone_number_id, contacts=[contact])


def envelope(
    messages: list[dict[str, Any]],
    *,
    phone_number_id: str = "620000000000001",
    contacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "810000000000001",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15557650100",
                                "phone_number_id": phone_number_id,
                            },
                            "contacts": contacts or [],
                            "messages": copy.deepcopy(messages),
                        },
                    }
                ],
            }
        ],
    }

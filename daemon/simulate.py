"""``wapipe simulate``: play Meta against a running wapipe in sandbox mode.

Posts a correctly signed webhook (a text, or an image first uploaded to the emulator) to
``http://127.0.0.1:$PORT/webhook``, waits for the reply in ``/sandbox/outbox`` and prints its text.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from daemon.config import Settings
from daemon.signature import HEADER, sign

#: The business number simulated webhooks are addressed to (when WAPIPE_PHONE_NUMBER_IDS is unset).
SANDBOX_PHONE_NUMBER_ID = "100000000000001"
SANDBOX_USER = "15550001234"
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


class SimulateError(Exception):
    """What simulate waited for and did not get (exit code 1)."""


def meta_body(obj: Any) -> bytes:
    """Serialise like Meta: compact, ASCII escapes, ``/`` escaped."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/").encode("ascii")


def envelope(phone_number_id: str, message: dict[str, Any]) -> dict[str, Any]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": "Simulated User"}, "wa_id": SANDBOX_USER}],
        "messages": [message],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "0", "changes": [{"field": "messages", "value": value}]}],
    }


async def simulate(
    settings: Settings, *, text: str | None, image: Path | None, url: str | None, wait_seconds: float
) -> str:
    """Send one simulated inbound message; return the reply's text.

    Raises:
        SimulateError: the webhook was refused, or no reply came within ``wait_seconds``.
    """
    webhook = url or f"http://127.0.0.1:{settings.port}/webhook"
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(webhook))
    phone_number_id = min(settings.phone_number_ids) if settings.phone_number_ids else SANDBOX_PHONE_NUMBER_ID
    message_id = f"wamid.sim.{uuid.uuid4().hex}"
    message: dict[str, Any] = {"from": SANDBOX_USER, "id": message_id, "timestamp": str(int(time.time()))}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        if image is not None:
            message |= {"type": "image", "image": await _upload(session, settings, phone_number_id, image)}
        else:
            message |= {"type": "text", "text": {"body": text or ""}}
        body = meta_body(envelope(phone_number_id, message))
        headers = {"Content-Type": "application/json", HEADER: sign(body, settings.app_secret.get())}
        try:
            async with session.post(webhook, data=body, headers=headers) as response:
                if response.status != 200:
                    raise SimulateError(
                        f"{webhook} answered {response.status}: {(await response.text())[:200]}"
                    )
        except aiohttp.ClientError as error:
            raise SimulateError(f"cannot post to {webhook}: {error} (is `wapipe run` running?)") from None
        return await _wait_reply(session, f"{origin}/sandbox/outbox", message_id, wait_seconds)


async def _upload(
    session: aiohttp.ClientSession, settings: Settings, phone_number_id: str, path: Path
) -> dict[str, Any]:
    mime = IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        raise SimulateError(f"{path}: --image takes a .jpg, .jpeg, .png or .webp file")
    content = await asyncio.to_thread(path.read_bytes)
    form = aiohttp.FormData()
    form.add_field("messaging_product", "whatsapp")
    form.add_field("type", mime)
    form.add_field("file", content, filename=path.name, content_type=mime)
    upload = f"{settings.graph_base}/{phone_number_id}/media"
    async with session.post(upload, data=form, headers={"Authorization": "Bearer sandbox"}) as response:
        if response.status != 200:
            raise SimulateError(
                f"upload to {upload} answered {response.status}: {(await response.text())[:200]}"
            )
        media_id = (await response.json())["id"]
    digest = base64.b64encode(hashlib.sha256(content).digest()).decode()
    return {"id": media_id, "mime_type": mime, "sha256": digest}


async def _wait_reply(
    session: aiohttp.ClientSession, outbox: str, message_id: str, wait_seconds: float
) -> str:
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        try:
            async with session.get(outbox) as response:
                if response.status == 404:
                    raise SimulateError(
                        f"{outbox} is not served: is wapipe in sandbox mode (no WHATSAPP_ACCESS_TOKEN)?"
                    )
                entries = await response.json() if response.status == 200 else []
        except aiohttp.ClientError:
            entries = []
        for entry in entries:
            sent = entry.get("message") or {}
            if sent.get("context", {}).get("message_id") == message_id and sent.get("type") == "text":
                return str(sent["text"]["body"])
        await asyncio.sleep(0.05)
    raise SimulateError(
        f"no reply to {message_id} in {outbox} within {wait_seconds:g} s (is the worker running?)"
    )

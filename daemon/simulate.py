"""``wapipe simulate``: play Meta and a user against a running wapipe in sandbox mode.

It finds the deployment's web through the record the web keeps in Redis (or ``--url``), posts a
correctly signed webhook (a text, or an image first uploaded to the emulator), waits until the
pipeline marks that inbound message handled, and returns everything the deployment sent in answer
to it, in order, from the emulator's outbox — quoted or not, any type, several messages, or none.

This is a deliberate view of message content: it prints what the bot said to the simulated user.
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

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from daemon.config import SANDBOX_GRAPH_PATH, Settings
from daemon.sandbox_link import RECORD_KEY, EmulatorRecord
from daemon.signature import HEADER, sign
from daemon.startup import EXIT_CONFIG, EXIT_FAILURE, StartupError
from daemon.store import keys, records

#: The business number simulated webhooks are addressed to (when WAPIPE_PHONE_NUMBER_IDS is unset).
SANDBOX_PHONE_NUMBER_ID = "100000000000001"
SANDBOX_USER = "15550001234"
#: The profile name of a simulated user who has none.
SIMULATED_NAME = "Simulated User"
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
#: Larger images are refused before upload (WhatsApp's image limit is 5 MB).
IMAGE_MAX_BYTES = 5 * 1024 * 1024
POLL_SECONDS = 0.05


class SimulateError(StartupError):
    """What simulate could not do, in one line; ``code`` 2 for bad arguments, 1 otherwise."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message, code)


def meta_body(obj: Any) -> bytes:
    """Serialise like Meta: compact, ASCII escapes, ``/`` escaped."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/").encode("ascii")


def business_number(settings: Settings) -> str:
    """The business number simulated users write to: the first of ``WAPIPE_PHONE_NUMBER_IDS``, or
    :data:`SANDBOX_PHONE_NUMBER_ID`."""
    return min(settings.phone_number_ids) if settings.phone_number_ids else SANDBOX_PHONE_NUMBER_ID


def digits(number: str) -> str | None:
    """A number as people write it (``+351 910-000 001``) in digits, or None when it is not one."""
    plain = "".join(c for c in number if c not in "+-() ")
    return plain if plain.isdigit() and 5 <= len(plain) <= 20 else None


def envelope(
    phone_number_id: str,
    user: str,
    message: dict[str, Any] | None = None,
    *,
    name: str = SIMULATED_NAME,
    statuses: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Meta's webhook of one change for ``phone_number_id``: ``message`` from ``user`` (named
    ``name``), or the ``statuses`` of messages sent to them."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
    }
    if message is not None:
        value["contacts"] = [{"profile": {"name": name}, "wa_id": user}]
        value["messages"] = [message]
    if statuses is not None:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "0", "changes": [{"field": "messages", "value": value}]}],
    }


def _read_image(path: Path) -> tuple[bytes, str]:
    mime = IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        raise SimulateError(f"--image {path}: takes a .jpg, .jpeg, .png or .webp file", EXIT_CONFIG)
    try:
        size = path.stat().st_size
        if size > IMAGE_MAX_BYTES:
            raise SimulateError(f"--image {path}: {size} bytes, over WhatsApp's 5 MB for images", EXIT_CONFIG)
        return path.read_bytes(), mime
    except OSError as error:
        raise SimulateError(f"--image {path}: {error.strerror or error}", EXIT_CONFIG) from None


async def simulate(
    settings: Settings,
    redis_url: str,
    *,
    text: str | None,
    image: Path | None,
    url: str | None,
    wait_seconds: float,
    sender: str | None = None,
    button: str | None = None,
    list_row: str | None = None,
    location: tuple[float, float] | None = None,
) -> list[dict[str, Any]]:
    """Send one simulated inbound message; return the outbound messages that answered it (maybe none).

    ``button`` and ``list_row`` press a reply button or pick a list row of the last message sent to
    the user that has one with that id, as Meta's webhook reports it (the id and its title, quoting
    that message); ``location`` shares a location.

    Raises:
        SimulateError: a bad argument, no sandbox web to talk to, the webhook refused, or the message
            not handled within ``wait_seconds``.
    """
    user = sender or SANDBOX_USER
    if not user.isdigit() or not 5 <= len(user) <= 20:
        raise SimulateError(f"--from {user}: a phone number in digits, like {SANDBOX_USER}", EXIT_CONFIG)
    content = _read_image(image) if image is not None else None
    phone_number_id = business_number(settings)
    message_id = f"wamid.sim.{uuid.uuid4().hex}"
    sent_at = int(time.time())
    message: dict[str, Any] = {"from": user, "id": message_id, "timestamp": str(sent_at)}
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        record = await _record(client)
        if record is None and (url is None or content is not None):
            raise SimulateError(
                "no sandbox web is recorded in this Redis: is `wapipe run` (or `wapipe web` in sandbox "
                "mode) running with the same REDIS_URL / WAPIPE_DATA_DIR?"
            )
        webhook = url if url is not None else record.webhook_url if record is not None else ""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            if content is not None and record is not None:
                media = await _upload(session, record, settings.api_version, phone_number_id, *content)
                message |= {"type": "image", "image": media}
            elif button is not None or list_row is not None:
                message |= await _choice(client, user, button, list_row)
            elif location is not None:
                message |= {
                    "type": "location",
                    "location": {"latitude": location[0], "longitude": location[1]},
                }
            else:
                message |= {"type": "text", "text": {"body": text or ""}}
            await _post(session, webhook, meta_body(envelope(phone_number_id, user, message)), settings)
        return await _wait_answer(client, phone_number_id, message_id, sent_at, wait_seconds)
    except RedisError as error:
        raise SimulateError(f"Redis: {error}") from None
    finally:
        await client.aclose()


async def _choice(
    client: aioredis.Redis, user: str, button: str | None, list_row: str | None
) -> dict[str, Any]:
    """The ``interactive`` part of the webhook Meta sends when ``user`` presses reply button
    ``button`` or picks list row ``list_row`` of the newest message sent to them that offers it."""
    wanted = button if button is not None else list_row
    for raw in reversed(await client.lrange(keys.SANDBOX_OUTBOX, 0, -1)):
        entry = json.loads(raw)
        sent = entry.get("message") or {}
        if (
            entry.get("kind") != "message"
            or str(sent.get("to") or sent.get("recipient") or "").lstrip("+") != user
        ):
            continue
        context = {"from": str(entry.get("phone_number_id")), "id": str(entry.get("id"))}
        pressed = choice_reply(sent, "button" if button is not None else "list", wanted, context)
        if pressed is not None:
            return pressed
    flag = "--button" if button is not None else "--list-row"
    raise SimulateError(f"{flag} {wanted}: no message sent to {user} offers it", EXIT_CONFIG)


def choice_reply(
    sent: dict[str, Any], kind: str, wanted: object, context: dict[str, str]
) -> dict[str, Any] | None:
    """The ``interactive`` message Meta's webhook carries when the user presses reply button
    (``kind`` "button") or picks list row ("list") ``wanted`` of the ``sent`` message, quoting it
    (``context``); None when ``sent`` offers no such choice."""
    for choice in choices(sent, kind):
        if choice.get("id") == wanted:
            if kind == "button":
                reply = {"type": "button_reply", "button_reply": {"id": wanted, "title": choice.get("title")}}
            else:
                row = {key: choice[key] for key in ("id", "title", "description") if key in choice}
                reply = {"type": "list_reply", "list_reply": row}
            return {"type": "interactive", "interactive": reply, "context": context}
    return None


def choices(sent: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The reply buttons (``kind`` "button") or list rows ("list") a sent message offers."""
    interactive = sent.get("interactive") if sent.get("type") == "interactive" else None
    if not isinstance(interactive, dict) or interactive.get("type") != kind:
        return []
    action = interactive.get("action") or {}
    if kind == "button":
        return [b.get("reply") or {} for b in action.get("buttons") or [] if isinstance(b, dict)]
    return [row for section in action.get("sections") or [] for row in (section.get("rows") or [])]


async def _record(client: aioredis.Redis) -> EmulatorRecord | None:
    raw = await client.get(RECORD_KEY)
    return None if raw is None else EmulatorRecord.decode(raw)


async def _post(session: aiohttp.ClientSession, webhook: str, body: bytes, settings: Settings) -> None:
    headers = {"Content-Type": "application/json", HEADER: sign(body, settings.app_secret.get())}
    try:
        async with session.post(webhook, data=body, headers=headers) as response:
            if response.status != 200:
                raise SimulateError(f"{webhook} answered {response.status}: {(await response.text())[:200]}")
    except (aiohttp.ClientError, TimeoutError) as error:
        raise SimulateError(f"cannot post to {webhook}: {error or type(error).__name__}") from None


async def _upload(
    session: aiohttp.ClientSession,
    record: EmulatorRecord,
    api_version: str,
    phone_number_id: str,
    content: bytes,
    mime: str,
) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("messaging_product", "whatsapp")
    form.add_field("type", mime)
    form.add_field("file", content, filename="image", content_type=mime)
    upload = f"{record.web_url}{SANDBOX_GRAPH_PATH}/{api_version}/{phone_number_id}/media"
    headers = {"Authorization": f"Bearer {record.token}"}
    try:
        async with session.post(upload, data=form, headers=headers) as response:
            if response.status != 200:
                raise SimulateError(
                    f"upload to {upload} answered {response.status}: {(await response.text())[:200]}"
                )
            media_id = str((await response.json())["id"])
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as error:
        raise SimulateError(f"upload to {upload} failed: {error or type(error).__name__}") from None
    digest = base64.b64encode(hashlib.sha256(content).digest()).decode()
    return {"id": media_id, "mime_type": mime, "sha256": digest}


async def _wait_answer(
    client: aioredis.Redis, phone_number_id: str, message_id: str, at: int, wait_seconds: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + wait_seconds

    async def done() -> bool:
        record = await records.read_async(client, phone_number_id, message_id, at)
        return record is not None and record.handled is not None

    while not await done():
        if time.monotonic() >= deadline:
            raise SimulateError(
                f"{message_id} was not handled within {wait_seconds:g} s (is `wapipe worker` running? "
                "`wapipe dlq list` shows what failed)"
            )
        await asyncio.sleep(POLL_SECONDS)
    answered: list[dict[str, Any]] = []
    for raw in await client.lrange(keys.SANDBOX_OUTBOX, 0, -1):
        entry = json.loads(raw)
        if entry.get("kind") == "message" and entry.get("in_reply_to") == message_id:
            answered.append(entry.get("message") or {})
    return answered


def render(message: dict[str, Any]) -> str:
    """One outbound message as a person would read it in a terminal."""
    kind = str(message.get("type"))
    body = message.get(kind)
    part: dict[str, Any] = body if isinstance(body, dict) else {}
    if kind == "text":
        return str(part.get("body", ""))
    if kind == "interactive":
        return _interactive(part)
    if kind in ("image", "video", "audio", "document", "sticker"):
        shown = (
            part.get("caption") or part.get("filename") or part.get("link") or f"media id {part.get('id')}"
        )
        return f"[{kind}] {shown}"
    if kind == "location":
        return f"[location] {part.get('latitude')}, {part.get('longitude')} {part.get('name') or ''}".rstrip()
    if kind == "reaction":
        return f"[reaction] {part.get('emoji')} to {part.get('message_id')}"
    if kind == "template":
        language = part.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        return f"[template] {part.get('name')} ({code})"
    if kind == "contacts":
        contacts = message.get("contacts")
        return f"[contacts] {len(contacts) if isinstance(contacts, list) else 0} contact(s)"
    return f"[{kind}] {json.dumps(part, ensure_ascii=False)}"


def _interactive(part: dict[str, Any]) -> str:
    lines: list[str] = []
    header = part.get("header")
    if isinstance(header, dict) and header.get("text"):
        lines.append(str(header["text"]))
    body = part.get("body")
    if isinstance(body, dict) and body.get("text"):
        lines.append(str(body["text"]))
    action = part.get("action")
    action = action if isinstance(action, dict) else {}
    kind = part.get("type")
    if kind == "button":
        for button in action.get("buttons") or []:
            reply = button.get("reply") if isinstance(button, dict) else None
            if isinstance(reply, dict):
                lines.append(f"  [{reply.get('title')}]  --button {reply.get('id')}")
    elif kind == "list":
        lines.append(f"  ({action.get('button')})")
        for section in action.get("sections") or []:
            if not isinstance(section, dict):
                continue
            if section.get("title"):
                lines.append(f"  {section['title']}:")
            for row in section.get("rows") or []:
                if isinstance(row, dict):
                    description = f" - {row['description']}" if row.get("description") else ""
                    lines.append(f"    - {row.get('title')}{description}  --list-row {row.get('id')}")
    elif kind == "cta_url":
        parameters = action.get("parameters")
        parameters = parameters if isinstance(parameters, dict) else {}
        lines.append(f"  [{parameters.get('display_text')}] {parameters.get('url')}")
    elif kind == "location_request_message":
        lines.append("  [Send location]")
    footer = part.get("footer")
    if isinstance(footer, dict) and footer.get("text"):
        lines.append(str(footer["text"]))
    return "\n".join(lines) if lines else f"[interactive {kind}]"

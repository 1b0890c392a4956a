"""Business-initiated messages: ``POST /send`` and ``wapipe send`` put them on the ``send`` stage.

A request names the business number, the user (their wa_id or business-scoped id), one to ten
message bodies (as the builders of :mod:`daemon.messages` make them, or written out) and an
idempotency key. The key is claimed with the enqueue in one script (:mod:`daemon.store.dedup`), so a
request repeated with the same key — a client's retry after a timeout — is accepted and sends
nothing more. ``POST /send`` answers only with ``Authorization: Bearer $WAPIPE_SEND_TOKEN``; it is
not mounted when that setting is unset.

Request::

    POST /send
    {"phone_number_id": "1000…", "to": "447700900123", "idempotency_key": "order-77-ready",
     "messages": [{"type": "text", "text": {"body": "Your order is ready"},
                   "wapipe_outside_window": {"type": "template", "template": {…}}}]}

Answer ``202 {"key": "order-77-ready", "duplicate": false}``; 400 with the reason for a request
that is not one; 401 without the token; 503 when Redis did not take it.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from daemon.config import Settings
from daemon.messages import UPLOAD, has_uploads
from daemon.pipeline import SEND, Outgoing, message
from daemon.store import dedup, journeys, keys

log = logging.getLogger(__name__)

#: Bodies in one request.
MAX_MESSAGES = 10
#: The idempotency key's length.
MAX_KEY = 128


class RequestRefused(ValueError):
    """The request is not a send request; the message says why."""


def outgoing(request: object, settings: Settings) -> Outgoing:
    """The :class:`Outgoing` a request asks for.

    Raises:
        RequestRefused: naming the first field that is missing or wrong.
    """
    if not isinstance(request, dict):
        raise RequestRefused("the body must be a JSON object")
    fields: dict[str, str] = {}
    for name, limit in (("phone_number_id", 64), ("to", 128), ("idempotency_key", MAX_KEY)):
        value = request.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
            raise RequestRefused(f"{name} must be a non-empty string of at most {limit} characters")
        fields[name] = value.strip()
    if settings.phone_number_ids is not None and fields["phone_number_id"] not in settings.phone_number_ids:
        raise RequestRefused("phone_number_id is not one of WAPIPE_PHONE_NUMBER_IDS")
    bodies = request.get("messages")
    if not isinstance(bodies, list) or not 1 <= len(bodies) <= MAX_MESSAGES:
        raise RequestRefused(f"messages must be a list of 1 to {MAX_MESSAGES} message bodies")
    for body in bodies:
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise RequestRefused("each message must be an object with a type")
        if any(name in body for name in ("to", "recipient", "messaging_product")):
            raise RequestRefused("a message must not name its recipient: use to")
        if has_uploads(body):  # a caller must not make the workers read and send their files
            raise RequestRefused(f"{UPLOAD} is for a bot's own messages: send media by id or link")
    to = fields["to"]
    if to.startswith("+") and to[1:].isdigit():  # a phone number as people write it: its wa_id
        to = to[1:]
    return Outgoing(
        phone_number_id=fields["phone_number_id"],
        to=to,
        messages=tuple(bodies),
        key=fields["idempotency_key"],
        requested_at=time.time(),
    )


def _claims(request: Outgoing, settings: Settings) -> dedup.Claims:
    claims = dedup.Claims()
    mark = keys.seen_send(request.phone_number_id, request.key)
    # A fresh owner per request: the same key twice is a duplicate, never "the same attempt".
    accepted = journeys.event(
        "edge",
        "done",
        1,
        phone_number_id=request.phone_number_id,
        received_at=round(request.requested_at, 3),
        record_at=request.at,
    )
    claims.add_message(
        mark,
        str(uuid.uuid4()),
        settings.message_dedup_ttl_seconds,
        False,
        message(SEND, request),
        (request.subject, accepted, settings.trace_retention_hours * 3600),
        None,  # claimed by its key's mark: a second request with the key is another time
    )
    return claims


def enqueue(client: redis.Redis, request: Outgoing, settings: Settings) -> bool:
    """Enqueue ``request`` unless its key was; True when it was a duplicate."""
    [fresh] = _claims(request, settings).write(client)
    return not fresh


async def enqueue_async(client: aioredis.Redis, request: Outgoing, settings: Settings) -> bool:
    """:func:`enqueue` through ``redis.asyncio``."""
    [fresh] = await _claims(request, settings).write_async(client)
    return not fresh


def endpoint(settings: Settings, client_of: Any) -> Any:
    """The ``POST /send`` handler; ``client_of(request)`` gives the app's ``redis.asyncio`` client."""
    assert settings.send_token is not None
    expected = f"Bearer {settings.send_token.get()}"

    async def send(request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            log.warning("send_unauthorised")
            return web.json_response({"error": "a bearer token (WAPIPE_SEND_TOKEN) is required"}, status=401)
        try:
            asked = outgoing(json.loads(await request.read()), settings)
        except (
            ValueError,
            UnicodeDecodeError,
        ) as error:  # RequestRefused and JSONDecodeError are ValueErrors
            reason = str(error) if isinstance(error, RequestRefused) else "the body is not JSON"
            return web.json_response({"error": reason}, status=400)
        try:
            duplicate = await enqueue_async(client_of(request), asked, settings)
        except (RedisError, TimeoutError) as error:
            log.error("send_enqueue_failed", extra={"error": type(error).__name__})
            return web.json_response({"error": "queue unavailable, retry with the same key"}, status=503)
        log.info(
            "send_accepted", extra={"key": asked.key, "duplicate": duplicate, "messages": len(asked.messages)}
        )
        return web.json_response({"key": asked.key, "duplicate": duplicate}, status=202)

    return send

"""Business-initiated messages: ``POST /send`` and ``wapipe send`` put them on the ``send`` stage;
``GET /send/{key}`` says what became of them.

A request names the business number, the user (their wa_id or business-scoped id), one to ten
message bodies (as the builders of :mod:`daemon.messages` make them, or written out) and an
idempotency key. Everything is checked before the answer — the fields, and every body against
Meta's rules (:mod:`daemon.send_rules`, the emulator's own checks) — and a request with one bad
body is refused whole (400 naming the message's index and the rule): nothing of it is queued.

The key is claimed with the enqueue in one script (:mod:`daemon.store.dedup`), scoped to the
business number. "The same request" is the canonical JSON of ``phone_number_id``, the user (as
normalised: ``+44 7700…`` is ``447700…``) and ``messages``: repeated under its key — a client's
retry after a timeout — it is answered ``202`` with ``"duplicate": true`` and
``Idempotent-Replayed: true`` and sends nothing more; any other request under the key is ``409``.
``POST /send`` answers only with ``Authorization: Bearer $WAPIPE_SEND_TOKEN``; it is not mounted
when that setting is unset. No client's bytes get a 5xx: 503 means Redis did not answer.

Request::

    POST /send
    {"phone_number_id": "1000…", "to": "447700900123", "idempotency_key": "order-77-ready",
     "messages": [{"type": "text", "text": {"body": "Your order is ready"},
                   "wapipe_outside_window": {"type": "template", "template": {…}}}]}

Answers: ``202 {"key": "order-77-ready", "duplicate": false}``; ``400 {"error": …}`` (with
``"index"`` and Meta's ``"code"`` for a body Meta would refuse); 401 without the token; 409 for
another request under a key; 413 over ``WAPIPE_MAX_BODY_BYTES``; 415 for a compressed body; 503
when Redis did not take it. ``GET /send/{key}?phone_number_id=…``: ``200`` with each message's
outcome (:func:`daemon.store.sends.outcomes`), 404 for a key no request took.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from daemon import envelope, logs, send_rules
from daemon.config import Settings
from daemon.messages import OUTSIDE_WINDOW, UPLOAD, has_uploads
from daemon.pipeline import SEND, Outgoing, message
from daemon.store import dedup, journeys, keys, sends

log = logging.getLogger(__name__)

#: Bodies in one request.
MAX_MESSAGES = 10
#: The idempotency key's length.
MAX_KEY = 128
#: One body's canonical JSON, in bytes: well above any body Meta takes (a text of 4,096 characters,
#: a list of ten rows), so that what a caller can make the queue hold is bounded.
MAX_MESSAGE_BYTES = 65_536
#: How deep a body's objects and lists may nest (Meta's deepest bodies, templates, nest 6 deep).
MAX_DEPTH = 16
#: A wa_id: 1 to 15 ASCII digits (E.164 without the "+"); a business-scoped user id as Meta writes it.
_WA_ID = re.compile(r"[0-9]{1,15}", re.ASCII)
_BSUID = re.compile(r"[A-Za-z0-9._-]{1,128}", re.ASCII)
_PHONE_NUMBER_ID = re.compile(r"[0-9]{1,32}", re.ASCII)
#: Written in a wa_id by people, removed before it is checked.
_NUMBER_PUNCTUATION = str.maketrans("", "", "+ -")
#: Around a field, ignored (ASCII only: a non-ASCII space is no part of a number).
_SPACE = " \t\r\n"
#: A request's fields; any other is refused (a misspelt one must not be ignored).
FIELDS = frozenset({"phone_number_id", "to", "idempotency_key", "messages"})

#: The sync Redis client ``GET /send/{key}`` reads outcomes with (in a thread: they are several reads).
SYNC_REDIS = web.AppKey("send_sync_redis", redis.Redis)


class RequestRefused(ValueError):
    """The request is not a send request; the message says why (``index`` and Meta's ``code``
    for a message body Meta would refuse)."""

    def __init__(self, reason: str, *, index: int | None = None, code: int | None = None) -> None:
        super().__init__(reason if index is None else f"messages[{index}]: {reason}")
        self.index = index
        self.code = code

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"error": str(self)}
        if self.index is not None:
            answer["index"] = self.index
        if self.code is not None:
            answer["code"] = self.code
        return answer


def recipient(to: object) -> str:
    """The user a request names: a wa_id (1 to 15 ASCII digits, once ``+``, spaces and dashes are
    removed) or a business-scoped user id (``[A-Za-z0-9._-]{1,128}`` with a letter: Meta's begin
    with a country code, ``US.1349…``).

    Raises:
        RequestRefused: it is neither.
    """
    if not isinstance(to, str):
        raise RequestRefused("to must be a string: a wa_id or a business-scoped user id")
    number = to.strip(_SPACE).translate(_NUMBER_PUNCTUATION)
    if _WA_ID.fullmatch(number):
        return number
    if _BSUID.fullmatch(to) and any(c.isalpha() for c in to):
        return to
    raise RequestRefused(
        "to must be a wa_id (1 to 15 digits 0-9; '+', spaces and dashes are ignored) "
        "or a business-scoped user id ([A-Za-z0-9._-], 1 to 128 characters, with a letter)"
    )


def phone_number_id(value: object, settings: Settings) -> str:
    """A business number a request names: digits, and one of ``WAPIPE_PHONE_NUMBER_IDS`` when set.

    Raises:
        RequestRefused: it is not.
    """
    if not isinstance(value, str) or not _PHONE_NUMBER_ID.fullmatch(value.strip(_SPACE)):
        raise RequestRefused("phone_number_id must be the business number's id: 1 to 32 digits 0-9")
    number = value.strip(_SPACE)
    if settings.phone_number_ids is not None and number not in settings.phone_number_ids:
        raise RequestRefused("phone_number_id is not one of WAPIPE_PHONE_NUMBER_IDS")
    return number


def idempotency_key(value: object) -> str:
    """A request's idempotency key: 1 to :data:`MAX_KEY` printable characters.

    Raises:
        RequestRefused: it is not.
    """
    if (
        not isinstance(value, str)
        or not value.strip(_SPACE)
        or len(value) > MAX_KEY
        or not value.isprintable()
    ):
        raise RequestRefused(f"idempotency_key must be a non-empty string of at most {MAX_KEY} characters")
    return value.strip(_SPACE)


def _depth(value: object) -> int:
    """How deep ``value``'s objects and lists nest (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend(
                    (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


def check_body(index: int, body: object) -> None:
    """Refuse ``body``, the ``index``-th message, unless Meta would accept it — and, outside the
    window, the template given with it.

    Raises:
        RequestRefused: naming the index and the rule (Meta's wording and code).
    """
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise RequestRefused("each message must be an object with a type", index=index)
    if any(name in body for name in ("to", "recipient", "messaging_product")):
        raise RequestRefused("a message must not name its recipient: use to", index=index)
    unknown = sorted(name for name in body if name.startswith("wapipe_") and name != OUTSIDE_WINDOW)
    if unknown:
        raise RequestRefused(
            f"{unknown[0]} is no field of a message (wapipe reads only {OUTSIDE_WINDOW})", index=index
        )
    if _depth(body) > MAX_DEPTH:
        raise RequestRefused(f"a message may nest at most {MAX_DEPTH} objects and lists deep", index=index)
    if has_uploads(body):  # a caller must not make the workers read and send their files
        raise RequestRefused(f"{UPLOAD} is for a bot's own messages: send media by id or link", index=index)
    sendable = {name: value for name, value in body.items() if name != OUTSIDE_WINDOW}
    _meta_accepts(index, sendable)
    if OUTSIDE_WINDOW in body:
        fallback = body[OUTSIDE_WINDOW]
        if not isinstance(fallback, dict) or fallback.get("type") != "template":
            raise RequestRefused(f"{OUTSIDE_WINDOW} must be a template message", index=index)
        if any(name.startswith("wapipe_") for name in fallback):
            raise RequestRefused(
                f"{OUTSIDE_WINDOW} is a message as Meta takes it, without wapipe_ fields", index=index
            )
        _meta_accepts(index, fallback, f"{OUTSIDE_WINDOW}: ")
    try:
        size = len(sends.encoded(body))
    except ValueError:  # UnicodeEncodeError: a lone surrogate
        raise RequestRefused(
            "a message's strings must be valid Unicode (no lone surrogates)", index=index
        ) from None
    if size > MAX_MESSAGE_BYTES:
        raise RequestRefused(f"a message's JSON may be at most {MAX_MESSAGE_BYTES} bytes", index=index)


def _meta_accepts(index: int, body: dict[str, Any], where: str = "") -> None:
    refused = send_rules.refusal({"messaging_product": "whatsapp", "to": "+1", **body})
    if refused is not None:
        rule = refused.message if refused.details is None else f"{refused.message}: {refused.details}"
        raise RequestRefused(f"{where}{rule}", index=index, code=refused.code)


def outgoing(request: object, settings: Settings) -> Outgoing:
    """The :class:`Outgoing` a request asks for, once every part of it is checked.

    Raises:
        RequestRefused: naming the first field that is missing or wrong.
    """
    if not isinstance(request, dict):
        raise RequestRefused("the body must be a JSON object")
    unknown = sorted(str(name) for name in request if name not in FIELDS)
    if unknown:
        hint = ": use to" if unknown[0] == "recipient" else ""
        raise RequestRefused(f"{unknown[0]} is no field of a send request{hint}")
    number = phone_number_id(request.get("phone_number_id"), settings)
    to = recipient(request.get("to"))
    key = idempotency_key(request.get("idempotency_key"))
    bodies = request.get("messages")
    if not isinstance(bodies, list) or not 1 <= len(bodies) <= MAX_MESSAGES:
        raise RequestRefused(f"messages must be a list of 1 to {MAX_MESSAGES} message bodies")
    for index, body in enumerate(bodies):
        check_body(index, body)
    return Outgoing(phone_number_id=number, to=to, messages=tuple(bodies), key=key, requested_at=time.time())


def request_fingerprint(request: Outgoing) -> str:
    """What makes two requests the same: the canonical JSON of the number, the user and the messages."""
    canonical = sends.encoded(
        {"phone_number_id": request.phone_number_id, "to": request.to, "messages": list(request.messages)}
    )
    return sends.fingerprint(canonical)


class Accepted(enum.Enum):
    """What became of a request under its key."""

    #: Queued now.
    QUEUED = "queued"
    #: The same request was queued before: nothing more is sent.
    REPLAYED = "replayed"
    #: Another request took the key: refused.
    CONFLICT = "conflict"


def _claims(request: Outgoing, settings: Settings) -> dedup.Claims:
    claims = dedup.Claims()
    mark = keys.seen_send(request.phone_number_id, request.key)
    # A fresh claim id per request: the same key twice is a replay, never "the same attempt".
    owner = sends.mark_value(
        request_fingerprint(request), len(request.messages), request.at, uuid.uuid4().hex
    )
    accepted = journeys.event(
        "edge",
        "done",
        1,
        phone_number_id=request.phone_number_id,
        received_at=round(request.requested_at, 3),
        record_at=request.at,
        messages=len(request.messages),
    )
    claims.add_message(
        mark,
        owner,
        settings.message_dedup_ttl_seconds,
        False,
        message(SEND, request),
        (request.subject, accepted, settings.trace_retention_hours * 3600),
        None,  # claimed by its key's mark: a second request with the key is another time
    )
    return claims


def _verdict(request: Outgoing, fresh: bool, taken: bytes | str | None) -> Accepted:
    if fresh:
        return Accepted.QUEUED
    if taken is None:  # the mark expired between the claim and the read: nothing holds the key now
        return Accepted.REPLAYED
    same = sends.Mark.parse(taken).same_request(request_fingerprint(request))
    return Accepted.REPLAYED if same else Accepted.CONFLICT


def enqueue(client: redis.Redis, request: Outgoing, settings: Settings) -> Accepted:
    """Enqueue ``request`` unless its key was taken."""
    [fresh] = _claims(request, settings).write(client)
    taken = None if fresh else client.get(keys.seen_send(request.phone_number_id, request.key))
    return _verdict(request, fresh, taken)


async def enqueue_async(client: aioredis.Redis, request: Outgoing, settings: Settings) -> Accepted:
    """:func:`enqueue` through ``redis.asyncio``."""
    [fresh] = await _claims(request, settings).write_async(client)
    taken = None if fresh else await client.get(keys.seen_send(request.phone_number_id, request.key))
    return _verdict(request, fresh, taken)


def status(client: redis.Redis, number: str, key: str) -> dict[str, Any] | None:
    """What became of the send under ``key`` on ``number``: ``{"key", "phone_number_id",
    "messages": [outcome…]}``, or None when no request took the key (or it expired)."""
    mark = sends.read_mark(client, number, key)
    if mark is None:
        return None
    return {"key": key, "phone_number_id": number, "messages": sends.outcomes(client, number, key, mark)}


#: The outcomes that end a message.
FINAL = sends.FINAL

_REASONS = {"window": "outside the user's 24-hour window, and no template was given for it"}


def describe(outcome: dict[str, Any]) -> str:
    """One message's outcome (from :func:`status`) as a person reads it."""
    state = outcome["state"]
    if state == sends.SENT:
        line = f"sent as {outcome['id']}" if outcome.get("id") else "sent"
        if outcome.get("status"):
            line += f", {outcome['status']}"
            if outcome.get("error_code") is not None:
                line += f" (error {outcome['error_code']})"
        return line
    if state == sends.REFUSED:
        return f"refused: {_REASONS.get(outcome['reason'], outcome['reason'])}"
    if state == sends.DEAD_LETTERED:
        return f"dead-lettered ({outcome['reason']}): `wapipe dlq show {outcome['dead_letter']}`"
    if state == sends.IN_DOUBT:
        return f"in doubt, it may have been delivered ({outcome['reason']}): `wapipe dlq list`"
    return "being sent" if state == sends.SENDING else "queued"


def _authorised(request: web.Request, expected: bytes) -> bool:
    # Compared as bytes: a header of any characters is a wrong token, never an error. The scheme
    # is case-insensitive (RFC 9110).
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    given = token.encode("utf-8", "surrogatepass")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, expected)


def _unread(request: web.Request, response: web.Response) -> web.Response:
    """``response``, closing the connection after it when the body was not read whole (refused
    before it): the rest is never read, nor the next request taken from its bytes."""
    if not request.content.at_eof():
        response.force_close()
    return response


def _refused(status_code: int, reason: str, **fields: Any) -> web.Response:
    return web.json_response({"error": reason, **fields}, status=status_code)


def routes(settings: Settings, client_of: Callable[[web.Request], aioredis.Redis]) -> list[web.RouteDef]:
    """``POST /send`` and ``GET /send/{key}``; ``client_of(request)`` gives the app's
    ``redis.asyncio`` client (the GET also needs :data:`SYNC_REDIS`, from :func:`lifecycle`)."""
    assert settings.send_token is not None
    expected = settings.send_token.get().encode()

    async def send(request: web.Request) -> web.Response:
        if not _authorised(request, expected):
            log.warning("send_unauthorised")
            return _unread(request, _refused(401, "a bearer token (WAPIPE_SEND_TOKEN) is required"))
        try:
            return _unread(request, await _send(request))
        except web.HTTPException:
            raise  # aiohttp's own answers: 413 over the body limit
        except Exception as error:  # noqa: BLE001 - a bug must not answer a client's bytes with a 500
            log.error(
                "send_failed_unexpectedly",
                extra={"error": type(error).__name__, "traceback": logs.traceback_lines(error)},
            )
            return _refused(503, "unavailable, retry with the same key")

    async def _send(request: web.Request) -> web.Response:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            return _refused(415, "content encoding not supported: send the JSON as it is")
        if request.content_length is not None and request.content_length > settings.max_body_bytes:
            return _refused(
                413, f"a body may be at most WAPIPE_MAX_BODY_BYTES ({settings.max_body_bytes}) bytes"
            )
        try:
            async with asyncio.timeout(settings.body_timeout_seconds):
                raw = await request.read()
        except TimeoutError:
            return _refused(400, "body not received in time")
        try:
            asked = outgoing(envelope.loads(raw.decode("utf-8")), settings)
        except RequestRefused as refused:
            return web.json_response(refused.to_json(), status=400)
        except ValueError:  # UnicodeDecodeError, JSONDecodeError and NotStandardJSON
            return _refused(400, "the body is not JSON")
        try:
            async with asyncio.timeout(settings.redis_timeout_seconds):
                verdict = await enqueue_async(client_of(request), asked, settings)
        except (RedisError, TimeoutError) as error:
            log.error("send_enqueue_failed", extra={"error": type(error).__name__})
            return _refused(503, "queue unavailable, retry with the same key")
        log.info(
            "send_accepted",
            extra={"key": asked.key, "verdict": verdict.value, "messages": len(asked.messages)},
        )
        if verdict is Accepted.CONFLICT:
            return _refused(409, "idempotency_key was used for another request (number, user or messages)")
        replayed = verdict is Accepted.REPLAYED
        return web.json_response(
            {"key": asked.key, "duplicate": replayed},
            status=202,
            headers={"Idempotent-Replayed": "true"} if replayed else None,
        )

    async def outcome(request: web.Request) -> web.Response:
        if not _authorised(request, expected):
            log.warning("send_unauthorised")
            return _refused(401, "a bearer token (WAPIPE_SEND_TOKEN) is required")
        try:
            number = phone_number_id(request.rel_url.query.get("phone_number_id"), settings)
            key = idempotency_key(request.match_info["key"])
        except RequestRefused as refused:
            return web.json_response(refused.to_json(), status=400)
        try:
            async with asyncio.timeout(settings.redis_timeout_seconds * 4):
                found = await asyncio.to_thread(status, request.app[SYNC_REDIS], number, key)
        except (RedisError, TimeoutError) as error:
            log.error("send_status_failed", extra={"error": type(error).__name__})
            return _refused(503, "Redis unavailable, retry later")
        if found is None:
            return _refused(404, "no send with this idempotency_key on this phone_number_id (or it expired)")
        return web.json_response(found)

    return [web.post("/send", send), web.get("/send/{key}", outcome)]


def lifecycle(redis_url: str, settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The ``cleanup_ctx`` owning :data:`SYNC_REDIS`."""

    async def owned(app: web.Application) -> AsyncIterator[None]:
        client = redis.Redis.from_url(
            redis_url,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
        app[SYNC_REDIS] = client
        yield
        client.close()

    return owned

"""The sandbox's chat page: talk to the bot in a browser, as simulated WhatsApp users.

Served only in sandbox mode, to clients on this machine (``GET /sandbox/chat``). The page adds no
shortcut: what a user types, picks or attaches becomes the webhook Meta would send — signed with
the sandbox's app secret and posted to this web's own ``/webhook`` — and the bot's answers are what
the worker sent to the emulated Graph API. The emulator plays the user's phone too: for every
message it accepts it posts ``sent`` and ``delivered`` statuses back to ``/webhook``, and ``read``
once the page has shown the message, so delivery tracking runs as in production.

What the page shows of one user — their messages with ticks, the bot's messages, its reactions and
typing indicator — is a Redis stream per user (``wapipe:sandbox:chat:<user>``), pushed to the page
as server-sent events: every web process serves every user, and a page that lost its web (a
restart) resumes where it stopped, from the last event id the browser sends back.

This is a deliberate view of message content, like ``wapipe simulate``: it is the user's screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from importlib import resources
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import BodyPartReader, web
from redis.exceptions import RedisError

from daemon import simulate
from daemon.config import Settings
from daemon.sandbox import LOOPBACK_HOSTS, LOOPBACK_PEERS, Emulator
from daemon.signature import HEADER, sign
from daemon.store import keys

log = logging.getLogger(__name__)

PREFIX = "/sandbox/chat"
#: What the page's stream of one user keeps (the oldest go first), and how long after its last event.
STREAM_LIMIT = 1000
STREAM_TTL_SECONDS = 7 * 86_400
#: The files of the page, in the package (no build step, no CDN): name → content type.
ASSETS = {"chat.js": "text/javascript", "chat.css": "text/css"}
#: The page's files and what they may load: only this origin (images also from the links a bot sends).
POLICY = (
    "default-src 'self'; img-src 'self' blob: data: http: https:; media-src 'self' http: https:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
#: What a user may type in one message (WhatsApp's own limit).
TEXT_MAX = 65_536
#: How long a page's event stream blocks on Redis at most before it checks its connection.
BLOCK_SECONDS = 10.0
#: Chat pages whose event streams are open at once, each on a Redis connection of the streams'
#: own pool (a page over it is answered 503 and its browser tries again a second later): no
#: number of open pages can take a connection a webhook needs.
MAX_EVENT_STREAMS = 64
#: A quiet stream sends a comment this often, so that a page that went away is noticed.
KEEPALIVE_SECONDS = 15.0
_USER = re.compile(r"^\d{5,20}$")
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
#: The first simulated user's number; the next ones count up.
FIRST_USER = 15550001001
_IMAGES = frozenset({"image/jpeg", "image/png"})


class ChatRefused(Exception):
    """A request the page should not have made: its status and one line for the page."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _json_error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def _user(value: object) -> str:
    if not isinstance(value, str) or not _USER.match(value):
        raise ChatRefused(400, "user: a phone number in digits")
    return value


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _event(kind: str, **fields: Any) -> str:
    return json.dumps({"kind": kind, "at": round(time.time(), 3), **fields}, separators=(",", ":"))


async def append(client: aioredis.Redis, user: str, event: str) -> None:
    """Add ``event`` to ``user``'s stream (capped, expiring :data:`STREAM_TTL_SECONDS` after it)."""
    key = keys.sandbox_chat(user)
    async with client.pipeline(transaction=True) as pipe:
        pipe.xadd(key, {"e": event}, maxlen=STREAM_LIMIT, approximate=True)
        pipe.expire(key, STREAM_TTL_SECONDS)
        await pipe.execute()


class Chat:
    """The chat page's handlers, and the simulated phones' side of the emulator.

    ``redis_of`` finds the app's Redis client at request time; ``emulator`` stores media and knows
    where this web listens (its ``web_url``: the page's webhooks go there).
    """

    def __init__(
        self,
        settings: Settings,
        emulator: Emulator,
        redis_of: Callable[[web.Request], aioredis.Redis],
        redis_url: str,
    ) -> None:
        self.settings = settings
        self.emulator = emulator
        self.redis_of = redis_of
        self.redis_url = redis_url
        self._streams: aioredis.Redis | None = None
        self.open_streams = 0
        self.phone_number_id = simulate.business_number(settings)
        self.block_ms = max(10, int(min(BLOCK_SECONDS, settings.redis_timeout_seconds / 2) * 1000))
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: the client session the simulated phones post webhooks with, and the
        event streams' own Redis connections."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        timeout = self.settings.redis_timeout_seconds
        self._streams = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                self.redis_url,
                max_connections=MAX_EVENT_STREAMS,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
        )
        yield
        await self._streams.aclose()
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.close()

    async def on_shutdown(self, app: web.Application) -> None:
        """End every page's event stream: the browsers reconnect to the next web."""
        self._stopping.set()

    # The simulated phones' side: what the emulator calls.

    async def message_sent(self, client: aioredis.Redis, entry: dict[str, Any]) -> None:
        """The emulator accepted a message to a user: show it on their page; their phone reports
        it ``sent`` and ``delivered``."""
        user = simulate.digits(str(entry["to"]))
        if user is None:
            return
        await append(client, user, _event("out", id=entry["id"], message=entry["message"]))
        number = str(entry["phone_number_id"])
        self._later(self._statuses(number, user, entry["id"], ("sent", "delivered")))

    async def message_read(self, client: aioredis.Redis, message_id: str, typing: bool) -> None:
        """The bot marked an inbound message read (and maybe showed "typing…")."""
        user = await client.get(keys.sandbox_chat_sender(message_id))
        if user is None:
            return
        number = _str(user)
        await append(client, number, _event("status", id=message_id, status="read"))
        if typing:
            await append(client, number, _event("typing", id=message_id))

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the request (a phone reports statuses after Meta answered the send);
        it is cancelled when the web stops."""
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _statuses(
        self, phone_number_id: str, user: str, message_id: str, states: tuple[str, ...]
    ) -> None:
        """Post the statuses of message ``message_id`` (sent from ``phone_number_id``) to ``user``,
        in order, each as a webhook of its own, as Meta does."""
        for state in states:
            status = {
                "id": message_id,
                "status": state,
                "timestamp": str(int(time.time())),
                "recipient_id": user,
            }
            try:
                await self._post(
                    simulate.meta_body(simulate.envelope(phone_number_id, user, statuses=[status]))
                )
            except ChatRefused as refused:
                log.warning("sandbox_status_not_posted", extra={"status": state, "reason": refused.reason})
                return

    async def _post(self, body: bytes) -> None:
        """Post a signed webhook to this web's ``/webhook``, as Meta would."""
        if self._session is None or self.emulator.web_url is None:
            raise ChatRefused(503, "the web is not listening yet")
        headers = {"Content-Type": "application/json", HEADER: sign(body, self.settings.app_secret.get())}
        try:
            async with self._session.post(
                f"{self.emulator.web_url}/webhook", data=body, headers=headers
            ) as answer:
                if answer.status != 200:
                    raise ChatRefused(
                        502, f"/webhook answered {answer.status}: {(await answer.text())[:200]}"
                    )
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ChatRefused(502, f"cannot post to /webhook: {error or type(error).__name__}") from None

    # The page.

    def local(self, request: web.Request) -> None:
        """The page answers only on this machine: a loopback peer, a loopback ``Host`` (no DNS
        rebinding), and for a POST, the page's own origin (no other site's form)."""
        if request.remote not in LOOPBACK_PEERS or request.url.host not in LOOPBACK_HOSTS:
            raise ChatRefused(403, "the chat page answers on this machine only")
        origin = request.headers.get("Origin")
        if request.method == "POST" and origin is not None and origin != f"{request.scheme}://{request.host}":
            raise ChatRefused(403, "the chat page takes requests from its own page only")

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every chat route: this machine only; a refusal is one line of JSON."""
        if not request.path.startswith(PREFIX):
            response: web.StreamResponse = await handler(request)
            return response
        try:
            self.local(request)
            response = await handler(request)
        except ChatRefused as refused:
            return _json_error(refused.status, refused.reason)
        except RedisError as error:
            log.warning("sandbox_chat_redis_error", extra={"error": type(error).__name__})
            return _json_error(503, "Redis is not answering")
        return response

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_asset("chat.html"),
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": POLICY, "Cache-Control": "no-cache"},
        )

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=ASSETS[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})  # fmt: skip

    async def users(self, request: web.Request) -> web.Response:
        """The simulated users, by number; a POST adds one (``{"name": …}``, optional ``number``)."""
        client = self.redis_of(request)
        if request.method == "POST":
            asked = await _json(request)
            name = str(asked.get("name") or "").strip()[:40]
            number = asked.get("number")
            if number is None:
                number = str(FIRST_USER + await client.hlen(keys.SANDBOX_CHAT_USERS))
                while await client.hexists(keys.SANDBOX_CHAT_USERS, number):
                    number = str(int(number) + 1)
            number = _user(number)
            await client.hset(keys.SANDBOX_CHAT_USERS, number, name or f"User {number[-4:]}")
        found = await client.hgetall(keys.SANDBOX_CHAT_USERS)
        listed = sorted((_str(k), _str(v)) for k, v in found.items())
        return web.json_response([{"number": number, "name": name} for number, name in listed])

    async def send(self, request: web.Request) -> web.Response:
        """What the user sent, as Meta's webhook carries it: a text, a location, a reaction, or the
        press of a reply button or list row of a message the bot sent them."""
        asked = await _json(request)
        user = _user(asked.get("user"))
        client = self.redis_of(request)
        kind = asked.get("type")
        message: dict[str, Any]
        if kind == "text":
            text = asked.get("text")
            if not isinstance(text, str) or not text.strip() or len(text) > TEXT_MAX:
                raise ChatRefused(400, f"text: 1 to {TEXT_MAX} characters")
            message = {"type": "text", "text": {"body": text}}
        elif kind == "location":
            try:
                latitude, longitude = float(asked["latitude"]), float(asked["longitude"])
            except (KeyError, TypeError, ValueError):
                raise ChatRefused(400, "location: latitude and longitude, as numbers") from None
            if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
                raise ChatRefused(400, "location: latitude -90..90, longitude -180..180")
            place: dict[str, float | str] = {"latitude": latitude, "longitude": longitude}
            place |= {k: str(asked[k])[:256] for k in ("name", "address") if asked.get(k)}
            message = {"type": "location", "location": place}
        elif kind == "reaction":
            target, emoji = asked.get("message_id"), asked.get("emoji")
            if not isinstance(target, str) or not isinstance(emoji, str) or len(emoji) > 16:
                raise ChatRefused(400, "reaction: message_id and emoji")
            message = {"type": "reaction", "reaction": {"message_id": target, "emoji": emoji}}
        elif kind in ("button", "list"):
            message = await self._choice(client, user, str(kind), asked)
        else:
            raise ChatRefused(400, "type: text, location, reaction, button or list")
        return web.json_response(await self._deliver(client, user, message))

    async def _choice(
        self, client: aioredis.Redis, user: str, kind: str, asked: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``interactive`` reply Meta sends when ``user`` presses reply button / picks list row
        ``asked["id"]`` of the bot's message ``asked["message_id"]`` — only one it offered them."""
        target, wanted = asked.get("message_id"), asked.get("id")
        async for event in _events(client, user):
            if event.get("kind") == "out" and event.get("id") == target:
                context = {"from": self.phone_number_id, "id": str(target)}
                pressed = simulate.choice_reply(event.get("message") or {}, kind, wanted, context)
                if pressed is not None:
                    return pressed
        raise ChatRefused(
            400, f"{kind} {wanted!r}: the bot's message {target!r} to this user offers no such choice"
        )

    async def media(self, request: web.Request) -> web.Response:
        """An image (JPEG or PNG) or a document from the user's disk: stored in the emulator, as
        WhatsApp uploads it, and sent as Meta's webhook describes it (media id, type, hash)."""
        if not request.content_type.startswith("multipart/"):
            raise ChatRefused(400, "media: multipart/form-data with user, file and caption")
        fields: dict[str, str] = {}
        content, mime, filename = b"", "", ""
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                content = bytes(await part.read(decode=False))
                mime = (part.headers.get("Content-Type") or "application/octet-stream").split(";")[0].strip()
                filename = (part.filename or "file")[-120:]
            elif part.name:
                fields[part.name] = (await part.text())[:1024]
            if len(content) > self.emulator.max_upload_bytes:
                raise ChatRefused(413, "media: over the largest upload this sandbox takes")
        user = _user(fields.get("user"))
        if not content:
            raise ChatRefused(400, "media: an empty file")
        client = self.redis_of(request)
        media = await self.emulator.store_media(client, content, mime)
        kind = "image" if mime in _IMAGES else "document"
        part_of: dict[str, Any] = {"id": media["id"], "mime_type": mime, "sha256": media["sha256"]}
        if kind == "document":
            part_of["filename"] = filename
        if fields.get("caption"):
            part_of["caption"] = fields["caption"]
        return web.json_response(await self._deliver(client, user, {"type": kind, kind: part_of}))

    async def _deliver(self, client: aioredis.Redis, user: str, message: dict[str, Any]) -> dict[str, Any]:
        """Show ``message`` on the user's page, post it as Meta's webhook, then mark it delivered."""
        message_id = f"wamid.chat.{uuid.uuid4().hex}"
        message = {"from": user, "id": message_id, "timestamp": str(int(time.time())), **message}
        name = await client.hget(keys.SANDBOX_CHAT_USERS, user)
        await client.set(keys.sandbox_chat_sender(message_id), user, ex=STREAM_TTL_SECONDS)
        await append(client, user, _event("in", id=message_id, message=message))
        body = simulate.envelope(
            self.phone_number_id, user, message, name=simulate.SIMULATED_NAME if name is None else _str(name)
        )
        try:
            await self._post(simulate.meta_body(body))
        except ChatRefused as refused:
            await append(
                client, user, _event("status", id=message_id, status="failed", reason=refused.reason)
            )
            raise
        await append(client, user, _event("status", id=message_id, status="delivered"))
        return {"id": message_id}

    async def read(self, request: web.Request) -> web.Response:
        """The page showed the bot's messages ``ids`` to the user: their phone reports them read."""
        asked = await _json(request)
        user = _user(asked.get("user"))
        ids = asked.get("ids")
        if (
            not isinstance(ids, list)
            or not all(isinstance(i, str) and len(i) <= 256 for i in ids)
            or len(ids) > 100
        ):
            raise ChatRefused(400, "ids: up to 100 message ids")
        for message_id in ids:
            self._later(self._statuses(self.phone_number_id, user, message_id, ("read",)))
        return web.json_response({"read": len(ids)})

    async def media_content(self, request: web.Request) -> web.Response:
        """A stored medium (what a user attached, what the bot uploaded), for the page's previews."""
        stored = await self.emulator.load_media(self.redis_of(request), request.match_info["media_id"])
        if stored is None:
            raise ChatRefused(404, "no such media")
        return web.Response(body=stored[0], content_type=stored[1],
                            headers={"Content-Security-Policy": "default-src 'none'", "X-Content-Type-Options": "nosniff"})  # fmt: skip

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``user``'s stream as server-sent events: from the event after ``Last-Event-ID`` (the
        browser sends it back when it reconnects), else from the start; then as they happen."""
        user = _user(request.query.get("user"))
        last = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
        if last != "0" and not _EVENT_ID.match(last):
            raise ChatRefused(400, "Last-Event-ID: a stream id")
        if self.open_streams >= MAX_EVENT_STREAMS or self._streams is None:
            log.warning("sandbox_chat_streams_full", extra={"open": self.open_streams})
            raise ChatRefused(503, f"{MAX_EVENT_STREAMS} chat pages are open already: close one")
        self.open_streams += 1
        try:
            return await self._stream(request, self._streams, user, last)
        finally:
            self.open_streams -= 1

    async def _stream(
        self, request: web.Request, client: aioredis.Redis, user: str, last: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        key = keys.sandbox_chat(user)
        with contextlib.suppress(ConnectionResetError):
            await response.write(b"retry: 1000\n\n")
            written = time.monotonic()
            while not self._stopping.is_set():
                found: Any = await client.xread({key: last}, count=200, block=self.block_ms)
                if not found:
                    if time.monotonic() - written >= KEEPALIVE_SECONDS:  # a gone page shows here
                        await response.write(b": idle\n\n")
                        written = time.monotonic()
                    continue
                chunk = []
                for event_id, fields in found[0][1]:
                    last = _str(event_id)
                    chunk.append(f"id: {last}\ndata: {_str(fields[b'e'])}\n\n")
                await response.write("".join(chunk).encode())
                written = time.monotonic()
        return response


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        asked = await request.json()
    except ValueError:
        raise ChatRefused(400, "the body must be JSON") from None
    if not isinstance(asked, dict):
        raise ChatRefused(400, "the body must be a JSON object")
    return asked


async def _events(client: aioredis.Redis, user: str) -> AsyncIterator[dict[str, Any]]:
    """``user``'s events, newest first."""
    found: Any = await client.xrevrange(keys.sandbox_chat(user), count=STREAM_LIMIT)
    for _, fields in found:
        yield json.loads(fields[b"e"])


def _asset(name: str) -> bytes:
    return resources.files("daemon").joinpath("chat", name).read_bytes()


def mount(app: web.Application, chat: Chat) -> None:
    """Add the page's routes, its guard, and its lifecycle."""
    app.middlewares.append(chat.guard)
    app.cleanup_ctx.append(chat.lifecycle)
    app.on_shutdown.append(chat.on_shutdown)
    app.router.add_get(PREFIX, chat.page)
    app.router.add_get(f"{PREFIX}/assets/{{name}}", chat.asset)
    app.router.add_get(f"{PREFIX}/api/users", chat.users)
    app.router.add_post(f"{PREFIX}/api/users", chat.users)
    app.router.add_post(f"{PREFIX}/api/send", chat.send)
    app.router.add_post(f"{PREFIX}/api/media", chat.media)
    app.router.add_post(f"{PREFIX}/api/read", chat.read)
    app.router.add_get(f"{PREFIX}/api/media/{{media_id}}", chat.media_content)
    app.router.add_get(f"{PREFIX}/api/events", chat.events)

"""Sandbox mode: an emulated Graph API under ``/sandbox/graph`` and ``GET /sandbox/outbox``.

Mounted only in sandbox mode (no Meta setting at all). It answers what the worker calls — send,
mark read, media URL, media download — plus media upload (for ``wapipe simulate --image``), the
way Meta's Graph API does — refusing what Meta refuses, with Meta's codes
(:mod:`daemon.send_rules`) — and keeps what it was sent in Redis so that every web process sees
the same outbox and it survives a restart. It also plays the users' phones
(:mod:`daemon.sandbox_chat`): the chat page shows what they were sent, and their delivery
statuses come back to ``/webhook``.

Its bearer token is random, made when the web starts and recorded with its address in Redis
(:mod:`daemon.sandbox_link`): only the processes of this deployment can use it. Every answer under
``/sandbox/`` carries a proof of that token, and ``/sandbox/identity`` answers a challenge with it.
The outbox holds users' numbers and texts: it answers loopback clients and holders of the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from aiohttp import BodyPartReader, web

from daemon import fake_graph
from daemon.config import SANDBOX_GRAPH_PATH
from daemon.sandbox_link import IDENTITY_PATH, IN_REPLY_TO_HEADER, PROOF_HEADER, new_token, proof
from daemon.store import keys

if TYPE_CHECKING:
    from daemon.sandbox_chat import Chat

OUTBOX_KEY = keys.SANDBOX_OUTBOX
#: The outbox keeps the most recent entries only.
OUTBOX_LIMIT = 1000
#: Uploaded media lives as long as Meta keeps uploads (30 days).
MEDIA_TTL_SECONDS = 30 * 86_400
#: The addresses a client on this machine connects from.
LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
#: The names a request to this machine's loopback may give in its ``Host``: any other name on a
#: loopback connection is a page of another site whose name was rebound to 127.0.0.1.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _error(status: int, code: int, message: str, details: str | None = None) -> web.Response:
    body = fake_graph.error_body(code, message, details=details, fbtrace_id="sandbox")
    return web.json_response(body, status=status)


class Emulator:
    """The emulated Graph API's handlers; ``redis_of`` finds the app's Redis client at request time.

    :attr:`web_url` is where the web listens (set once it does); media URLs point there.
    """

    def __init__(
        self,
        redis_of: Callable[[web.Request], aioredis.Redis],
        max_upload_bytes: int,
        token: str | None = None,
    ) -> None:
        self.redis_of = redis_of
        self.max_upload_bytes = max_upload_bytes
        self.token = token or new_token()
        self.web_url: str | None = None
        #: The chat page's side of the simulated phones (:mod:`daemon.sandbox_chat`), once mounted.
        self.chat: Chat | None = None
        self._proof = proof(self.token)

    def authorised(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
        return hmac.compare_digest(given, f"Bearer {self.token}".encode())

    def named_here(self, request: web.Request) -> bool:
        """Whether the request names this machine in its ``Host``: a loopback name, or the host the
        workers reach this web at (``web_url``) — not a rebound name of another site."""
        own = urlsplit(self.web_url).hostname if self.web_url else None
        return request.url.host in LOOPBACK_HOSTS or (own is not None and request.url.host == own)

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every ``/sandbox/`` route but the chat page's (which has its own guard): a request without
        the emulator's token must name this machine (no DNS rebinding of the outbox or the identity)."""
        path = request.path
        guarded = path.startswith("/sandbox/") and not path.startswith("/sandbox/chat")
        if guarded and not self.authorised(request) and not self.named_here(request):
            return _error(403, 10, "The sandbox answers requests naming this machine only")
        response: web.StreamResponse = await handler(request)
        return response

    async def sign_response(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: every answer under ``/sandbox/`` proves it comes from this emulator."""
        if request.path.startswith("/sandbox/"):
            response.headers[PROOF_HEADER] = self._proof

    async def identity(self, request: web.Request) -> web.Response:
        """Answer a challenge with HMAC(token, challenge): proof without showing the token."""
        challenge = request.rel_url.query.get("challenge", "")
        if not 8 <= len(challenge) <= 128:
            return web.json_response({"error": "challenge must be 8 to 128 characters"}, status=400)
        return web.json_response({"proof": proof(self.token, challenge)})

    async def messages(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return _error(*fake_graph.TOKEN_REFUSED)
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 100, "Invalid parameter: body is not JSON")
        refused = fake_graph.check_send(body)
        if refused is not None:
            return _error(refused.status, refused.code, refused.message, refused.details)
        phone_number_id = request.match_info["phone_number_id"]
        if body.get("status") == "read":
            await self._record(
                request,
                {"kind": "read", "phone_number_id": phone_number_id, "message_id": body.get("message_id")},
            )
            if self.chat is not None:
                typing = body.get("typing_indicator") is not None
                await self.chat.message_read(self.redis_of(request), str(body["message_id"]), typing)
            return web.json_response(fake_graph.READ_ANSWER)
        recipient = fake_graph.recipient_of(body)
        out_id = f"wamid.sandbox.{uuid.uuid4().hex}"
        entry = {"kind": "message", "id": out_id, "phone_number_id": phone_number_id, "message": body}
        in_reply_to = request.headers.get(IN_REPLY_TO_HEADER)
        if in_reply_to:
            entry["in_reply_to"] = in_reply_to[:256]
        await self._record(request, entry)
        if self.chat is not None:
            await self.chat.message_sent(self.redis_of(request), {**entry, "to": recipient})
        return web.json_response(fake_graph.send_answer(recipient, out_id))

    async def _record(self, request: web.Request, entry: dict[str, Any]) -> None:
        entry["at"] = time.time()
        async with self.redis_of(request).pipeline(transaction=True) as pipe:
            pipe.rpush(OUTBOX_KEY, json.dumps(entry))
            pipe.ltrim(OUTBOX_KEY, -OUTBOX_LIMIT, -1)
            await pipe.execute()

    async def media_info(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return _error(*fake_graph.TOKEN_REFUSED)
        media_id = request.match_info["media_id"]
        stored = await self.redis_of(request).hmget(
            keys.sandbox_media(media_id), "mime_type", "sha256", "size"
        )
        if stored[0] is None:
            return _error(*fake_graph.UNKNOWN_MEDIA)
        mime, sha256, size = (_text(value) for value in stored)
        path = f"{SANDBOX_GRAPH_PATH}/media-download/{media_id}"
        url = f"{self.web_url}{path}" if self.web_url else str(request.url.with_path(path).with_query(None))
        return web.json_response(
            fake_graph.media_info_answer(media_id, url, mime, sha256=sha256, size=int(size))
        )

    async def media_download(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return web.Response(status=401)
        stored = await self.load_media(self.redis_of(request), request.match_info["media_id"])
        if stored is None:
            return web.Response(status=404)
        return web.Response(body=stored[0], content_type=stored[1])

    async def load_media(self, client: aioredis.Redis, media_id: str) -> tuple[bytes, str] | None:
        """A stored medium's content and MIME type (without parameters), or None when unknown."""
        content, mime = await client.hmget(keys.sandbox_media(media_id), "content", "mime_type")
        if not isinstance(content, bytes):
            return None
        return content, (_text(mime) or "application/octet-stream").split(";")[0]

    async def media_upload(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return _error(*fake_graph.TOKEN_REFUSED)
        if not request.content_type.startswith("multipart/"):
            return _error(400, 100, "Invalid parameter: expected multipart/form-data")
        content: bytes | None = None
        mime: str | None = None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file":
                content = bytes(await part.read(decode=False))
                mime = mime or part.headers.get("Content-Type")
            elif part.name == "type":
                mime = (await part.text()).strip()
            if content is not None and len(content) > self.max_upload_bytes:
                return _error(400, 131053, "Media upload error: file too large")
        if content is None or not mime:
            return _error(400, 131008, "Required parameter is missing: file and type")
        media = await self.store_media(self.redis_of(request), content, mime)
        return web.json_response({"id": media["id"]})

    async def store_media(self, client: aioredis.Redis, content: bytes, mime: str) -> dict[str, str]:
        """Keep an uploaded medium as Meta does (for 30 days); its new ``id`` and its ``sha256`` as
        an inbound webhook gives it (base64)."""
        media_id = str(uuid.uuid4().int)[:16]
        key = keys.sandbox_media(media_id)
        digest = hashlib.sha256(content)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "content": content,
                    "mime_type": mime,
                    "sha256": digest.hexdigest(),
                    "size": len(content),
                },
            )
            pipe.expire(key, MEDIA_TTL_SECONDS)
            await pipe.execute()
        return {"id": media_id, "sha256": base64.b64encode(digest.digest()).decode()}

    async def outbox(self, request: web.Request) -> web.Response:
        """What the deployment sent, oldest first: for loopback clients and holders of the token."""
        if request.remote not in LOOPBACK_PEERS and not self.authorised(request):
            return _error(403, 10, "The outbox answers clients on this machine only")
        entries = [json.loads(raw) for raw in await self.redis_of(request).lrange(OUTBOX_KEY, 0, -1)]
        return web.json_response(entries)


def mount(app: web.Application, emulator: Emulator) -> None:
    """Add the emulator's routes (the download route first: it is more specific), behind
    :meth:`Emulator.guard`."""
    prefix = SANDBOX_GRAPH_PATH
    app.middlewares.append(emulator.guard)
    app.on_response_prepare.append(emulator.sign_response)
    app.router.add_get(IDENTITY_PATH, emulator.identity)
    app.router.add_get(f"{prefix}/media-download/{{media_id}}", emulator.media_download)
    app.router.add_post(f"{prefix}/{{version}}/{{phone_number_id}}/messages", emulator.messages)
    app.router.add_post(f"{prefix}/{{version}}/{{phone_number_id}}/media", emulator.media_upload)
    app.router.add_get(f"{prefix}/{{version}}/{{media_id}}", emulator.media_info)
    app.router.add_get("/sandbox/outbox", emulator.outbox)

"""A fake Graph API: an aiohttp server on an ephemeral loopback port, in a thread of its own.

Its answers are the shared core's (:mod:`daemon.fake_graph`). It records every request and can be
scripted to fail: per kind of call (``send``, ``read``,
``media_info``, ``download``), a queue of :class:`Reply` is consumed before the normal answer.
Usable from sync tests and from worker subprocesses alike.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from daemon import fake_graph as core
from tests.support.waiting import wait_for


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a status and JSON body (or ``raw`` bytes), after ``delay`` seconds;
    ``drop`` cuts the connection."""

    status: int = 200
    body: dict[str, Any] | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    raw: bytes | None = None


def graph_error(code: int, status: int = 400, message: str = "error", **extra: Any) -> Reply:
    """A Graph error object as Meta sends it (docs/whatsapp.md, *Error codes*)."""
    body = core.error_body(code, message, details=f"details of {code}", fbtrace_id=f"trace-{code}")
    return Reply(status=status, body=body, **extra)


@dataclass(frozen=True)
class Recorded:
    kind: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    at: float = 0.0
    #: The client's address and port: one per connection.
    peer: str = ""


def media_bytes(media_id: str) -> bytes:
    """What the fixtures say media ``media_id`` contains."""
    return f"fixture media {media_id}\n".encode()


class FakeGraph:
    def __init__(self, version: str = "v25.0") -> None:
        self.version = version
        self.requests: list[Recorded] = []
        self.scripts: dict[str, deque[Reply]] = {}
        self.media: dict[str, tuple[bytes, str]] = {}
        self.chunked: set[str] = set()
        self.cut: dict[str, int] = {}
        self.drip: dict[str, float] = {}
        #: Seconds every unscripted send waits before it is answered (messages stay "in flight").
        self.send_delay = 0.0
        self._site: web.TCPSite | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-graph", daemon=True)
        self.port = 0

    # --- control -----------------------------------------------------------------------
    def start(self) -> FakeGraph:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, kind: str, *replies: Reply) -> None:
        """Answer the next calls of ``kind`` with ``replies``, in order, then normally."""
        with self._lock:
            self.scripts.setdefault(kind, deque()).extend(replies)

    def add_media(
        self,
        media_id: str,
        content: bytes | None = None,
        mime_type: str = "image/jpeg",
        *,
        chunked: bool = False,
        cut_after: int | None = None,
        drip_seconds: float | None = None,
    ) -> None:
        """Serve ``content`` (default: the fixtures' bytes) for ``media_id``; ``chunked``: no
        Content-Length; ``cut_after``: announce the whole length, close after that many bytes;
        ``drip_seconds``: send one byte at a time, this far apart."""
        with self._lock:
            self.media[media_id] = (media_bytes(media_id) if content is None else content, mime_type)
            if chunked:
                self.chunked.add(media_id)
            if cut_after is not None:
                self.cut[media_id] = cut_after
            if drip_seconds is not None:
                self.drip[media_id] = drip_seconds

    def of_kind(self, kind: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    def sends(self) -> list[Recorded]:
        return self.of_kind("send")

    def wait_sends(self, count: int, timeout: float = 20.0) -> list[Recorded]:
        return wait_for(
            lambda: len(self.sends()) >= count and self.sends(), timeout=timeout, what=f"{count} sends"
        )

    # --- server ------------------------------------------------------------------------
    async def _start(self) -> None:
        app = web.Application()
        v = self.version
        app.router.add_post(f"/{v}/{{phone_number_id}}/messages", self._messages)
        app.router.add_post(f"/{v}/{{phone_number_id}}/media", self._upload)
        app.router.add_get(f"/{v}/{{media_id}}", self._media_info)
        app.router.add_get("/download/{media_id}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self._listen(0)

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        assert server is not None
        assert server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def refuse_connections(self) -> None:
        """Close the listening socket and every open connection: nothing can be delivered."""
        asyncio.run_coroutine_threadsafe(self._refuse(), self._loop).result(timeout=10)

    async def _refuse(self) -> None:
        assert self._site is not None
        assert self._runner is not None
        await self._site.stop()
        server = self._runner.server
        if server is not None:
            for connection in list(server.connections):
                connection.force_close()

    def accept_connections(self) -> None:
        """Listen again on the same port."""
        asyncio.run_coroutine_threadsafe(self._listen(self.port), self._loop).result(timeout=10)

    async def _record(self, kind: str, request: web.Request, body: Any) -> Reply | None:
        with self._lock:
            self.requests.append(
                Recorded(
                    kind,
                    request.method,
                    request.path,
                    dict(request.query),
                    dict(request.headers),
                    body,
                    time.time(),
                    str(request.transport.get_extra_info("peername") if request.transport else ""),
                )
            )
            queue = self.scripts.get(kind)
            scripted = queue.popleft() if queue else None
        delay = scripted.delay if scripted is not None else self.send_delay if kind == "send" else 0.0
        if delay:
            await asyncio.sleep(delay)
        return scripted

    @staticmethod
    def _answer(request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.drop:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if reply.raw is not None:
            return web.Response(body=reply.raw or None, status=reply.status, headers=reply.headers)
        return web.json_response(reply.body or {}, status=reply.status, headers=reply.headers)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        kind = core.route("POST", request.path, body).kind
        scripted = await self._record(kind, request, body)
        if scripted is not None:
            return self._answer(request, scripted)
        if kind == "read":
            return web.json_response(core.READ_ANSWER)
        return web.json_response(core.send_answer(core.recipient_of(body), f"wamid.out.{next(self._ids)}"))

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        """``POST /{phone_number_id}/media``: recorded with its form fields (the file's bytes under
        ``file``, its part's Content-Type under ``file_type``); the upload is then served as media."""
        fields: dict[str, Any] = {}
        async for part in await request.multipart():
            if isinstance(part, BodyPartReader) and part.name:
                if part.filename is not None:
                    fields["file"] = bytes(await part.read(decode=False))
                    fields["file_type"] = part.headers.get("Content-Type")
                    fields["filename"] = part.filename
                else:
                    fields[part.name] = await part.text()
        scripted = await self._record("media_upload", request, fields)
        if scripted is not None:
            return self._answer(request, scripted)
        media_id = f"upload.{next(self._ids)}"
        with self._lock:
            self.media[media_id] = (fields.get("file", b""), str(fields.get("type")))
        return web.json_response({"id": media_id})

    async def _media_info(self, request: web.Request) -> web.StreamResponse:
        media_id = request.match_info["media_id"]
        if "fields" in request.query:  # a node read, as `wapipe check` makes (GET /me, /{phone number id})
            scripted = await self._record("node", request, None)
            if scripted is not None:
                return self._answer(request, scripted)
            return web.json_response({"id": media_id if media_id != "me" else "1000"})
        scripted = await self._record("media_info", request, None)
        if scripted is not None:
            return self._answer(request, scripted)
        with self._lock:
            stored = self.media.get(media_id)
        if stored is None:
            return self._answer(request, graph_error(100, 400, "Invalid parameter"))
        content, mime = stored
        return web.json_response(
            core.media_info_answer(media_id, f"{self.url}/download/{media_id}", mime, content)
        )

    async def _download(self, request: web.Request) -> web.StreamResponse:
        media_id = request.match_info["media_id"]
        scripted = await self._record("download", request, None)
        if scripted is not None:
            return self._answer(request, scripted)
        with self._lock:
            stored = self.media.get(media_id)
        if stored is None:
            return web.Response(status=404)
        content, mime = stored
        if media_id in self.cut or media_id in self.drip:
            return await self._partial(request, media_id, content, mime)
        if media_id not in self.chunked:
            return web.Response(body=content, content_type=mime.split(";")[0])
        response = web.StreamResponse(headers={"Content-Type": mime.split(";")[0]})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for start in range(0, len(content), 16_384):
                await response.write(content[start : start + 16_384])
        except ConnectionResetError:
            return response  # the client stopped reading, as it should past its cap
        await response.write_eof()
        return response

    async def _partial(
        self, request: web.Request, media_id: str, content: bytes, mime: str
    ) -> web.StreamResponse:
        """The whole length announced, then either a cut after ``cut[media_id]`` bytes or a drip."""
        response = web.StreamResponse(headers={"Content-Type": mime.split(";")[0]})
        response.content_length = len(content)
        await response.prepare(request)
        try:
            if media_id in self.cut:
                await response.write(content[: self.cut[media_id]])
            else:
                for offset in range(len(content)):
                    if request.transport is None or request.transport.is_closing():
                        return response  # the client gave up
                    await response.write(content[offset : offset + 1])
                    await asyncio.sleep(self.drip[media_id])
                return response
        except ConnectionResetError:
            return response
        assert request.transport is not None
        request.transport.close()  # the connection ends before the announced length
        return response


def b64_sha256(content: bytes) -> str:
    return base64.b64encode(hashlib.sha256(content).digest()).decode()


def sent_json(record: Recorded) -> dict[str, Any]:
    assert isinstance(record.json, dict)
    return json.loads(json.dumps(record.json))

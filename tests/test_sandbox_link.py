"""The sandbox fails closed: workers use only their own deployment's emulator, proven, never a
stranger on a port, and fetch emulator media only from the emulator's own address."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestServer

from daemon.config import Settings
from daemon.graph import Endpoint, GraphClient, GraphUnreachable, MediaRefused, emulator_endpoint
from daemon.sandbox_link import RECORD_KEY, Announcer, EmulatorLink, EmulatorNotFound, EmulatorRecord, read
from daemon.store.media import TempFile
from daemon.web import EMULATOR, REDIS, advertised_url, make_app
from tests.support.procs import base_env
from tests.support.waiting import free_port


class Stranger:
    """Some other program on a loopback port: answers 200 to anything and records what it got."""

    def __init__(self) -> None:
        seen: list[tuple[str, str, dict[str, str]]] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                seen.append((self.command, self.path, dict(self.headers)))
                body = b'{"messages": [{"id": "wamid.stranger"}], "proof": "nope"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stranger() -> Iterator[Stranger]:
    server = Stranger()
    yield server
    server.close()


def sandbox_settings() -> Settings:
    return Settings.from_env(base_env(WAPIPE_GRAPH_ATTEMPTS="1"))


def test_a_record_pointing_at_a_stranger_is_refused_before_anything_is_sent(
    redis_url: str, rclient: redis.Redis, stranger: Stranger
) -> None:
    """The record in Redis names a server that cannot prove it holds the token (a program that took
    the web's port): the worker treats the emulator as unreachable and sends that server neither the
    reply nor the token, only the identity challenge."""
    record = EmulatorRecord(web_url=stranger.url, token="t" * 48)
    rclient.set(RECORD_KEY, record.encode())
    link = EmulatorLink(redis.Redis.from_url(redis_url), timeout=2)
    with pytest.raises(EmulatorNotFound, match="is not this deployment's sandbox emulator"):
        link.current()
    client = GraphClient(sandbox_settings(), endpoint=emulator_endpoint(link, "v25.0"))
    try:
        with pytest.raises(GraphUnreachable):
            client.send_message("1", {"type": "text", "to": "+1", "text": {"body": "private"}})
    finally:
        client.close()
        link.close()
    assert [method for method, _, _ in stranger.seen] == ["GET", "GET"]
    assert all(path.startswith("/sandbox/identity?challenge=") for _, path, _ in stranger.seen)
    assert all("t" * 48 not in str(headers) for _, _, headers in stranger.seen)


def test_no_record_means_no_emulator(redis_url: str) -> None:
    """Nothing recorded (no sandbox web running): unreachable, with a hint, nothing guessed from PORT."""
    link = EmulatorLink(redis.Redis.from_url(redis_url), timeout=2)
    with pytest.raises(EmulatorNotFound, match="is `wapipe web` running"):
        link.current()
    link.close()


@pytest.fixture
async def sandbox_web(redis_url: str) -> AsyncIterator[Announcer]:
    """A sandbox web app serving its emulator on a free port, and the announcer of its record
    (not started): the test starts and stops it."""
    app = make_app(sandbox_settings(), redis_url)
    server = TestServer(app)
    await server.start_server()
    emulator = app[EMULATOR]
    emulator.web_url = advertised_url("127.0.0.1", server.port)
    yield Announcer(app[REDIS], EmulatorRecord(emulator.web_url, emulator.token))
    await server.close()


async def test_the_webs_own_emulator_is_found_proven_and_used(
    redis_url: str, rclient: redis.Redis, stranger: Stranger, tmp_path: Path, sandbox_web: Announcer
) -> None:
    """A sandbox web announces itself; the worker's link verifies it and sends there with its token;
    an answer that lacks the emulator's proof (a stranger now on that address) counts as not sent;
    media may be fetched from the emulator's own address only, never another loopback port."""
    announcer = sandbox_web
    web_url = announcer.record.web_url
    assert await announcer.start()
    sync = redis.Redis.from_url(redis_url)
    link = EmulatorLink(sync, timeout=2)
    client = GraphClient(sandbox_settings(), endpoint=emulator_endpoint(link, "v25.0"))
    try:
        assert (await asyncio.to_thread(link.current)).web_url == web_url
        body = {"messaging_product": "whatsapp", "type": "text", "to": "+1", "text": {"body": "hi"}}
        result = await asyncio.to_thread(client.send_message, "1", body, in_reply_to="wamid.X")
        assert result.message_id is not None
        assert result.message_id.startswith("wamid.sandbox.")
        endpoint: Endpoint = await asyncio.to_thread(client.endpoint)
        assert endpoint.media_allowed(f"{web_url}/sandbox/graph/media-download/1")
        assert not endpoint.media_allowed(f"{stranger.url}/sandbox/graph/media-download/1")
        assert not endpoint.media_allowed(web_url.replace("127.0.0.1", "localhost") + "/x")
        sink = TempFile(tmp_path)
        try:
            with pytest.raises(MediaRefused):
                await asyncio.to_thread(client.download, f"{stranger.url}/media", sink, max_bytes=100)
        finally:
            sink.discard()
        assert stranger.seen == []

        # The web is gone and a stranger answers at the address the worker already verified.
        proven_only = Endpoint(base=f"{stranger.url}/sandbox/graph/v25.0", token="x", proof=endpoint.proof)
        impostor = GraphClient(sandbox_settings(), endpoint=lambda: proven_only)
        try:
            with pytest.raises(GraphUnreachable, match="without its proof"):
                await asyncio.to_thread(impostor.send_message, "1", body)
        finally:
            impostor.close()
    finally:
        client.close()
        link.close()
        await announcer.stop()
        assert read(rclient) is None  # withdrawn at stop


async def test_a_second_web_defers_to_a_live_one_and_replaces_a_dead_ones_record(
    redis_url: str, rclient: redis.Redis, sandbox_web: Announcer
) -> None:
    """Two sandbox webs on one Redis: the second leaves the record of the first while the first
    proves itself (workers keep one emulator) and withdraws only its own; a record whose web no
    longer answers (killed, then restarted with a new token) is replaced at once."""
    live = sandbox_web
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await live.start()
        second = Announcer(client, EmulatorRecord("http://127.0.0.1:2", "b" * 48))
        assert not await second.start()
        await second.stop()
        assert read(rclient) == live.record
        await live.stop()
        rclient.set(RECORD_KEY, EmulatorRecord(f"http://127.0.0.1:{free_port()}", "c" * 48).encode())
        successor = Announcer(client, EmulatorRecord("http://127.0.0.1:3", "d" * 48))
        assert await successor.start()
        assert read(rclient) == successor.record
        await successor.stop()
        assert read(rclient) is None
    finally:
        await client.aclose()

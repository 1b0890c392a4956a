"""The sandbox Graph API emulator, in-process against a real Redis."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from daemon.config import Settings
from daemon.web import make_app
from tests.support.procs import base_env

AUTH = {"Authorization": "Bearer sandbox"}


@pytest.fixture
async def sandbox(redis_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings.from_env(base_env(PORT="8080"))
    assert settings.sandbox
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(settings, redis_url)))
    await client.start_server()
    yield client
    await client.close()


async def test_sends_and_reads_are_kept_in_the_outbox(sandbox: TestClient[Any, Any]) -> None:
    """A send answers like Meta (a new message id) and, with read receipts, lands in /sandbox/outbox."""
    body = {"messaging_product": "whatsapp", "to": "+15550001234", "type": "text", "text": {"body": "hi"}}
    async with sandbox.post("/sandbox/graph/v25.0/123/messages", json=body, headers=AUTH) as response:
        assert response.status == 200
        answer = await response.json()
    out_id = answer["messages"][0]["id"]
    assert answer["contacts"] == [{"input": "+15550001234", "wa_id": "15550001234"}]
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in"}
    async with sandbox.post("/sandbox/graph/v25.0/123/messages", json=read, headers=AUTH) as response:
        assert await response.json() == {"success": True}
    async with sandbox.get("/sandbox/outbox") as response:
        outbox = await response.json()
    assert [e["kind"] for e in outbox] == ["message", "read"]
    assert outbox[0]["id"] == out_id
    assert outbox[0]["message"] == body
    assert outbox[0]["phone_number_id"] == "123"


async def test_the_emulator_wants_the_sandbox_token_and_valid_bodies(sandbox: TestClient[Any, Any]) -> None:
    """Without the sandbox bearer token: 401 code 190; a body without recipient: 400 with a Graph error."""
    body = {"messaging_product": "whatsapp", "to": "+1", "type": "text", "text": {"body": "x"}}
    async with sandbox.post("/sandbox/graph/v25.0/1/messages", json=body) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == 190
    bad = {"messaging_product": "whatsapp", "type": "text"}
    async with sandbox.post("/sandbox/graph/v25.0/1/messages", json=bad, headers=AUTH) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == 131008


async def test_media_upload_lookup_and_download_round_trip(sandbox: TestClient[Any, Any]) -> None:
    """Upload returns an id; GET /{id} gives url, mime type, hex sha256 and size; the url serves the bytes."""
    content = b"\x89PNG not really"
    form = aiohttp.FormData()
    form.add_field("messaging_product", "whatsapp")
    form.add_field("type", "image/png")
    form.add_field("file", content, filename="x.png", content_type="image/png")
    async with sandbox.post("/sandbox/graph/v25.0/1/media", data=form, headers=AUTH) as response:
        assert response.status == 200
        media_id = (await response.json())["id"]
    async with sandbox.get(f"/sandbox/graph/v25.0/{media_id}", headers=AUTH) as response:
        info = await response.json()
    assert info["mime_type"] == "image/png"
    assert info["sha256"] == hashlib.sha256(content).hexdigest()
    assert info["file_size"] == str(len(content))
    path = aiohttp.client.URL(info["url"]).path
    async with sandbox.get(path, headers=AUTH) as response:
        assert await response.read() == content
    async with sandbox.get("/sandbox/graph/v25.0/999", headers=AUTH) as response:
        assert (await response.json())["error"]["code"] == 100


async def test_the_emulator_is_not_mounted_outside_sandbox_mode(redis_url: str) -> None:
    """With an access token set, /sandbox/* does not exist."""
    settings = Settings.from_env(
        base_env(WHATSAPP_ACCESS_TOKEN="t", WHATSAPP_APP_SECRET="s", WHATSAPP_VERIFY_TOKEN="v")
    )
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(settings, redis_url)))
    await client.start_server()
    try:
        for path in ("/sandbox/outbox", "/sandbox/graph/v25.0/1"):
            async with client.get(path) as response:
                assert response.status == 404
    finally:
        await client.close()

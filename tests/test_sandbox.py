"""The sandbox Graph API emulator, in-process against a real Redis."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from daemon.config import Settings
from daemon.sandbox_link import IN_REPLY_TO_HEADER, PROOF_HEADER, proof
from daemon.web import EMULATOR, make_app
from tests.support.procs import base_env

AUTH: dict[str, str] = {}


@pytest.fixture
async def sandbox(redis_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings.from_env(base_env(PORT="8080"))
    assert settings.sandbox
    app = make_app(settings, redis_url)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    AUTH["Authorization"] = f"Bearer {app[EMULATOR].token}"
    yield client
    await client.close()


async def test_sends_and_reads_are_kept_in_the_outbox(sandbox: TestClient[Any, Any]) -> None:
    """A send answers like Meta (a new message id) and, with read receipts, lands in /sandbox/outbox,
    with the inbound message it answers when the worker names it."""
    body = {"messaging_product": "whatsapp", "to": "+15550001234", "type": "text", "text": {"body": "hi"}}
    headers = {**AUTH, IN_REPLY_TO_HEADER: "wamid.in"}
    async with sandbox.post("/sandbox/graph/v25.0/123/messages", json=body, headers=headers) as response:
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
    assert outbox[0]["in_reply_to"] == "wamid.in"


async def test_the_emulator_proves_who_it_is_without_showing_its_token(sandbox: TestClient[Any, Any]) -> None:
    """/sandbox/identity answers a challenge with HMAC(token, challenge); every answer under /sandbox/
    carries the token's proof header; the webhook's answers do not."""
    token = AUTH["Authorization"].removeprefix("Bearer ")
    async with sandbox.get("/sandbox/identity", params={"challenge": "c" * 32}) as response:
        assert await response.json() == {"proof": proof(token, "c" * 32)}
        assert response.headers[PROOF_HEADER] == proof(token)
    async with sandbox.get("/sandbox/identity", params={"challenge": "short"}) as response:
        assert response.status == 400
    async with sandbox.post("/sandbox/graph/v25.0/1/messages", json={}) as response:
        assert response.headers[PROOF_HEADER] == proof(token)  # refused, still signed
        assert token not in await response.text()
    async with sandbox.get("/healthz") as response:
        assert PROOF_HEADER not in response.headers


async def test_the_outbox_answers_this_machine_or_the_token_holder(sandbox: TestClient[Any, Any]) -> None:
    """A client from another address gets 403 from /sandbox/outbox unless it has the token."""
    emulator = sandbox.app[EMULATOR]  # type: ignore[index]
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("203.0.113.9", 5555) if name == "peername" else default
    )
    stranger = make_mocked_request("GET", "/sandbox/outbox", transport=transport, app=sandbox.app)
    assert stranger.remote == "203.0.113.9"
    assert (await emulator.outbox(stranger)).status == 403
    holder = make_mocked_request("GET", "/sandbox/outbox", headers=AUTH, transport=transport, app=sandbox.app)
    assert (await emulator.outbox(holder)).status == 200


async def test_the_emulator_wants_its_token_and_valid_bodies(sandbox: TestClient[Any, Any]) -> None:
    """Without its bearer token (or with the old public "sandbox" one): 401 code 190; a body without
    recipient: 400 with a Graph error."""
    body = {"messaging_product": "whatsapp", "to": "+1", "type": "text", "text": {"body": "x"}}
    for refused in ({}, {"Authorization": "Bearer sandbox"}):
        async with sandbox.post("/sandbox/graph/v25.0/1/messages", json=body, headers=refused) as response:
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
    """With an access token set, /sandbox/* does not exist (the identity route included)."""
    settings = Settings.from_env(
        base_env(WHATSAPP_ACCESS_TOKEN="t", WHATSAPP_APP_SECRET="s", WHATSAPP_VERIFY_TOKEN="v")
    )
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(settings, redis_url)))
    await client.start_server()
    try:
        for path in ("/sandbox/outbox", "/sandbox/graph/v25.0/1", "/sandbox/identity"):
            async with client.get(path) as response:
                assert response.status == 404
    finally:
        await client.close()

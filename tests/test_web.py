"""The web edge, row by row of the README's HTTP table, checked for what was (not) enqueued.

The application runs in-process against the session's real Redis.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from dramatiq import Message

from daemon.config import Settings
from daemon.pipeline import PIPELINE_QUEUE
from daemon.web import GUARD
from tests.conftest import APP_SECRET, VERIFY_TOKEN, settings_for
from tests.support.meta import meta_bytes, signed, text_envelope
from tests.support.redis_server import RedisServer
from tests.support.waiting import async_wait_for

QUEUE_KEY = f"dramatiq:{PIPELINE_QUEUE}"


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient[Any, Any]:
    return await make_client()  # type: ignore[no-any-return]


def enqueued(rclient: redis.Redis) -> list[Message[Any]]:
    ids = rclient.lrange(QUEUE_KEY, 0, -1)
    return [Message.decode(rclient.hget(f"{QUEUE_KEY}.msgs", i)) for i in ids]


async def post(client: TestClient[Any, Any], body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with client.post("/webhook", data=body, headers=headers) as response:
        return response.status, await response.text()


async def test_handshake_echoes_the_challenge(client: TestClient[Any, Any]) -> None:
    """The GET handshake with the right token answers 200 with the challenge verbatim, as text/plain."""
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    async with client.get("/webhook", params=params) as response:
        assert response.status == 200
        assert await response.text() == "1158201444"
        assert response.content_type == "text/plain"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "c"},
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "c"},
        {"hub.mode": "subscribe", "hub.challenge": "c"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
        {},
    ],
)
async def test_handshake_refuses_anything_else(client: TestClient[Any, Any], params: dict[str, str]) -> None:
    """Other mode, wrong or missing token, missing challenge: 403."""
    async with client.get("/webhook", params=params) as response:
        assert response.status == 403
        assert "c" not in (await response.text()).replace("forbidden", "")


async def test_accepted_webhook_is_in_redis_when_200_arrives(
    client: TestClient[Any, Any], rclient: redis.Redis
) -> None:
    """A signed webhook gets 200 and, at that moment, one verify message with the exact bytes is in Redis."""
    body = meta_bytes(text_envelope("wamid.A1", "Olá 👍 https://x.y/z"))
    before = time.time()
    status, _ = await post(client, body, signed(body, APP_SECRET))
    assert status == 200
    [message] = enqueued(rclient)
    assert message.actor_name == "verify"
    assert message.kwargs["body"].encode("utf-8") == body
    assert message.kwargs["signature"] == signed(body, APP_SECRET)["X-Hub-Signature-256"]
    assert before <= message.kwargs["received_at"] <= time.time()


async def test_concurrent_webhooks_share_writes_and_each_200_means_stored(
    client: TestClient[Any, Any], rclient: redis.Redis
) -> None:
    """200 webhooks at once: every 200 has its own message in Redis, and the enqueues were
    group-committed (fewer script calls than messages), each batch waking the queue once."""

    def evalsha_calls() -> int:
        return int(rclient.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    bodies = [meta_bytes(text_envelope(f"wamid.G{n}", f"m{n}")) for n in range(200)]
    before = evalsha_calls()
    results = await asyncio.gather(*(post(client, body, signed(body, APP_SECRET)) for body in bodies))
    calls = evalsha_calls() - before
    assert [status for status, _ in results] == [200] * 200
    stored = sorted(message.kwargs["body"].encode("utf-8") for message in enqueued(rclient))
    assert stored == sorted(bodies)
    assert 1 <= calls < 200, calls


async def test_empty_entry_list_is_accepted(client: TestClient[Any, Any], rclient: redis.Redis) -> None:
    """`"entry": []` is a valid webhook: 200 and enqueued."""
    body = meta_bytes({"object": "whatsapp_business_account", "entry": []})
    assert (await post(client, body, signed(body, APP_SECRET)))[0] == 200
    assert len(enqueued(rclient)) == 1


async def test_other_json_shapes_are_accepted_for_the_dead_letters(
    client: TestClient[Any, Any], rclient: redis.Redis
) -> None:
    """Signed JSON of another shape gets 200 (Meta must not retry it); verify dead-letters it."""
    for obj in ({"object": "page", "entry": []}, [1, 2, 3], "just a string"):
        body = meta_bytes(obj)
        assert (await post(client, body, signed(body, APP_SECRET)))[0] == 200
    assert len(enqueued(rclient)) == 3


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Hub-Signature-256": "garbage"},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature": "sha1=" + "0" * 40},
    ],
    ids=["missing", "malformed", "wrong", "sha1-only"],
)
async def test_bad_signatures_get_401_and_enqueue_nothing(
    client: TestClient[Any, Any], rclient: redis.Redis, headers: dict[str, str]
) -> None:
    """Missing, malformed, wrong and sha1-only signatures: 401, nothing in Redis."""
    body = meta_bytes(text_envelope("wamid.B1"))
    assert (await post(client, body, headers))[0] == 401
    assert enqueued(rclient) == []


async def test_reserialised_body_gets_401(client: TestClient[Any, Any], rclient: redis.Redis) -> None:
    """A body signed as Meta sent it but re-serialised on the way (no \\/ escapes) is refused."""
    obj = text_envelope("wamid.B2", "see https://example.com/é")
    signature = signed(meta_bytes(obj), APP_SECRET)
    reencoded = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    assert (await post(client, reencoded, signature))[0] == 401
    assert enqueued(rclient) == []


async def test_signed_non_json_gets_400(client: TestClient[Any, Any], rclient: redis.Redis) -> None:
    """Signed bytes that are not JSON (or not UTF-8): 400, nothing enqueued."""
    for body in (b"not json at all", b"\xff\xfe{}", b""):
        assert (await post(client, body, signed(body, APP_SECRET)))[0] == 400
    assert enqueued(rclient) == []


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"object": "whatsapp_business_account", "entry": []'
        + b', "x": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
    ],
    ids=["deep-100k", "deep-in-a-webhook", "nan", "infinity", "minus-infinity", "overflow"],
)
async def test_signed_non_standard_json_gets_400_not_500(
    client: TestClient[Any, Any], rclient: redis.Redis, body: bytes
) -> None:
    """JSON nested deeply enough to exhaust the parser, NaN, Infinity and numbers beyond a float are
    not standard JSON: 400 (Meta does not retry it), never 500, nothing enqueued."""
    assert (await post(client, body, signed(body, APP_SECRET)))[0] == 400
    assert enqueued(rclient) == []


async def test_content_encoding_gets_415(client: TestClient[Any, Any], rclient: redis.Redis) -> None:
    """A compressed body is refused with 415 and never decompressed."""
    body = meta_bytes(text_envelope("wamid.C1"))
    headers = {**signed(body, APP_SECRET), "Content-Encoding": "gzip"}
    assert (await post(client, body, headers))[0] == 415
    assert enqueued(rclient) == []


async def test_oversized_body_gets_413_from_content_length(
    make_client: Callable[..., Any], rclient: redis.Redis
) -> None:
    """Content-Length over WAPIPE_MAX_BODY_BYTES: 413 without reading the body."""
    client = await make_client(WAPIPE_MAX_BODY_BYTES="2048")
    try:
        body = b"x" * 4096
        assert (await post(client, body, signed(body, APP_SECRET)))[0] == 413
        assert enqueued(rclient) == []
    finally:
        await client.close()


async def test_413_is_decided_before_the_body_is_read_past_the_limit(make_client: Callable[..., Any]) -> None:
    """A client that announces a huge body and sends only the first bytes still gets 413 at once."""
    client = await make_client(WAPIPE_MAX_BODY_BYTES="2048")
    try:
        host, port = client.server.host, client.server.port
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n" + b"x" * 1000
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        assert b" 413 " in status_line
        writer.close()
    finally:
        await client.close()


async def test_chunked_body_over_the_limit_gets_413(
    make_client: Callable[..., Any], rclient: redis.Redis
) -> None:
    """Without Content-Length the limit is enforced while streaming."""
    client = await make_client(WAPIPE_MAX_BODY_BYTES="2048")
    try:

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 1024

        async with client.post("/webhook", data=chunks(), headers={"X-Hub-Signature-256": "x"}) as response:
            assert response.status == 413
        assert enqueued(rclient) == []
    finally:
        await client.close()


async def test_queue_over_its_limit_gets_503_then_accepts_again(
    make_client: Callable[..., Any], rclient: redis.Redis
) -> None:
    """Above WAPIPE_MAX_QUEUE_DEPTH: 503 and nothing enqueued; once drained below, 200 again."""
    client = await make_client(WAPIPE_MAX_QUEUE_DEPTH="2")
    try:
        statuses = []
        for n in range(4):
            body = meta_bytes(text_envelope(f"wamid.D{n}"))
            statuses.append((await post(client, body, signed(body, APP_SECRET)))[0])
            await asyncio.sleep(0.11)  # the depth reading is reused for 100 ms by design
        assert statuses == [200, 200, 200, 503]
        assert len(enqueued(rclient)) == 3
        rclient.delete(QUEUE_KEY)
        await asyncio.sleep(0.11)
        body = meta_bytes(text_envelope("wamid.D9"))
        assert (await post(client, body, signed(body, APP_SECRET)))[0] == 200
    finally:
        await client.close()


async def test_redis_down_gets_503_fast_and_readyz_fails(
    tmp_path: Any, make_client: Callable[..., Any]
) -> None:
    """With Redis stopped: POST 503 within about a second (20 at once too: a failed group write
    fails each of its webhooks), /readyz 503, /healthz still 200."""
    server = RedisServer(tmp_path / "r")
    server.start()
    client = await make_client(url=server.url)
    try:
        body = meta_bytes(text_envelope("wamid.E1"))
        assert (await post(client, body, signed(body, APP_SECRET)))[0] == 200
        server.stop()
        started = time.monotonic()
        assert (await post(client, body, signed(body, APP_SECRET)))[0] == 503
        assert time.monotonic() - started < 1.5
        started = time.monotonic()
        burst = await asyncio.gather(*(post(client, body, signed(body, APP_SECRET)) for _ in range(20)))
        assert [status for status, _ in burst] == [503] * 20
        assert time.monotonic() - started < 1.5
        async with client.get("/readyz") as response:
            assert response.status == 503
        async with client.get("/healthz") as response:
            assert response.status == 200
        server.start()
        async with client.get("/readyz") as response:
            assert response.status == 200
        assert (await post(client, body, signed(body, APP_SECRET)))[0] == 200
        assert len(enqueued(server.client())) == 2  # the first one survived the restart (AOF)
    finally:
        await client.close()
        server.kill()


async def test_redis_hanging_gets_503_within_the_timeout(make_client: Callable[..., Any]) -> None:
    """A Redis that accepts connections but never answers: 503 after about WAPIPE_REDIS_TIMEOUT_SECONDS,
    for one webhook and for 20 at once."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    client = await make_client(url=f"redis://127.0.0.1:{port}/0", WAPIPE_REDIS_TIMEOUT_SECONDS="0.5")
    try:
        body = meta_bytes(text_envelope("wamid.F1"))
        started = time.monotonic()
        assert (await post(client, body, signed(body, APP_SECRET)))[0] == 503
        assert time.monotonic() - started < 1.5
        started = time.monotonic()
        burst = await asyncio.gather(*(post(client, body, signed(body, APP_SECRET)) for _ in range(20)))
        assert [status for status, _ in burst] == [503] * 20
        assert time.monotonic() - started < 1.5
    finally:
        await client.close()
        silent.close()


async def test_metrics_count_outcomes(client: TestClient[Any, Any]) -> None:
    """/metrics is Prometheus text with the webhook outcomes counted and every outcome at 0 first."""
    async with client.get("/metrics") as response:
        text = await response.text()
    assert 'wapipe_webhook_requests_total{outcome="bad_signature"} 0.0' in text
    body = meta_bytes(text_envelope("wamid.G1"))
    await post(client, body, {})
    await post(client, body, signed(body, APP_SECRET))
    async with client.get("/metrics") as response:
        text = await response.text()
    assert 'wapipe_webhook_requests_total{outcome="bad_signature"} 1.0' in text
    assert 'wapipe_webhook_requests_total{outcome="accepted"} 1.0' in text
    assert 'wapipe_queue_messages{queue="wapipe",state="ready"} 1.0' in text


def test_settings_type() -> None:
    """The settings used here are real Settings (guards the helper)."""
    assert isinstance(settings_for("redis://127.0.0.1:1/0"), Settings)


async def _slow_request(port: int, length: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request whose head is complete and whose body has barely begun."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n{{"
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def held_in_guard(client: TestClient[Any, Any], *, requests: int) -> None:
    """Wait until the edge counts ``requests`` webhook requests in progress."""
    guard = client.server.app[GUARD]

    async def counted() -> bool:
        return bool(guard.requests == requests)

    await async_wait_for(counted, timeout=5, what=f"{requests} request(s) held at the edge")


async def test_requests_over_the_cap_get_503_before_their_body_is_read(
    make_client: Callable[..., Any],
) -> None:
    """With one request slot held by a body still arriving, the next webhook gets 503 (Meta
    retries); once the slow one timed out with 400, webhooks are accepted again."""
    client = await make_client(WAPIPE_MAX_CONCURRENT_REQUESTS="1", WAPIPE_BODY_TIMEOUT_SECONDS="0.5")
    reader, writer = await _slow_request(client.server.port, 100)
    body = meta_bytes(text_envelope("wamid.CAP1"))
    await held_in_guard(client, requests=1)
    assert (await post(client, body, signed(body, APP_SECRET)))[0] == 503
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.startswith(b"HTTP/1.1 400")
    writer.close()
    assert (await post(client, body, signed(body, APP_SECRET)))[0] == 200


async def test_a_small_webhook_gets_through_while_large_bodies_fill_the_byte_cap(
    make_client: Callable[..., Any], rclient: redis.Redis
) -> None:
    """Large bodies in progress hold all of WAPIPE_MAX_BUFFERED_BYTES: another large one gets 503
    unread, while a webhook of a few KB still fits in the headroom kept for small bodies."""
    client = await make_client(WAPIPE_MAX_BUFFERED_BYTES="3670016", WAPIPE_BODY_TIMEOUT_SECONDS="5")
    holders = [await _slow_request(client.server.port, 3_600_000)]
    await held_in_guard(client, requests=1)
    big = b"{" + b" " * 200_000 + b"}"
    assert (await post(client, big, signed(big, APP_SECRET)))[0] == 503
    body = meta_bytes(text_envelope("wamid.SMALL"))
    assert (await post(client, body, signed(body, APP_SECRET)))[0] == 200
    assert len(enqueued(rclient)) == 1
    for _, writer in holders:
        writer.close()

"""``POST /send`` as strict as the webhook edge: every request checked before it is answered (all
or nothing), keys that no caller can bend into another key, idempotency as Stripe's, never a 5xx
for a client's bytes, and ``GET /send/{key}`` (and ``wapipe send``) saying what became of a send.

Each finding of the review that asked for this has its test here, reproducing it as it was found.
"""

from __future__ import annotations

import http.client
import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from dramatiq import Message
from hypothesis import event, given
from hypothesis import strategies as st

from daemon.store import keys
from tests.pipeline_helpers import cli, drained, post_webhook
from tests.support.fake_graph import FakeGraph, Reply, graph_error
from tests.support.meta import text_envelope
from tests.support.waiting import wait_for
from tests.test_properties import bounded, json_values, printable
from tests.test_send import NUMBER, TOKEN, post_send, request, sends_to, text

QUEUE = "dramatiq:wapipe"
TEMPLATE = {"type": "template", "template": {"name": "order_ready", "language": {"code": "en_US"}}}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient[Any, Any]:
    """The web app in-process (no worker) with /send mounted."""
    return await make_client(WAPIPE_SEND_TOKEN=TOKEN)  # type: ignore[no-any-return]


async def send(
    client: TestClient[Any, Any], payload: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    asked = {"data": io.BytesIO(data), "headers": AUTH if headers is None else headers}
    async with client.post("/send", **asked) as response:
        try:
            answer = await response.json(content_type=None)
        except ValueError:
            answer = {}
        return response.status, answer, dict(response.headers)


# Finding 1: a recipient written into key names.


def test_a_recipient_with_a_colon_names_no_other_users_history(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """``to: "447700900077:history"`` is refused (400 naming ``to``) and writes nothing: the user
    447700900077's history is no hash, and their next message is answered (it failed with
    WRONGTYPE, retry after retry, before)."""
    stack = pipeline(WAPIPE_SEND_TOKEN=TOKEN)
    status, answer = post_send(stack["url"], request("447700900077:history", "k-colon", text("hi")))
    assert status == 400
    assert answer["error"].startswith("to must be a wa_id")
    history = keys.history(NUMBER, "447700900077")
    assert rclient.type(history) in (b"none", b"list")
    assert post_webhook(stack["url"], text_envelope("wamid.COLON1", sender="447700900077")) == 200
    wait_for(lambda: sends_to(fake_graph, "+447700900077"), timeout=20, what="the user's answer")
    wait_for(lambda: drained(rclient), timeout=20, what="the pipeline drained")
    assert rclient.type(history) in (b"none", b"list")


# Finding 2: a key reused for another request, and keys of two numbers colliding.


async def test_a_key_reused_for_another_request_is_a_conflict(
    client: TestClient[Any, Any], rclient: redis.Redis
) -> None:
    """The same request again: 202, ``duplicate: true`` and ``Idempotent-Replayed: true``, nothing
    more queued; the key with another body, another user or another number's id: 409 (another
    number's own key is its own). ``+44 7700-900123`` is the same user as ``447700900123``."""
    first = request("447700900123", "reuse-1", text("Your order shipped"))
    before = rclient.llen(QUEUE)
    status, answer, headers = await send(client, first)
    assert (status, answer) == (202, {"key": "reuse-1", "duplicate": False})
    assert "Idempotent-Replayed" not in headers
    status, answer, headers = await send(client, first | {"to": "+44 7700-900123"})
    assert (status, answer, headers["Idempotent-Replayed"]) == (
        202,
        {"key": "reuse-1", "duplicate": True},
        "true",
    )
    assert rclient.llen(QUEUE) - before == 1
    for other in (
        request("447700900123", "reuse-1", text("Your order was cancelled")),
        request("447700900999", "reuse-1", text("Your order shipped")),
        request("447700900123", "reuse-1", text("Your order shipped"), text("and a second")),
    ):
        status, answer, _ = await send(client, other)
        assert status == 409, answer
        assert "another request" in answer["error"]
    status, answer, _ = await send(client, first | {"phone_number_id": "620000000000002"})
    assert (status, answer["duplicate"]) == (202, False)  # scoped per number
    assert rclient.llen(QUEUE) - before == 2


async def test_keys_of_two_numbers_never_collide(client: TestClient[Any, Any], rclient: redis.Redis) -> None:
    """``pnid=1000000000001, key=x:y`` and ``pnid=1000000000001:x, key=y`` collided into one mark:
    now the second is not a number (400), and the first is queued under its own encoded mark."""
    status, answer, _ = await send(
        client, {**request("447700900123", "x:y", text("a")), "phone_number_id": "1000000000001"}
    )
    assert (status, answer["duplicate"]) == (202, False)
    assert rclient.exists("wapipe:seen:send:1000000000001:x%3Ay")
    status, answer, _ = await send(
        client, {**request("447700900123", "y", text("a")), "phone_number_id": "1000000000001:x"}
    )
    assert status == 400
    assert answer["error"].startswith("phone_number_id must be")


# Finding 3: bodies Meta refuses, recipients and numbers that are none.

REFUSED_BODIES = [
    ({"type": "text", "text": {"body": "x" * 5000}}, 100, "text['body']"),
    ({"type": "bogus", "bogus": {}}, 100, "Param type must be one of"),
    (
        {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "Pick"},
                "action": {
                    "buttons": [
                        {"type": "reply", "reply": {"id": f"b{i}", "title": f"B{i}"}} for i in range(4)
                    ]
                },
            },
        },
        131009,
        "Buttons count is invalid",
    ),
    ({"type": "template", "template": {"name": "order_ready"}}, 131008, "template['language']['code']"),
    ({"type": "text", "text": {"body": "x" * 3_000_000}}, 100, "text['body']"),
    ({"type": "text", "text": {"body": "x"}, "wapipe_outside_window": {"type": "text"}}, None, "template"),
    ({"type": "location", "location": {"latitude": True, "longitude": 0}}, 100, "must be a number"),
    ({"type": "text", "text": {"body": "x"}, "biz_opaque_callback_data": "c" * 513}, 100, "biz_opaque"),
    (
        {"type": "template", "template": {"name": "t", "language": {"code": "en"}, "components": "junk"}},
        100,
        "array",
    ),
    ({"type": "image", "image": {"link": "file:///etc/passwd"}}, 100, "HTTP or HTTPS"),
    ({"type": "text", "text": {"body": "x"}, "wapipe_foo": 1}, None, "wapipe_foo is no field"),
    (
        {
            "type": "text",
            "text": {"body": "x"},
            "wapipe_outside_window": {**TEMPLATE, "wapipe_outside_window": TEMPLATE},
        },
        None,
        "without wapipe_ fields",
    ),
]


@pytest.mark.parametrize(("body", "code", "rule"), REFUSED_BODIES)
async def test_a_body_meta_refuses_is_refused_before_the_answer(
    client: TestClient[Any, Any], rclient: redis.Redis, body: dict[str, Any], code: int | None, rule: str
) -> None:
    """A 5,000-character text, ``type: bogus``, four reply buttons, a template with no language, a
    3 MB text, a fallback that is no template: 400 naming the message's index and Meta's rule and
    code (they were 202, and dead-lettered later); nothing queued."""
    before = rclient.llen(QUEUE)
    status, answer, _ = await send(client, request("447700900123", "bad-body", text("fine"), body))
    assert status == 400, answer
    assert answer["index"] == 1
    assert answer["error"].startswith("messages[1]: ")
    assert rule in answer["error"]
    assert answer.get("code") == code
    assert rclient.llen(QUEUE) == before
    assert not rclient.exists(keys.seen_send(NUMBER, "bad-body"))


async def test_one_bad_message_refuses_the_whole_request(
    client: TestClient[Any, Any], rclient: redis.Redis
) -> None:
    """Three messages with a bad middle one: 400 for index 1, and none of the three is queued
    (the first went out and the third never did, before); once corrected, the key is free."""
    before = rclient.llen(QUEUE)
    bad = {"type": "text", "text": {"body": "x" * 4097}}
    status, answer, _ = await send(client, request("447700900123", "three", text("1"), bad, text("3")))
    assert (status, answer["index"]) == (400, 1)
    assert rclient.llen(QUEUE) == before
    status, _, _ = await send(client, request("447700900123", "three", text("1"), text("2"), text("3")))
    assert status == 202
    assert rclient.llen(QUEUE) == before + 1


@pytest.mark.parametrize(
    "to",
    [
        "../../etc",
        "٤٤٧٧٠٠٩٠٠١٢٣",
        "1" * 16,
        "1" * 128,
        "",
        "  ",
        "+",
        "a b",
        "x:y",
        "é",
        "a" * 129,
        "1234567890-123456",
        "-",
        "---",
        "\u2003447700900123",
    ],
)
async def test_a_recipient_that_is_none_is_refused(client: TestClient[Any, Any], to: str) -> None:
    """Recipients: a wa_id of 1-15 ASCII digits, or a business-scoped id ``[A-Za-z0-9._-]{1,128}``
    with a letter; Arabic-Indic digits (which pass ``str.isdigit()``), paths, 16 or 128 digits, a
    mistyped number with a dash, a non-ASCII space are refused with 400."""
    status, answer, _ = await send(client, request(to, "bad-to", text("hi")))
    assert status == 400
    assert answer["error"].startswith("to must be")


@pytest.mark.parametrize(
    ("to", "user"),
    [
        ("447700900123", "447700900123"),
        ("+44 7700-900123", "447700900123"),
        ("0", "0"),
        ("US.13491208655302741918", "US.13491208655302741918"),
    ],
)
async def test_a_recipient_is_queued_as_meta_takes_it(
    client: TestClient[Any, Any], rclient: redis.Redis, to: str, user: str
) -> None:
    """A wa_id as people write it is queued as its digits; a business-scoped id as it is."""
    status, _, _ = await send(client, request(to, f"to-{to}", text("hi")))
    assert status == 202
    [last] = rclient.lrange(QUEUE, -1, -1)
    assert Message.decode(rclient.hget(f"{QUEUE}.msgs", last)).kwargs["send"]["to"] == user


async def test_a_number_not_served_is_refused(make_client: Callable[..., Any]) -> None:
    """With WAPIPE_PHONE_NUMBER_IDS set, another number's id is 400; so is one of other digits."""
    client = await make_client(WAPIPE_SEND_TOKEN=TOKEN, WAPIPE_PHONE_NUMBER_IDS=NUMBER)
    for number in ("620000000000002", "٦٢٠", "620000000000001x", "-1", "1" * 33):
        status, answer, _ = await send(
            client, {**request("447700900123", "n", text("a")), "phone_number_id": number}
        )
        assert status == 400, number
        assert "phone_number_id" in answer["error"]
    status, _, _ = await send(client, request("447700900123", "n", text("a")))
    assert status == 202


# Finding 4: 500s for a client's bytes.


async def test_a_non_ascii_token_or_deep_json_is_no_500(
    client: TestClient[Any, Any], rclient: redis.Redis
) -> None:
    """``Authorization: Bearer é`` is 401 (a TypeError in ``compare_digest`` made it 500), JSON
    nested 100,000 deep and a body of lone surrogates from the token's holder are 400."""
    status, _, _ = await send(client, request("1", "k", text("x")), {"Authorization": "Bearer é"})
    assert status == 401
    status, _, _ = await send(client, request("1", "k", text("x")), {"Authorization": "Bearer \udcff"})
    assert status == 401
    deep = b'{"messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, answer, _ = await send(client, deep)
    assert (status, answer["error"]) == (400, "the body is not JSON")
    nested: Any = {"body": "x"}
    for _ in range(40):
        nested = {"n": nested}
    status, answer, _ = await send(client, request("1", "deep", {"type": "text", "text": nested}))
    assert (status, answer["index"]) == (400, 0)
    status, answer, _ = await send(client, request("1", "sur", {"type": "text", "text": {"body": "\ud800"}}))
    assert (status, answer["index"]) == (400, 0)
    status, _, _ = await send(client, b"\xff\xfe not utf-8")
    assert status == 400
    status, _, _ = await send(client, b'{"a": NaN}')
    assert status == 400


ALLOWED = {202, 400, 401, 409, 413, 415}


VALID_BODIES = [text("hi"), {"type": "template", "template": {"name": "t", "language": {"code": "en"}}}]
requests = st.fixed_dictionaries(
    {
        "phone_number_id": st.sampled_from([NUMBER, NUMBER, "", "x", "1" * 40]) | st.text(max_size=8),
        "to": st.sampled_from(["447700900123", "US.1", "a:b", ""]) | st.text(max_size=20),
        "idempotency_key": st.sampled_from(["k", "k:1"]) | st.text(max_size=20) | st.integers(),
        "messages": st.lists(
            st.sampled_from(VALID_BODIES)
            | st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "template", "bogus"])})
            | json_values,
            max_size=3,
        )
        | json_values,
    }
)
#: Mostly requests that are right, to be answered 202 (or 409: another request under the key).
good_requests = st.fixed_dictionaries(
    {
        "phone_number_id": st.just(NUMBER),
        "to": st.sampled_from(["447700900123", "+44 7700 900124", "US.1"]),
        "idempotency_key": st.sampled_from(["k", "k:1", "k 2", "ключ"]),
        "messages": st.lists(st.sampled_from(VALID_BODIES), min_size=1, max_size=3),
    }
)


@given(
    body=st.binary(max_size=1024)
    | json_values.map(lambda v: json.dumps(v).encode())
    | requests.map(lambda v: json.dumps(v).encode())
    | good_requests.map(lambda v: json.dumps(v).encode()),
    token=st.sampled_from(["right", "right", "right", "none", "wrong", "non-ascii", "latin-1 bytes"]),
    encoding=st.sampled_from([None, None, None, "identity", "gzip", "x-anything"]),
    extra=st.dictionaries(
        st.sampled_from(["Content-Type", "X-Foo", "Idempotency-Key"]), printable, max_size=2
    ),
)
@bounded(120)
def test_any_request_to_send_gets_a_4xx_or_202_never_a_5xx(
    send_web: dict[str, Any],
    rclient: redis.Redis,
    body: bytes,
    token: str,
    encoding: str | None,
    extra: dict[str, str],
) -> None:
    """Any bytes or JSON, with the token, without, wrong or not ASCII, any encoding header: 202,
    400, 401, 409, 413 or 415 — never a 5xx — and a message queued only for a 202 that is no
    replay."""
    headers: dict[str, Any] = dict(extra)
    if token == "right":
        headers["Authorization"] = f"Bearer {TOKEN}"
    elif token == "wrong":
        headers["Authorization"] = "Bearer nope"
    elif token == "non-ascii":
        headers["Authorization"] = "Bearer é".encode().decode("latin-1")
    elif token == "latin-1 bytes":
        headers["Authorization"] = "Bearer \xe9\xff"
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    before = rclient.llen(QUEUE)
    connection = http.client.HTTPConnection("127.0.0.1", int(send_web["env"]["PORT"]), timeout=10)
    try:
        connection.request("POST", "/send", body=body, headers=headers)
        answer = connection.getresponse()
        status, replayed = answer.status, answer.getheader("Idempotent-Replayed")
        answer.read()
    finally:
        connection.close()
    event(f"answered {status}")
    assert status in ALLOWED
    assert rclient.llen(QUEUE) - before == (1 if status == 202 and not replayed else 0)
    if status == 202:
        assert token == "right"


@pytest.fixture
def send_web(pipeline: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return pipeline(
        worker=False, WAPIPE_SEND_TOKEN=TOKEN, WAPIPE_MAX_BODY_BYTES="65536", WAPIPE_LOG_LEVEL="WARNING"
    )


# Finding 5: what became of a send.


def get_status(url: str, key: str, number: str = NUMBER, token: str = TOKEN) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"phone_number_id": number})
    asked = urllib.request.Request(
        f"{url}/send/{urllib.parse.quote(key, safe='')}?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(asked, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def states(url: str, key: str) -> list[str]:
    status, answer = get_status(url, key)
    return [m["state"] for m in answer["messages"]] if status == 200 else []


async def test_get_send_answers_queued_before_a_worker_runs(client: TestClient[Any, Any]) -> None:
    """``GET /send/{key}?phone_number_id=…`` of a request no worker took yet: each message queued;
    404 for a key no request took (or another number's), 401 without the token, 400 without a
    number."""
    assert (await send(client, request("447700900123", "st:q", text("one"), text("two"))))[0] == 202

    async def get(key: str, number: str | None = NUMBER, headers: dict[str, str] = AUTH) -> tuple[int, Any]:
        query = {} if number is None else {"phone_number_id": number}
        async with client.get(f"/send/{key}", params=query, headers=headers) as response:
            return response.status, await response.json()

    assert await get("st%3Aq") == (
        200,
        {
            "key": "st:q",
            "phone_number_id": NUMBER,
            "messages": [{"index": 0, "state": "queued"}, {"index": 1, "state": "queued"}],
        },
    )
    assert (await get("st%3Anone"))[0] == 404
    assert (await get("st%3Aq", "620000000000002"))[0] == 404
    assert (await get("st%3Aq", headers={"Authorization": "Bearer é"}))[0] == 401
    assert (await get("st%3Aq", None))[0] == 400
    assert (await get("st%3Aq", "x"))[0] == 400


def test_get_send_says_what_became_of_each_message(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """Once the worker ran: sent with its outbound id and latest status (delivered, once Meta said
    so); refused outside the window with the reason; dead-lettered with the reason when Meta
    refused it for good; in doubt when the request went out and no answer came."""
    url = pipeline(WAPIPE_SEND_TOKEN=TOKEN)["url"]
    assert post_webhook(url, text_envelope("wamid.G0", sender="447700900123")) == 200
    wait_for(lambda: sends_to(fake_graph, "+447700900123"), timeout=20, what="the bot's answer")
    assert post_send(url, request("447700900123", "st:sent", text("shipped"), text("tracking")))[0] == 202
    assert post_send(url, request("447700900888", "st:refused", text("not allowed")))[0] == 202
    wait_for(lambda: states(url, "st:sent") == ["sent", "sent"], timeout=20, what="both sent")
    wait_for(lambda: states(url, "st:refused") == ["refused"], timeout=20, what="the refusal")
    first = get_status(url, "st:sent")[1]["messages"][0]
    assert first["id"].startswith("wamid.")
    assert get_status(url, "st:refused")[1]["messages"] == [
        {"index": 0, "state": "refused", "reason": "window"}
    ]

    statuses = {"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": NUMBER},
        "statuses": [{"id": first["id"], "status": "delivered", "timestamp": str(int(time.time())),
                      "recipient_id": "447700900123"}]}}]}]}  # fmt: skip
    assert post_webhook(url, statuses) == 200
    wait_for(
        lambda: get_status(url, "st:sent")[1]["messages"][0].get("status") == "delivered",
        timeout=20,
        what="the delivered status",
    )

    fake_graph.script("send", graph_error(131026, 400))  # undeliverable: permanent
    assert post_send(url, request("447700900123", "st:dead", text("lost")))[0] == 202
    wait_for(lambda: states(url, "st:dead") == ["dead_lettered"], timeout=20, what="the dead letter")
    dead = get_status(url, "st:dead")[1]["messages"][0]
    assert "131026" in dead["reason"]
    assert dead["dead_letter"]

    fake_graph.script("send", Reply(drop=True))  # the request went out, no answer came
    assert post_send(url, request("447700900123", "st:doubt", text("maybe")))[0] == 202
    wait_for(lambda: states(url, "st:doubt") == ["in_doubt"], timeout=30, what="the send in doubt")
    wait_for(lambda: drained(rclient), timeout=20, what="the pipeline drained")


def test_wapipe_send_outside_the_window_exits_non_zero(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph
) -> None:
    """``wapipe send … --text`` to a user who never wrote printed "queued" and exited 0, then sent
    nothing: now it prints the refusal and exits 1; inside the window it prints the outbound id and
    exits 0; the key again is "already queued" with the same outcome."""
    stack = pipeline()
    refused = cli(stack["env"], "send", NUMBER, "447700900444", "--text", "hello", "--key", "cli-out")
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout == (
        "queued cli-out\n"
        "  message 0: refused: outside the user's 24-hour window, and no template was given for it\n"
    )
    assert sends_to(fake_graph, "+447700900444") == []
    assert post_webhook(stack["url"], text_envelope("wamid.CLI1", sender="447700900445")) == 200
    wait_for(lambda: sends_to(fake_graph, "+447700900445"), timeout=20, what="the bot's answer")
    inside = cli(stack["env"], "send", NUMBER, "447700900445", "--text", "hello", "--key", "cli-in")
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.startswith("queued cli-in\n  message 0: sent as wamid.")
    again = cli(stack["env"], "send", NUMBER, "447700900445", "--text", "hello", "--key", "cli-in")
    assert again.returncode == 0
    assert again.stdout.startswith("already queued cli-in\n  message 0: sent as wamid.")
    other = cli(stack["env"], "send", NUMBER, "447700900445", "--text", "another", "--key", "cli-in")
    assert other.returncode == 1
    assert "was used for another request" in other.stderr
    texts = [m["text"]["body"] for m in sends_to(fake_graph, "+447700900445") if m["type"] == "text"]
    assert texts.count("hello") == 1


async def test_a_field_a_request_does_not_have_is_refused(client: TestClient[Any, Any]) -> None:
    """A misspelt or unknown field is 400, not ignored (``recipient`` says to use ``to``); the
    scheme ``bearer`` in lower case is the same token."""
    status, answer, _ = await send(client, request("447700900123", "f", text("a")) | {"idempotency": "x"})
    assert (status, answer["error"]) == (400, "idempotency is no field of a send request")
    asked = {k: v for k, v in request("447700900123", "f", text("a")).items() if k != "to"}
    status, answer, _ = await send(client, asked | {"recipient": "US.1"})
    assert (status, answer["error"]) == (400, "recipient is no field of a send request: use to")
    status, _, _ = await send(
        client, request("447700900123", "f", text("a")), {"Authorization": f"bearer {TOKEN}"}
    )
    assert status == 202


async def test_a_body_announced_over_the_limit_is_413_at_once(client: TestClient[Any, Any]) -> None:
    """A ``Content-Length`` over ``WAPIPE_MAX_BODY_BYTES`` is answered 413 before any byte of the
    body (it waited for the body timeout and answered 400 before)."""
    import asyncio

    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 5)
        assert head.split()[1] == b"413"
        rest = await asyncio.wait_for(reader.readuntil(b"}"), 5)
        assert b"WAPIPE_MAX_BODY_BYTES" in rest
    finally:
        writer.close()


def test_a_compressed_body_is_never_inflated_and_request_bytes_never_logged(
    send_web: dict[str, Any], rclient: redis.Redis
) -> None:
    """``Content-Encoding: gzip`` is 415 with nothing inflated (an invalid gzip body made aiohttp
    log a decoding traceback, a valid 3 MB one of 3 GB stalled the web); a body longer than its
    ``Content-Length`` is not read as a next request whose bytes aiohttp logs (the tail of a
    number, a text's words reached the log)."""
    port = int(send_web["env"]["PORT"])
    for path in ("/send", "/webhook"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request(
                "POST", path, body=b"{} not gzip", headers={"Content-Encoding": "gzip", **AUTH}
            )
            assert connection.getresponse().status == 415
        finally:
            connection.close()
    import socket

    body = json.dumps(request("447700900123", "leak", text("LEAKME private text"))).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(
            b"POST /send HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body) - 30}\r\n\r\n".encode()
            + body
        )
        answered = raw.recv(65536)
        assert answered.split()[1] == b"400"
        raw.settimeout(5)
        try:
            while raw.recv(65536):
                pass
        except (TimeoutError, ConnectionError):
            pass
    health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        health.request("GET", "/healthz")
        assert health.getresponse().status == 200
    finally:
        health.close()
    output = send_web["web"].output()
    assert "LEAKME" not in output
    assert "private text" not in output
    assert "Can not decode" not in output


def test_wapipe_send_refuses_an_empty_key_and_says_when_redis_is_down(tmp_path: Any) -> None:
    """``--key ""`` (an empty variable) is exit 2, not a random key that a retry would send
    again; with Redis unreachable, one line and exit 3, no traceback."""
    from tests.conftest import pipeline_env

    env = pipeline_env("redis://127.0.0.1:1/0", "http://127.0.0.1:9", tmp_path)
    empty = cli(env, "send", NUMBER, "447700900123", "--text", "hi", "--key", "")
    assert empty.returncode == 2
    assert "idempotency_key" in empty.stderr
    down = cli(env, "send", NUMBER, "447700900123", "--text", "hi", "--key", "k")
    assert down.returncode == 3, down.stderr
    assert "Traceback" not in down.stderr
    assert cli(env, "send", NUMBER, "447700900123", "--text", "hi", "--wait", "nan").returncode == 2

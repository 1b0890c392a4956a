"""Business-initiated messages: `POST /send` and `wapipe send` through the `send` stage, with an
idempotency key, the reply ledger, and the 24-hour window counted from the user's last message."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import redis

from tests.pipeline_helpers import cli, drained, post_webhook
from tests.support.fake_graph import FakeGraph, sent_json
from tests.support.meta import text_envelope
from tests.support.waiting import wait_for

TOKEN = "send-token-0123456789"
NUMBER = "620000000000001"
TEMPLATE = {"type": "template", "template": {"name": "order_ready", "language": {"code": "en_US"}}}


def post_send(url: str, payload: object, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}/send", data=json.dumps(payload).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw or b"{}")
        except ValueError:  # not one of /send's answers (e.g. aiohttp's 404 page)
            return error.code, {}


def request(to: str, key: str, *messages: dict[str, Any]) -> dict[str, Any]:
    return {"phone_number_id": NUMBER, "to": to, "idempotency_key": key, "messages": list(messages)}


def text(body: str, outside: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "text", "text": {"body": body}}
    if outside is not None:
        message["wapipe_outside_window"] = outside
    return message


def sends_to(fake_graph: FakeGraph, to: str) -> list[dict[str, Any]]:
    return [sent_json(r) for r in fake_graph.sends() if sent_json(r).get("to") == to]


def test_post_send_sends_once_per_key_inside_the_window_and_a_template_outside(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """A user who wrote gets the text; the same key again is accepted as a duplicate and sends
    nothing; a user who never wrote gets the template given for outside the window, or nothing."""
    stack = pipeline(WAPIPE_SEND_TOKEN=TOKEN)
    url = stack["url"]
    assert post_webhook(url, text_envelope("wamid.S0", sender="447700900123")) == 200
    wait_for(lambda: sends_to(fake_graph, "+447700900123"), timeout=20, what="the reply to the user")

    assert post_send(url, request("447700900123", "k-1", text("Your order shipped"))) == (
        202,
        {"key": "k-1", "duplicate": False},
    )
    assert post_send(url, request("447700900123", "k-1", text("Your order shipped"))) == (
        202,
        {"key": "k-1", "duplicate": True},
    )
    assert post_send(url, request("447700900999", "k-2", text("Hello", outside=TEMPLATE))) == (
        202,
        {"key": "k-2", "duplicate": False},
    )
    assert post_send(url, request("447700900888", "k-3", text("Not allowed")))[0] == 202
    wait_for(lambda: drained(rclient), timeout=20, what="the sends done")
    shipped = [
        m
        for m in sends_to(fake_graph, "+447700900123")
        if m["type"] == "text" and m["text"]["body"] == "Your order shipped"
    ]
    assert len(shipped) == 1
    assert [m["type"] for m in sends_to(fake_graph, "+447700900999")] == ["template"]
    assert sends_to(fake_graph, "+447700900888") == []
    assert rclient.get(f"wapipe:reply:{NUMBER}:send:k-3:0") == b"refused:window"


def test_post_send_refuses_strangers_and_bad_requests(pipeline: Callable[..., dict[str, Any]]) -> None:
    """No token or a wrong one: 401; a body that is not a send request: 400 naming the field."""
    stack = pipeline(worker=False, WAPIPE_SEND_TOKEN=TOKEN)
    url = stack["url"]
    assert post_send(url, request("1", "k", text("x")), token=None)[0] == 401
    assert post_send(url, request("1", "k", text("x")), token="wrong")[0] == 401
    status, answer = post_send(url, {"phone_number_id": NUMBER, "to": "1", "messages": [text("x")]})
    assert (status, answer["error"]) == (
        400,
        "idempotency_key must be a non-empty string of at most 128 characters",
    )
    status, answer = post_send(url, request("1", "k", {"type": "text", "to": "+2", "text": {"body": "x"}}))
    assert (status, answer["error"], answer["index"]) == (
        400,
        "messages[0]: a message must not name its recipient: use to",
        0,
    )
    assert post_send(url, request("1", "k"))[0] == 400


def test_post_send_is_not_served_without_a_token(pipeline: Callable[..., dict[str, Any]]) -> None:
    """Without WAPIPE_SEND_TOKEN there is no /send at all."""
    stack = pipeline(worker=False)
    assert post_send(stack["url"], request("1", "k", text("x")))[0] in (404, 405)


def test_wapipe_send_queues_a_template_once_per_key(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """`wapipe send NUMBER +USER --template NAME --key K`: queued and sent, then "already queued";
    sent once to the user's wa_id (the "+" people write dropped); `wapipe trace send:K` shows its
    journey."""
    stack = pipeline()

    def send(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(stack["env"], "send", NUMBER, "+447700900555", *args)  # as people write numbers

    first = send("--template", "order_ready", "--key", "cli-1")
    assert (first.returncode, first.stdout.splitlines()[0]) == (0, "queued cli-1")
    assert first.stdout.splitlines()[1].startswith("  message 0: sent as wamid.out.")
    again = send("--template", "order_ready", "--key", "cli-1")
    assert (again.returncode, again.stdout.splitlines()) == (
        0,
        ["already queued cli-1", first.stdout.splitlines()[1]],
    )
    assert send("--template", "order_ready", "--key", "cli-2", "--wait", "0").stdout == "queued cli-2\n"
    assert send().returncode == 2
    wait_for(lambda: sends_to(fake_graph, "+447700900555"), timeout=20, what="the template")
    wait_for(lambda: drained(rclient), timeout=20, what="the send done")
    assert [m["template"]["name"] for m in sends_to(fake_graph, "+447700900555")] == ["order_ready"] * 2
    traced = cli(stack["env"], "trace", "send:cli-1").stdout  # its journey, by its key
    assert traced.startswith(f"send:cli-1 on {NUMBER}, user 447700900555\n")
    assert "accepted by POST /send or wapipe send" in traced
    assert "send done (attempt 1), 1 message" in traced
    assert "reply 0: sent as wamid.out." in traced

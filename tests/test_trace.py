"""Delivery tracking and `wapipe trace`: each message sent is linked to the inbound message it
answered; its delivery status reaches the bot's history; a message's journey — received, each
stage with its time and attempt, the media stored, the replies and their statuses, a dead letter —
is printed from what the pipeline kept."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import redis

from tests.pipeline_helpers import cli, dead_letters, drained, post_webhook, replies_to
from tests.support.fake_graph import FakeGraph, b64_sha256, graph_error, media_bytes
from tests.support.meta import envelope, text_envelope
from tests.support.waiting import wait_for

NUMBER = "620000000000001"
USER = "447700900777"


def statuses(*items: tuple[str, str, int | None]) -> dict[str, Any]:
    """A statuses webhook: (outbound id, status, error code of a failure)."""
    body = envelope([])
    value = body["entry"][0]["changes"][0]["value"]
    del value["messages"]
    value["statuses"] = [
        {"id": out_id, "status": status, "timestamp": str(int(time.time())), "recipient_id": USER}
        | ({"errors": [{"code": code, "title": "failed"}]} if code is not None else {})
        for out_id, status, code in items
    ]
    return body


def trace(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli(env, "trace", *args)


def test_trace_follows_a_message_from_webhook_to_read_receipt(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """An image whose reply is throttled once, then sent and read: the trace shows it received,
    parsed, its media stored, the reply's retry (with Meta's wait) and success, the reply's id
    with its latest status (read, though Meta's statuses came out of order), and that it is done.
    The reply's own id leads back to it."""
    stack = pipeline(WHATSAPP_MEDIA_HOSTS="127.0.0.1")
    content = media_bytes("m-trace")
    fake_graph.add_media("m-trace", content)
    fake_graph.script("send", graph_error(130429, 400))
    image = {
        "id": "wamid.T1",
        "from": USER,
        "timestamp": str(int(time.time())),
        "type": "image",
        "image": {"id": "m-trace", "mime_type": "image/jpeg", "sha256": b64_sha256(content)},
    }
    assert post_webhook(stack["url"], envelope([image], contacts=[{"wa_id": USER}])) == 200
    fake_graph.wait_sends(2)
    wait_for(lambda: replies_to(rclient, NUMBER, "wamid.T1") is not None, timeout=20, what="the reply")
    out_id = rclient.get(f"wapipe:reply:{NUMBER}:wamid.T1:0").decode().removeprefix("sent:")
    for status in ("read", "delivered", "sent"):
        assert post_webhook(stack["url"], statuses((out_id, status, None))) == 200
    wait_for(lambda: drained(rclient), timeout=20, what="the pipeline drained")

    shown = trace(stack["env"], "wamid.T1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"wamid.T1 on {NUMBER}, user {USER}"
    text = shown.stdout
    for expected in (
        "received (webhook ",
        "parse done → fetch_media",
        "fetch_media done (attempt 1), media stored: ",
        f"({len(content)} bytes)",
        "reply retry (attempt 1), 1 reply decided: Retry: HTTP 400, code 130429",
        "reply done (attempt 2), 1 reply decided",
        f"reply 0: sent as {out_id}, read at ",
        "done: answered by 1 message",
    ):
        assert expected in text, (expected, text)
    assert "again in" in text

    by_reply = trace(stack["env"], out_id)
    assert by_reply.stdout.splitlines()[0] == f"{out_id} was sent by wapipe in answer to wamid.T1"
    as_json = json.loads(trace(stack["env"], "wamid.T1", "--json").stdout)
    assert [event["stage"] for event in as_json["events"]] == ["parse", "fetch_media", "reply", "reply"]
    assert as_json["replies"] == [
        {
            "index": 0,
            "state": "sent",
            "id": out_id,
            "status": "read",
            "status_at": as_json["replies"][0]["status_at"],
        }
    ]
    unknown = trace(stack["env"], "wamid.never")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert "nothing is known of wamid.never" in unknown.stderr


def test_trace_shows_a_dead_lettered_message_and_a_failed_delivery(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """A reply Meta refuses for good: the trace ends with the failed run and the dead letter's
    reason and code. A reply that was sent but then failed to deliver shows `failed` with Meta's
    error code, and a later `read` does not change it."""
    stack = pipeline()
    fake_graph.script("send", graph_error(131026, 400))
    assert post_webhook(stack["url"], text_envelope("wamid.T2", sender=USER)) == 200
    wait_for(lambda: dead_letters(rclient), timeout=20, what="the dead letter")
    assert post_webhook(stack["url"], text_envelope("wamid.T3", sender=USER)) == 200
    wait_for(
        lambda: drained(rclient) and replies_to(rclient, NUMBER, "wamid.T3") is not None,
        timeout=20,
        what="both",
    )

    refused = trace(stack["env"], "wamid.T2").stdout
    assert "reply failed (attempt 1), 1 reply decided: GraphRejected code=131026" in refused
    [letter] = [line for line in refused.splitlines() if line.startswith("  dead letter ")]
    assert re.search(r"\(reply, [-0-9 :.]+Z\): GraphRejected code 131026: \(#131026\) error$", letter)
    assert "not done yet" in refused

    out_id = rclient.get(f"wapipe:reply:{NUMBER}:wamid.T3:0").decode().removeprefix("sent:")
    assert post_webhook(stack["url"], statuses((out_id, "failed", 131049))) == 200
    assert post_webhook(stack["url"], statuses((out_id, "read", None))) == 200
    wait_for(lambda: drained(rclient), timeout=20, what="the statuses")
    assert f"reply 0: sent as {out_id}, failed at " in trace(stack["env"], "wamid.T3").stdout
    assert "(error 131049)" in trace(stack["env"], "wamid.T3").stdout

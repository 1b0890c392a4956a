"""The 24-hour customer-service window: a free-form reply due after it closed is never sent; the
handler's template goes instead, or the reply is refused, counted and logged (no 131047 round
trip). The test's clock is injected through the messages' own timestamps, as Meta counts them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from actors import reply
from daemon.conversation import Conversation
from daemon.handler import InboundMessage
from daemon.messages import Template, Text
from daemon.pipeline import MessageItem
from daemon.store import keys
from tests.pipeline_helpers import replies_to
from tests.support.fake_graph import FakeGraph
from tests.support.stages import context, counted, resources

NUMBER = "620000000000001"
HOUR = 3600


def item(message_id: str, hours_ago: float) -> MessageItem:
    sent_at = int(time.time() - hours_ago * HOUR)
    message = {
        "id": message_id,
        "from": "447700900123",
        "timestamp": str(sent_at),
        "type": "text",
        "text": {"body": "hi"},
    }
    return MessageItem(message, NUMBER, None, None, time.time(), "env")


def test_a_reply_after_the_window_closed_is_refused_once_and_for_good(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path, rclient: redis.Redis
) -> None:
    """The default reply to a message sent 25 h ago (delivered late by Meta) is not sent; it is
    recorded as refused, counted, and a retry does not send it either. 23 h ago: sent."""
    with resources(redis_url, fake_graph.url, tmp_path) as worker:
        reply.run(context(worker), item("wamid.W25", hours_ago=25))
        reply.run(context(worker), item("wamid.W25", hours_ago=25))  # a retry or a redelivery
        assert fake_graph.sends() == []
        assert rclient.get(keys.ledger(NUMBER, "wamid.W25", 0)) == b"refused:window"
        assert replies_to(rclient, NUMBER, "wamid.W25") == 1
        assert counted(worker.metrics.outside_window, "refused") == 1
        reply.run(context(worker), item("wamid.W23", hours_ago=23))
        assert len(fake_graph.sends()) == 1


def test_the_handlers_template_goes_out_instead(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """A free-form message with ``outside_window=Template(...)``: inside the window the text is
    sent, outside it the template; a template alone is sent whatever the window."""

    def handler(message: InboundMessage) -> list[Any]:
        return [
            Text("Your order is ready", outside_window=Template("order_ready", "en_US")),
            Template("receipt"),
        ]

    with resources(redis_url, fake_graph.url, tmp_path, handler=handler) as worker:
        reply.run(context(worker), item("wamid.T1", hours_ago=1))
        reply.run(context(worker), item("wamid.T2", hours_ago=30))
        assert counted(worker.metrics.outside_window, "template") == 1
    kinds = [
        (record.json["type"], record.json.get("template", {}).get("name")) for record in fake_graph.sends()
    ]
    assert kinds == [
        ("text", None),
        ("template", "receipt"),
        ("template", "order_ready"),
        ("template", "receipt"),
    ]
    assert all("wapipe_outside_window" not in record.json for record in fake_graph.sends())


def test_a_later_message_keeps_the_window_open_for_an_earlier_one(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """A conversation bot answering a message from 25 h ago that Meta delivered late, after the
    user wrote again an hour ago: the window counts from the latest message, so it is sent."""

    def bot(message: InboundMessage, conversation: Conversation) -> list[Text]:
        return [Text(f"about {message.id}")]

    with resources(redis_url, fake_graph.url, tmp_path, handler=bot) as worker:
        reply.run(context(worker), item("wamid.L2", hours_ago=1))
        reply.run(context(worker), item("wamid.L1", hours_ago=25))
    assert [record.json["text"]["body"] for record in fake_graph.sends()] == [
        "about wamid.L2",
        "about wamid.L1",
    ]


def test_the_last_message_parse_saw_keeps_the_window_open_for_any_handler(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """With the default handler: parse records the user's newest message; a reply due to a
    message of 25 h ago that Meta delivered late is sent, the user having written an hour ago."""
    from actors import parse
    from daemon.pipeline import Envelope
    from tests.support.meta import envelope, meta_bytes

    recent = {
        "id": "wamid.N1",
        "from": "447700900123",
        "timestamp": str(int(time.time() - HOUR)),
        "type": "text",
        "text": {"body": "hi"},
    }
    with resources(redis_url, fake_graph.url, tmp_path) as worker:
        parse.run(context(worker), Envelope(meta_bytes(envelope([recent])).decode(), time.time(), "env"))
        reply.run(context(worker), item("wamid.N0", hours_ago=25))
        assert worker.store.conversations.last_inbound(NUMBER, "447700900123") == int(recent["timestamp"])
    assert len(fake_graph.sends()) == 1

"""What a sender cannot stretch: a message's timestamp counts for the 24-hour window only up to
its receipt, and a bot's conversation state has a size limit."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from actors import reply
from actors.errors import ItemRejected
from daemon.bot import Bot
from daemon.conversation import Conversation
from daemon.handler import InboundMessage
from daemon.messages import Text
from daemon.pipeline import MessageItem
from daemon.store import keys
from tests.pipeline_helpers import drained, post_webhook
from tests.support.fake_graph import FakeGraph
from tests.support.meta import text_envelope
from tests.support.stages import context, resources
from tests.support.waiting import wait_for

NUMBER = "620000000000001"


def _with_timestamp(message_id: str, sender: str, timestamp: str) -> dict[str, Any]:
    webhook = text_envelope(message_id, sender=sender)
    webhook["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = timestamp
    return webhook


def test_a_timestamp_counts_for_the_window_only_up_to_its_receipt(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """A signed webhook's timestamp 30 days ahead became the user's last inbound time (the window
    open for a month); ``-5`` and ``abc`` counted as nothing. Now each is taken as the time the
    webhook was received: answered, and recorded as the user's last message at that time."""
    stack = pipeline()
    cases = {
        "447700900301": str(int(time.time()) + 30 * 86_400),
        "447700900302": "-5",
        "447700900303": "abc",
    }
    before = time.time()
    for n, (user, timestamp) in enumerate(cases.items()):
        assert post_webhook(stack["url"], _with_timestamp(f"wamid.TS{n}", user, timestamp)) == 200
    wait_for(lambda: len(fake_graph.sends()) == len(cases), timeout=20, what="every message answered")
    wait_for(lambda: drained(rclient), timeout=20, what="the pipeline drained")
    after = time.time()
    for user in cases:
        last = rclient.hget(keys.conversation(NUMBER, user), "last_inbound")
        assert last is not None, user
        assert before - 1 <= float(last) <= after + 1, (user, last)


def test_a_state_over_its_limit_is_dead_lettered_and_the_previous_state_kept(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """A 20 MB variable was stored, and reloaded every turn. Now a turn leaving the state and
    variables over ``WAPIPE_MAX_STATE_BYTES`` is refused for good (a dead letter whose reason
    names the sizes and the setting), nothing of it is sent, and the state before it stays."""
    bot = Bot()

    @bot.fallback
    def remember(message: InboundMessage, conversation: Conversation) -> list[Text]:
        conversation.state = "big" if message.text == "big" else "small"
        conversation.variables["note"] = "x" * (20_000_000 if message.text == "big" else 10)
        return [Text(f"noted {message.text}")]

    with resources(
        redis_url, fake_graph.url, tmp_path, handler=bot, WAPIPE_MAX_STATE_BYTES="65536"
    ) as worker:
        reply.run(context(worker), _item("wamid.ST1", "small"))
        with pytest.raises(ItemRejected) as refused:
            reply.run(context(worker), _item("wamid.ST2", "big"))
        assert "WAPIPE_MAX_STATE_BYTES is 65536" in str(refused.value)
        assert "20000" in str(refused.value)
        talk = worker.store.conversations.load(NUMBER, "447700900123")
        assert (talk.state, talk.variables) == ("small", {"note": "x" * 10})
    assert [r.json["text"]["body"] for r in fake_graph.sends()] == ["noted small"]


def _item(message_id: str, text: str) -> MessageItem:
    message = {
        "id": message_id,
        "from": "447700900123",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    return MessageItem(message, NUMBER, None, None, time.time(), "env")

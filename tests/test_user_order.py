"""Each user's order, for every handler, through real workers: a user's messages are answered one
at a time in the order they came (the default reply included), a message that ends — dead-lettered
at once, handled without reply — lets the next one go at once, one still being worked on (a retry)
holds it, and ``WAPIPE_USER_ORDER=false`` answers a stateless handler's messages in parallel."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from daemon.store import keys
from tests.pipeline_helpers import drained, post_webhook
from tests.support.fake_graph import FakeGraph, Reply, graph_error, sent_json
from tests.support.meta import envelope
from tests.support.waiting import wait_for

NUMBER = "620000000000001"
USER = "447700900123"

#: A conversation bot that fails in the ways that end a message at once, or answers.
ENDING_BOT = """
from daemon.bot import Bot
from daemon.messages import Text

bot = Bot()


@bot.fallback
def answer(message, conversation):
    if message.text == "raise":
        raise RuntimeError("the bot's own bug")
    if message.text == "not json":
        conversation.variables["seen"] = {1, 2}  # a set: the turn cannot be stored
        return [Text("never sent")]
    if message.text == "quiet":
        return []
    return [Text("answered " + message.text, reply_to=message.id)]
"""


def _text(message_id: str, body: str, at: int, sender: str = USER) -> dict[str, Any]:
    return {"id": message_id, "from": sender, "timestamp": str(at), "type": "text", "text": {"body": body}}


def _answered(fake_graph: FakeGraph, sender: str) -> list[str]:
    """The inbound ids the sends to ``sender`` answered, in the order Meta received them."""
    return [
        sent_json(r)["context"]["message_id"]
        for r in fake_graph.sends()
        if sent_json(r).get("to") == "+" + sender and "context" in sent_json(r)
    ]


def _kinds(fake_graph: FakeGraph, since: int = 0) -> str:
    """The Graph calls Meta received from ``since`` on, one letter each: ``r`` a read receipt,
    ``s`` a send."""
    return "".join(r.kind[0] for r in fake_graph.requests[since:] if r.kind in ("read", "send"))


def _slow_reads_first(fake_graph: FakeGraph, count: int) -> None:
    """The first read receipt Meta answers takes longest, the last none: answered in parallel, the
    user's first message would be replied to last."""
    fake_graph.script(
        "read", *(Reply(body={"success": True}, delay=0.15 * (count - n)) for n in range(count))
    )


def test_the_default_reply_answers_a_users_messages_in_order_in_one_webhook_and_in_five(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """Five texts of one user with the default reply (a one-argument handler), eight worker
    threads: answered in the order they came, one after the other (each message is marked read
    only once the one before it was answered), although each one's read receipt is slower than the
    next one's — both when they come in one webhook and in five; the user's order is empty
    afterwards (nothing is kept once every message ended)."""
    stack = pipeline(WAPIPE_WORKER_PROCESSES="1", WAPIPE_WORKER_THREADS="8")
    now = int(time.time())
    _slow_reads_first(fake_graph, 5)
    one = [_text(f"wamid.A{n}", f"a{n}", now + n) for n in range(5)]
    assert post_webhook(stack["url"], envelope(one)) == 200
    wait_for(lambda: len(_answered(fake_graph, USER)) >= 5, timeout=30, what="five answers")
    assert _answered(fake_graph, USER) == [f"wamid.A{n}" for n in range(5)]
    assert _kinds(fake_graph) == "rs" * 5

    other = "447700900456"
    since = len(fake_graph.requests)
    _slow_reads_first(fake_graph, 5)
    for n in range(5):
        assert post_webhook(stack["url"], envelope([_text(f"wamid.B{n}", f"b{n}", now + n, other)])) == 200
    wait_for(lambda: len(_answered(fake_graph, other)) >= 5, timeout=30, what="five answers")
    assert _answered(fake_graph, other) == [f"wamid.B{n}" for n in range(5)]
    assert _kinds(fake_graph, since) == "rs" * 5
    wait_for(lambda: drained(rclient), timeout=20, what="the queues drained")
    assert not rclient.exists(keys.order(NUMBER, USER), keys.order(NUMBER, other))


def test_with_user_order_off_a_stateless_handlers_messages_go_in_parallel(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """``WAPIPE_USER_ORDER=false``: the same five texts are handled side by side — all five are
    marked read (each receipt taking 0.5 s) before the first answer is sent — and no order is kept
    in Redis for the user."""
    stack = pipeline(WAPIPE_WORKER_PROCESSES="1", WAPIPE_WORKER_THREADS="8", WAPIPE_USER_ORDER="false")
    now = int(time.time())
    fake_graph.script("read", *(Reply(body={"success": True}, delay=0.5) for _ in range(5)))
    texts = [_text(f"wamid.P{n}", f"p{n}", now + n) for n in range(5)]
    assert post_webhook(stack["url"], envelope(texts)) == 200
    wait_for(lambda: len(_answered(fake_graph, USER)) >= 5, timeout=30, what="five answers")
    assert sorted(_answered(fake_graph, USER)) == [f"wamid.P{n}" for n in range(5)]
    assert _kinds(fake_graph) == "r" * 5 + "s" * 5
    assert not rclient.exists(keys.order(NUMBER, USER))


def test_a_message_that_ends_lets_the_users_next_message_go_at_once(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """A conversation bot, ``WAPIPE_ORDER_WAIT_SECONDS`` at its default (30 s): a message whose
    bot raises (no retries left: dead-lettered at once), one whose state is not JSON (dead-lettered
    at once) and one handled without reply come before the user's fourth message, which is
    answered within seconds, not after the 30 s bound; the two dead letters are there."""
    (tmp_path / "ending_bot.py").write_text(ENDING_BOT, encoding="utf-8")
    stack = pipeline(WAPIPE_HANDLER="ending_bot:bot", WAPIPE_RETRY_MAX="0")
    now = int(time.time())
    body = envelope(
        [
            _text("wamid.E1", "raise", now),
            _text("wamid.E2", "not json", now + 1),
            _text("wamid.E3", "quiet", now + 2),
            _text("wamid.E4", "hello", now + 3),
        ]
    )
    posted = time.monotonic()
    assert post_webhook(stack["url"], body) == 200
    wait_for(lambda: _answered(fake_graph, USER), timeout=10, what="the fourth message's answer")
    assert time.monotonic() - posted < 10
    assert _answered(fake_graph, USER) == ["wamid.E4"]
    assert [sent_json(r)["text"]["body"] for r in fake_graph.sends()] == ["answered hello"]
    assert rclient.zcard(keys.dead_letters("wapipe")) == 2
    wait_for(lambda: drained(rclient), timeout=20, what="the queues drained")
    assert not rclient.exists(keys.order(NUMBER, USER))


def test_a_message_being_retried_holds_the_users_next_message_until_it_is_answered(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """The default reply: the user's first message's send fails twice (Meta's 500, retried after a
    back-off), their second message comes meanwhile; it is answered only after the first one, whose
    retries it waited for (it was still being worked on, within the bound)."""
    stack = pipeline(
        WAPIPE_RETRY_MIN_BACKOFF_MS="500", WAPIPE_RETRY_MAX_BACKOFF_MS="1000", WAPIPE_GRAPH_ATTEMPTS="1"
    )
    fake_graph.script(
        "send", graph_error(1, status=500, message="unknown"), graph_error(1, status=500, message="unknown")
    )
    now = int(time.time())
    assert post_webhook(stack["url"], envelope([_text("wamid.R1", "first", now)])) == 200
    wait_for(lambda: fake_graph.sends(), timeout=10, what="the first send to fail")
    assert post_webhook(stack["url"], envelope([_text("wamid.R2", "second", now + 1)])) == 200
    wait_for(lambda: len(_answered(fake_graph, USER)) >= 4, timeout=30, what="both answers")
    assert _answered(fake_graph, USER) == ["wamid.R1", "wamid.R1", "wamid.R1", "wamid.R2"]
    wait_for(lambda: drained(rclient), timeout=20, what="the queues drained")
    assert rclient.zcard(keys.dead_letters("wapipe")) == 0


def test_places_follow_the_webhooks_receipt_and_a_waited_bound_drops_the_earlier_ones(
    redis_url: str, fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """The default reply, stages run by hand: the later webhook parsed first still takes the later
    place; the later message waits while the earlier one has not ended, its wait counted across its
    requeues in its options; once it has waited WAPIPE_ORDER_WAIT_SECONDS the earlier one loses its
    place (counted), and the message goes and ends, leaving nothing in the user's order. (W1 is not
    running: W2 goes back to the queue at once each time, never waiting in its thread.)"""
    import pytest

    from actors import ordering, parse, reply
    from daemon.pipeline import REPLY, Envelope
    from tests.support.meta import meta_bytes
    from tests.support.stages import context, counted, resources

    now = int(time.time())
    first = envelope([_text("wamid.W1", "one", now)])
    second = envelope([_text("wamid.W2", "two", now + 1)])
    with resources(redis_url, fake_graph.url, tmp_path, WAPIPE_ORDER_WAIT_SECONDS="1") as worker:
        parse.run(context(worker), Envelope(meta_bytes(second).decode(), time.time(), "env-2"))
        parse.run(context(worker), Envelope(meta_bytes(first).decode(), time.time() - 0.5, "env-1"))
        order = keys.order(NUMBER, USER)
        assert [m.decode() for m in rclient.zrange(order, 0, -1)] == ["wamid.W1", "wamid.W2"]
        from dramatiq import Message

        queued = [
            REPLY.decode(Message.decode(rclient.hget(keys.queue_messages("wapipe"), i)).kwargs)  # type: ignore[arg-type]
            for i in rclient.lrange(keys.queue("wapipe"), 0, -1)
        ]
        later = next(i for i in queued if i.id == "wamid.W2")
        options: dict[str, Any] = {}
        with pytest.raises(ordering.OrderWait):
            reply.run(worker.context("msg-w2", options), later)  # W1 still being worked on
        assert isinstance(options.get(ordering.WAITING_SINCE), float)
        assert fake_graph.sends() == []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # W2 comes back until it has waited the bound in all
            try:
                reply.run(worker.context("msg-w2", options), later)
                break
            except ordering.OrderWait:
                time.sleep(0.05)
        assert _answered(fake_graph, USER) == ["wamid.W2"]
        assert counted(worker.metrics.ordering_dropped) == 1
        assert not rclient.exists(order)

"""Per-conversation ordering through real workers: one user's messages reach the bot one at a time
and in order, other users run in parallel, and a stalled message holds the next one back only
for WAPIPE_ORDER_WAIT_SECONDS."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.pipeline_helpers import drained, post_webhook
from tests.support.fake_graph import FakeGraph, sent_json
from tests.support.meta import envelope
from tests.support.waiting import wait_for

#: A slow bot that remembers what it saw; "barrier" messages wait until 20 of them are running.
ORDER_BOT = """
import os
import time

import redis

from daemon.bot import Bot
from daemon.messages import Text

bot = Bot()
shared = redis.Redis.from_url(os.environ["REDIS_URL"])


@bot.fallback
def answer(message, conversation):
    text = message.text or message.type
    if text == "barrier":
        shared.incr("test:barrier")
        deadline = time.time() + 20
        while int(shared.get("test:barrier")) < 20 and time.time() < deadline:
            time.sleep(0.02)
        return [Text("through" if int(shared.get("test:barrier")) >= 20 else "stuck", reply_to=message.id)]
    if text == "hold" and shared.set("test:held", 1, nx=True):
        time.sleep(120)  # its first run holds the conversation until the test kills the worker
    seen = conversation.variables.setdefault("seen", [])
    seen.append(text)
    time.sleep(0.3)  # slow enough that overlapping runs of one user's messages would show
    return [Text(f"{text} after {','.join(seen[:-1]) or 'nothing'}", reply_to=message.id)]
"""

USER = "447700900123"


def _text(message_id: str, body: str, at: int, sender: str = USER) -> dict[str, Any]:
    return {"id": message_id, "from": sender, "timestamp": str(at), "type": "text", "text": {"body": body}}


def _answers(fake_graph: FakeGraph) -> dict[str, str]:
    return {
        sent_json(r)["context"]["message_id"]: sent_json(r)["text"]["body"]
        for r in fake_graph.sends()
        if "context" in sent_json(r)
    }


def test_one_users_messages_in_order_and_twenty_users_at_once(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """Three messages of one user in one webhook, two worker processes: each reaches the bot after
    the one before it (the bot's memory is consistent). Then twenty users at once: their twenty
    bots all wait on one barrier and all get through it, so they ran side by side (20 threads per
    process: either process may have fetched all twenty)."""
    (tmp_path / "order_bot.py").write_text(ORDER_BOT, encoding="utf-8")
    stack = pipeline(WAPIPE_HANDLER="order_bot:bot", WAPIPE_WORKER_PROCESSES="2", WAPIPE_WORKER_THREADS="20")
    now = int(time.time())
    body = envelope(
        [
            _text("wamid.O3", "three", now + 2),
            _text("wamid.O1", "one", now),
            _text("wamid.O2", "two", now + 1),
        ]
    )
    assert post_webhook(stack["url"], body) == 200
    wait_for(lambda: len(_answers(fake_graph)) >= 3, timeout=30, what="three answers")
    assert _answers(fake_graph) == {
        "wamid.O1": "one after nothing",
        "wamid.O2": "two after one",
        "wamid.O3": "three after one,two",
    }

    crowd = envelope([_text(f"wamid.U{n}", "barrier", now, sender=f"4477009{n:05d}") for n in range(20)])
    assert post_webhook(stack["url"], crowd) == 200
    wait_for(lambda: len(_answers(fake_graph)) >= 23, timeout=40, what="twenty answers")
    assert [_answers(fake_graph)[f"wamid.U{n}"] for n in range(20)] == ["through"] * 20
    wait_for(lambda: drained(rclient), timeout=20, what="the queues drained")


def test_a_stalled_download_holds_the_next_message_back_only_for_the_bound(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """A user's image whose download trickles, then a text from the same user: the text waits for
    the image at most WAPIPE_ORDER_WAIT_SECONDS (3 s here), then is answered; another user's text
    is answered at once."""
    (tmp_path / "order_bot.py").write_text(ORDER_BOT, encoding="utf-8")
    fake_graph.add_media("slow-1", b"x" * 64, drip_seconds=0.5)  # ~30 s for the whole file
    stack = pipeline(
        WAPIPE_HANDLER="order_bot:bot",
        WAPIPE_ORDER_WAIT_SECONDS="3",
        WHATSAPP_MEDIA_HOSTS="127.0.0.1",
        WAPIPE_MEDIA_MIN_BYTES_PER_SECOND="1",
    )
    now = int(time.time())
    image = {
        "id": "wamid.I1",
        "from": USER,
        "timestamp": str(now),
        "type": "image",
        "image": {"id": "slow-1"},
    }
    assert post_webhook(stack["url"], envelope([image])) == 200
    wait_for(lambda: fake_graph.of_kind("download"), timeout=20, what="the download to start")
    posted = time.monotonic()
    assert post_webhook(stack["url"], envelope([_text("wamid.T1", "later", now + 1)])) == 200
    assert (
        post_webhook(stack["url"], envelope([_text("wamid.Y1", "other", now + 1, sender="447700900777")]))
        == 200
    )
    wait_for(lambda: "wamid.Y1" in _answers(fake_graph), timeout=10, what="the other user's answer")
    other_after = time.monotonic() - posted
    wait_for(lambda: "wamid.T1" in _answers(fake_graph), timeout=20, what="the later text's answer")
    later_after = time.monotonic() - posted
    assert other_after < 2.5, other_after
    assert 2.0 <= later_after < 10, later_after
    assert "wamid.I1" not in _answers(fake_graph)  # still downloading: handled when it can be


def test_a_worker_killed_holding_a_conversation_leaves_it_to_continue_in_order(
    pipeline: Callable[..., dict[str, Any]],
    fake_graph: FakeGraph,
    rclient: redis.Redis,
    tmp_path: Path,
    start_proc: Callable[..., Any],
) -> None:
    """The bot is deciding a user's first message when its worker is SIGKILLed, with the user's
    next two messages waiting behind it. A new worker takes the first one up again once the dead
    worker's heartbeat times out (3 s here, within WAPIPE_ORDER_WAIT_SECONDS): the three are
    answered once each, in order, each seeing the state the one before left."""
    (tmp_path / "order_bot.py").write_text(ORDER_BOT, encoding="utf-8")
    stack = pipeline(
        WAPIPE_HANDLER="order_bot:bot",
        WAPIPE_HEARTBEAT_TIMEOUT_MS="3000",
        WAPIPE_ORDER_WAIT_SECONDS="30",
    )
    now = int(time.time())
    assert post_webhook(stack["url"], envelope([_text("wamid.H1", "hold", now)])) == 200
    wait_for(lambda: rclient.get("test:held"), timeout=20, what="the bot to hold the conversation")
    later = envelope([_text("wamid.H2", "two", now + 1), _text("wamid.H3", "three", now + 2)])
    assert post_webhook(stack["url"], later) == 200
    wait_for(
        lambda: rclient.zcard(f"wapipe:order:620000000000001:{USER}") == 3,
        timeout=20,
        what="the later two queued behind the first",
    )
    stack["worker"].kill()  # SIGKILL to the whole worker tree, mid-decision
    assert _answers(fake_graph) == {}
    start_proc("worker-2", ["worker"], stack["env"])
    wait_for(lambda: len(_answers(fake_graph)) >= 3, timeout=45, what="three answers after recovery")
    wait_for(lambda: drained(rclient), timeout=20, what="the queues drained")
    assert _answers(fake_graph) == {
        "wamid.H1": "hold after nothing",
        "wamid.H2": "two after hold",
        "wamid.H3": "three after hold,two",
    }
    assert len(fake_graph.sends()) == 3, "a message was answered twice"

"""Conversations through the reply stage, against a real Redis and the fake Graph API: a message's
state change is applied once with its replies, whatever retries, redeliveries or replays follow."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from actors import ordering, reply, send
from actors.context import Resources
from actors.errors import ItemRejected, OutcomeUnknown
from daemon.bot import Bot
from daemon.conversation import Conversation, Entry
from daemon.graph import GraphError
from daemon.handler import InboundMessage
from daemon.messages import Text
from daemon.pipeline import MessageItem, Outgoing
from daemon.store import dedup, keys
from tests.support.fake_graph import FakeGraph, Reply
from tests.support.stages import context, counted, resources

NUMBER = "620000000000001"


class CountingBot:
    """Counts its visits in the conversation, and how often it was run."""

    def __init__(self) -> None:
        self.runs = 0
        self.bot = Bot()

        @self.bot.fallback
        def visit(message: InboundMessage, conversation: Conversation) -> list[Text]:
            self.runs += 1
            seen = int(conversation.variables.get("visits", 0))
            conversation.variables["visits"] = seen + 1
            conversation.state = "talking"
            return [Text(f"visit {seen}: {message.text}")]


@pytest.fixture
def counting() -> CountingBot:
    return CountingBot()


@pytest.fixture
def worker(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path, counting: CountingBot
) -> Iterator[Resources]:
    with resources(
        redis_url, fake_graph.url, tmp_path, handler=counting.bot, WAPIPE_HISTORY_MESSAGES="4"
    ) as opened:
        yield opened


def item(
    message_id: str, text: str = "hi", sender: str = "447700900123", at: int | None = None
) -> MessageItem:
    message = {
        "id": message_id,
        "from": sender,
        "timestamp": str(at if at is not None else int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    return MessageItem(message, NUMBER, None, None, time.time(), "env")


def sent_texts(fake_graph: FakeGraph) -> list[str]:
    return [record.json["text"]["body"] for record in fake_graph.sends()]


def test_a_retry_sends_the_decided_reply_without_running_the_bot_again(
    worker: Resources, fake_graph: FakeGraph, counting: CountingBot
) -> None:
    """The send fails after the turn was committed; the retry sends the same reply, and the
    conversation's change is applied once."""
    fake_graph.script("send", *[Reply(status=500, body={"error": {"code": 1, "message": "down"}})] * 3)
    with pytest.raises(GraphError):  # after the Graph client's own 3 attempts
        reply.run(context(worker, "run-1"), item("wamid.C1"))
    reply.run(context(worker, "run-1", retries=1), item("wamid.C1"))
    assert counting.runs == 1
    assert sent_texts(fake_graph) == ["visit 0: hi"] * 4  # 3 refused attempts, then the one accepted
    talk = worker.store.conversations.load(NUMBER, "447700900123")
    assert (talk.state, talk.variables) == ("talking", {"visits": 1})


def test_a_send_in_doubt_replayed_by_the_operator_keeps_the_state_once(
    worker: Resources, fake_graph: FakeGraph, counting: CountingBot
) -> None:
    """A send that may have been delivered is dead-lettered; the operator's ``--resend-unknown``
    replay resends the same reply; the bot ran once and the visit was counted once."""
    fake_graph.script("send", Reply(delay=4.0))  # past the tests' 3 s Graph timeout
    with pytest.raises(OutcomeUnknown):
        reply.run(context(worker), item("wamid.C2"))
    reply.run(context(worker, wapipe_resend_unknown=True, wapipe_replay=True), item("wamid.C2"))
    assert counting.runs == 1
    assert sent_texts(fake_graph)[-1] == "visit 0: hi"
    assert worker.store.conversations.load(NUMBER, "447700900123").variables == {"visits": 1}


def test_the_context_window_keeps_the_last_messages_in_and_out(
    worker: Resources, fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """Three messages: the window holds the last four entries (WAPIPE_HISTORY_MESSAGES=4), oldest
    first, with their direction; another user's conversation is separate."""
    start = int(time.time()) - 60  # Meta's times of them: before now (a later one counts as its receipt)
    for n in range(3):
        reply.run(context(worker), item(f"wamid.H{n}", text=f"m{n}", at=start + n))
    reply.run(context(worker), item("wamid.other", sender="447700900999"))
    talk = worker.store.conversations.load(NUMBER, "447700900123")
    assert [(entry.direction, entry.text) for entry in talk.history] == [
        ("in", "m1"),
        ("out", "visit 1: m1"),
        ("in", "m2"),
        ("out", "visit 2: m2"),
    ]
    assert talk.history[0].id == "wamid.H1"
    assert talk.last_inbound_at == start + 2
    assert worker.store.conversations.load(NUMBER, "447700900999").variables == {"visits": 1}
    assert 0 < rclient.ttl(keys.conversation(NUMBER, "447700900123")) <= 30 * 86_400


def test_the_character_budget_trims_the_oldest_entries(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path, counting: CountingBot
) -> None:
    """With WAPIPE_HISTORY_CHARACTERS, the bot is handed the newest entries that fit."""
    with resources(
        redis_url, fake_graph.url, tmp_path, handler=counting.bot, WAPIPE_HISTORY_CHARACTERS="30"
    ) as worker:
        for n in range(3):
            reply.run(context(worker), item(f"wamid.B{n}", text="x" * 10))
        history = worker.store.conversations.load(NUMBER, "447700900123").history
    assert sum(len(entry.text) for entry in history) <= 30
    assert history[-1].text == "visit 2: xxxxxxxxxx"


def test_a_conversation_that_is_not_json_is_refused_and_nothing_is_kept(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path, rclient: redis.Redis
) -> None:
    """A bot that puts something JSON cannot hold in its variables: the message is dead-lettered
    with the reason, no reply is sent, the conversation is unchanged."""

    def careless(message: InboundMessage, conversation: Conversation) -> list[Any]:
        conversation.variables["when"] = object()
        return [Text("never sent")]

    with (
        resources(redis_url, fake_graph.url, tmp_path, handler=careless) as worker,
        pytest.raises(ItemRejected, match="the conversation cannot be stored"),
    ):
        reply.run(context(worker), item("wamid.J1"))
    assert fake_graph.sends() == []
    assert not rclient.exists(keys.turn(NUMBER, "wamid.J1"))
    assert not rclient.exists(keys.conversation(NUMBER, "447700900123"))


def test_a_conversation_changed_meanwhile_is_decided_again_from_the_new_state(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """While the bot decides message A, message B of the same user commits (another worker):
    A's first decision is not kept; the bot decides A again from B's state, so no change is lost,
    and A's reply is the second decision's, sent once."""
    runs: list[str] = []
    holder: dict[str, Resources] = {}

    def bot(message: InboundMessage, conversation: Conversation) -> list[Text]:
        runs.append(str(message.text))
        if message.text == "A" and len(runs) == 1:
            reply.run(context(holder["worker"]), item("wamid.RB", text="B"))  # B commits meanwhile
        visits = int(conversation.variables.get("visits", 0)) + 1
        conversation.variables["visits"] = visits
        return [Text(f"{message.text} is visit {visits}")]

    with resources(redis_url, fake_graph.url, tmp_path, handler=bot) as worker:
        holder["worker"] = worker
        reply.run(context(worker), item("wamid.RA", text="A"))
        talk = worker.store.conversations.load(NUMBER, "447700900123")
    assert runs == ["A", "B", "A"]
    assert talk.variables == {"visits": 2}
    assert talk.version == 2
    assert sent_texts(fake_graph) == ["B is visit 1", "A is visit 2"]


def test_a_users_messages_reach_the_bot_in_the_order_parse_saw_them(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path, rclient: redis.Redis, counting: CountingBot
) -> None:
    """Three messages of one user in one envelope (Meta's timestamps out of order): the second
    waits while the first is undecided, then goes; another user's message never waits; an earlier
    message older than WAPIPE_ORDER_WAIT_SECONDS no longer holds the later ones back."""
    from actors import parse
    from daemon.pipeline import REPLY, Envelope
    from tests.support.meta import envelope, meta_bytes

    def text(message_id: str, at: int, sender: str = "447700900123") -> dict[str, Any]:
        return {
            "id": message_id,
            "from": sender,
            "timestamp": str(at),
            "type": "text",
            "text": {"body": message_id},
        }

    now = int(time.time())
    body = envelope(
        [
            text("wamid.O3", now + 2),
            text("wamid.O1", now),
            text("wamid.O2", now + 1),
            text("wamid.X", now, "447700900999"),
        ]
    )
    with resources(
        redis_url, fake_graph.url, tmp_path, handler=counting.bot, WAPIPE_ORDER_WAIT_SECONDS="30"
    ) as worker:
        parse.run(context(worker), Envelope(meta_bytes(body).decode(), time.time(), "env"))
        ids = [m.decode() for m in rclient.zrange(keys.order(NUMBER, "447700900123"), 0, -1)]
        assert ids == ["wamid.O1", "wamid.O2", "wamid.O3"]
        items = {i.id: i for i in (REPLY.decode(m.kwargs) for m in _queued(rclient))}
        started = time.monotonic()
        reply.run(context(worker), items["wamid.X"])  # another user: no wait
        assert time.monotonic() - started < 1.5
        with pytest.raises(ordering.OrderWait):
            reply.run(context(worker), items["wamid.O2"])
        assert counting.runs == 1  # only X ran
        reply.run(context(worker), items["wamid.O1"])
        reply.run(context(worker), items["wamid.O2"])
        assert sent_texts(fake_graph) == ["visit 0: wamid.X", "visit 0: wamid.O1", "visit 1: wamid.O2"]
        assert rclient.zrange(keys.order(NUMBER, "447700900123"), 0, -1) == [b"wamid.O3"]
    with resources(
        redis_url, fake_graph.url, tmp_path, handler=counting.bot, WAPIPE_ORDER_WAIT_SECONDS="0.2"
    ) as worker:
        body = envelope([text("wamid.S1", now + 5), text("wamid.S2", now + 6)])
        parse.run(context(worker), Envelope(meta_bytes(body).decode(), time.time(), "env-2"))
        late = {i.id: i for i in (REPLY.decode(m.kwargs) for m in _queued(rclient))}
        started = time.monotonic()
        options: dict[str, Any] = {}
        while True:  # S1 is stuck: S2 waits in the queue (its wait counted in its options), then goes
            try:
                reply.run(worker.context("msg-s2", options), late["wamid.S2"])
                break
            except ordering.OrderWait:
                assert time.monotonic() - started < 2.0
                time.sleep(0.02)
        assert 0.1 < time.monotonic() - started < 2.0


def _queued(rclient: redis.Redis) -> list[Any]:
    from dramatiq import Message

    ids = rclient.lrange(keys.queue("wapipe"), 0, -1)
    rclient.delete(keys.queue("wapipe"))
    return [Message.decode(rclient.hget(keys.queue_messages("wapipe"), i)) for i in ids]  # type: ignore[arg-type]


def test_a_bot_that_asks_for_it_shows_typing_before_it_decides(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """``Bot(typing_indicator=True)``: the message is marked read with a "typing…" indicator
    before the bot runs (one read receipt, before the reply)."""
    bot = Bot(typing_indicator=True)
    seen_reads: list[int] = []

    @bot.fallback
    def slow(message: InboundMessage, conversation: Conversation) -> list[Text]:
        seen_reads.append(len(fake_graph.of_kind("read")))
        return [Text("thought about it")]

    with resources(redis_url, fake_graph.url, tmp_path, handler=bot) as worker:
        reply.run(context(worker), item("wamid.TY1"))
    [read] = fake_graph.of_kind("read")
    assert read.json == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.TY1",
        "typing_indicator": {"type": "text"},
    }
    assert seen_reads == [1]
    assert len(fake_graph.sends()) == 1


def test_the_bot_reads_the_delivery_of_what_it_sent(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path, rclient: redis.Redis
) -> None:
    """The bot's history carries each message it sent with the id Meta gave it and its delivery
    status as parse recorded it (`read`; a `failed` one with Meta's error code); a reply not yet
    reported on has none."""
    seen: list[tuple[Entry, ...]] = []
    bot = Bot()

    @bot.fallback
    def remember(message: InboundMessage, conversation: Conversation) -> list[Text]:
        seen.append(conversation.history)
        return [Text(f"got {message.text}")]

    def status(out_id: str, value: str, code: int | None = None) -> None:
        claims = dedup.Claims()
        claims.add_status(None, "o", 60, False, out_id, value, "1800000000", 600, code)
        claims.write(rclient)

    with resources(redis_url, fake_graph.url, tmp_path, handler=bot) as opened:
        reply.run(context(opened), item("wamid.D1", text="one"))
        first = rclient.get(keys.ledger(NUMBER, "wamid.D1", 0)).decode().removeprefix("sent:")
        status(first, "delivered")
        status(first, "read")
        reply.run(context(opened), item("wamid.D2", text="two"))
        second = rclient.get(keys.ledger(NUMBER, "wamid.D2", 0)).decode().removeprefix("sent:")
        reply.run(context(opened), item("wamid.D3", text="three"))
        status(second, "failed", 131049)
        reply.run(context(opened), item("wamid.D4", text="four"))
    out = [(entry.text, entry.id, entry.status) for entry in seen[2] if entry.direction == "out"]
    assert out == [("got one", first, "read"), ("got two", second, None)]
    failed = [entry for entry in seen[3] if entry.id == second]
    assert [(entry.status, entry.error_code) for entry in failed] == [("failed", 131049)]


def test_a_business_send_waits_its_turn_and_joins_the_history(
    worker: Resources, fake_graph: FakeGraph
) -> None:
    """A send to a user whose message parse has seen but the bot has not answered waits for it
    (back to the queue without using a retry, again and again while it is not answered); then it
    is recorded after the bot's reply in the history, once, and sent inside the window that message
    opened; a retry sends nothing more and records nothing more."""
    user = "447700900123"
    worker.store.order.enter(NUMBER, user, "wamid.B1", time.time())  # as parse does
    agent = Outgoing(
        NUMBER, user, ({"type": "text", "text": {"body": "agent: hello"}},), "agent-1", time.time()
    )
    waiting = context(worker, retries=0)
    with pytest.raises(ordering.OrderWait):
        send.run(waiting, agent)
    assert waiting.options["retries"] == -1  # not counted: the middleware adds one back
    assert fake_graph.sends() == []
    outcome: list[object] = []

    def agent_sends() -> None:  # its retries, back in the queue while the bot has not answered
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                send.run(context(worker, **options), agent)
                outcome.append("sent")
                return
            except ordering.OrderWait:
                time.sleep(0.02)
            except Exception as error:  # reported by the assertion below
                outcome.append(error)
                return

    options = dict(waiting.options)

    assert counted(worker.metrics.ordering_waits) == 1
    waiter = threading.Thread(target=agent_sends)
    waiter.start()
    reply.run(context(worker), item("wamid.B1", text="question"))  # the user's first message opens the window
    waiter.join(timeout=10)
    assert outcome == ["sent"]
    send.run(context(worker), agent)  # a retry
    assert sent_texts(fake_graph) == ["visit 0: question", "agent: hello"]
    talk = worker.store.conversations.load(NUMBER, user)
    assert [(entry.direction, entry.text) for entry in talk.history] == [
        ("in", "question"),
        ("out", "visit 0: question"),
        ("out", "agent: hello"),
    ]
    assert (talk.history[2].answers, talk.history[2].index) == ("send:agent-1", 0)
    assert talk.history[2].id is not None  # sent, no status from Meta yet

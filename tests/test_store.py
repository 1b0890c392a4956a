"""The state store on its own, against a real Redis: queues, dedup, the ledger, dead letters."""

from __future__ import annotations

import json
import time

import pytest
import redis

from daemon.pipeline import PIPELINE_QUEUE, REPLY, MessageItem, message
from daemon.store import deadletters, dedup, keys, scripts
from daemon.store.ledger import Claim, ReplyLedger
from daemon.store.queues import Queue

NUMBER = "620000000000001"


def _item(message_id: str) -> MessageItem:
    return MessageItem({"id": message_id, "type": "text", "from": "1"}, NUMBER, None, None, 0.0, "env")


def _dead_letter(
    rclient: redis.Redis, letter_id: str, message_id: str, reason_type: str = "GraphRejected"
) -> None:
    """A dead letter as the worker leaves it: Dramatiq's XQ entry plus wapipe's reason."""
    made = message(REPLY, _item(message_id)).copy(options={"redis_message_id": letter_id, "retries": 5})
    rclient.zadd(keys.dead_letters(PIPELINE_QUEUE), {letter_id: int(time.time() * 1000)})
    rclient.hset(keys.dead_letter_messages(PIPELINE_QUEUE), letter_id, made.encode())
    deadletters.record_reason(
        rclient, letter_id, {"stage": "reply", "reason": {"type": reason_type, "message": "x"}, "attempts": 6}
    )


def _wakeups(pubsub: redis.client.PubSub, seconds: float) -> list[bytes]:
    """The wake-ups published within ``seconds`` (a bounded wait: it also proves none came after)."""
    woken = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = pubsub.get_message(timeout=0.1)
        if got is not None:
            woken.append(got["data"])
    return woken


def test_every_script_loads_and_the_enqueuers_share_push() -> None:
    """Each Lua file exists; the three scripts that enqueue carry the one ``push``."""
    for name in ("enqueue", "claim", "replay", "record", "reserve", "release"):
        assert scripts.source(name)  # type: ignore[arg-type]
    for name in ("enqueue", "claim", "replay"):
        assert scripts.source(name).count("local function push(") == 1  # type: ignore[arg-type]


def test_an_enqueue_onto_an_empty_queue_wakes_the_workers(rclient: redis.Redis) -> None:
    """The first message on an empty queue publishes its name; the next one, onto a non-empty
    queue, does not (a consumer sleeps only after finding its queue empty)."""
    pubsub = rclient.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.WAKEUP_CHANNEL)
    try:
        queue = Queue(rclient)
        queue.send(REPLY, _item("wamid.Q1"))
        queue.send(REPLY, _item("wamid.Q2"))
        assert _wakeups(pubsub, seconds=1.0) == [PIPELINE_QUEUE.encode()]
    finally:
        pubsub.close()


def test_a_bad_value_fails_its_own_claim_alone(rclient: redis.Redis) -> None:
    """A string Redis cannot take (a lone surrogate) is refused before anything is added."""
    claims = dedup.Claims()
    with pytest.raises(UnicodeEncodeError):
        claims.add_status("wapipe-test-mark", "owner", 60, False, "wamid.\ud800", "read", "1", 60)
    claims.add_message(keys.seen_message("wamid.D1"), "owner", 60, False, message(REPLY, _item("wamid.D1")))
    assert claims.write(rclient) == [True]
    assert dedup.Claims().write(rclient) == []


def test_the_ledger_says_claimed_sent_or_in_doubt(rclient: redis.Redis) -> None:
    """A first claim is ours; after ``sent`` a claim finds it sent; a claim nobody finished is in
    doubt until taken over or released."""
    ledger = ReplyLedger(rclient, dedup_ttl_seconds=60)
    assert ledger.claim(NUMBER, "wamid.L1", 0, "a") is Claim.CLAIMED
    assert ledger.claim(NUMBER, "wamid.L1", 0, "b") is Claim.IN_DOUBT
    ledger.sent(NUMBER, "wamid.L1", 0, "wamid.out", replies=1)
    assert ledger.claim(NUMBER, "wamid.L1", 0, "c") is Claim.SENT
    assert ledger.replies(NUMBER, "wamid.L1") == 1
    assert 60 < rclient.ttl(keys.ledger(NUMBER, "wamid.L1", 0)) <= 60 + 86_400
    assert ledger.claim(NUMBER, "wamid.L2", 0, "a") is Claim.CLAIMED
    ledger.release(NUMBER, "wamid.L2", 0)
    assert ledger.claim(NUMBER, "wamid.L2", 0, "b") is Claim.CLAIMED


def test_a_dead_letter_is_replayed_once_and_wakes_the_workers(rclient: redis.Redis) -> None:
    """Replay enqueues the same stage and argument marked as a replay, removes the letter and its
    reason, and publishes the wake-up; replaying it again finds nothing."""
    _dead_letter(rclient, "dl-1", "wamid.X1")
    letter = deadletters.find(rclient, "dl-")
    assert letter.what() == {
        "kind": "item",
        "message_id": "wamid.X1",
        "type": "text",
        "phone_number_id": NUMBER,
        "envelope_id": "env",
    }
    pubsub = rclient.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.WAKEUP_CHANNEL)
    try:
        replayed = deadletters.replay(rclient, letter)
        assert _wakeups(pubsub, seconds=1.0) == [PIPELINE_QUEUE.encode()]
    finally:
        pubsub.close()
    assert replayed.options[deadletters.REPLAY] is True
    assert REPLY.decode(replayed.kwargs) == _item("wamid.X1")
    assert rclient.lrange(keys.queue(PIPELINE_QUEUE), 0, -1) == [
        replayed.options["redis_message_id"].encode()
    ]
    assert deadletters.all_letters(rclient) == []
    assert not rclient.hexists(keys.DEAD_LETTER_REASONS, "dl-1")
    with pytest.raises(deadletters.NotFound):
        deadletters.replay(rclient, letter)
    assert rclient.llen(keys.queue(PIPELINE_QUEUE)) == 1


def test_a_send_in_doubt_is_replayed_only_when_the_operator_says_so(rclient: redis.Redis) -> None:
    """An OutcomeUnknown dead letter may have reached the user: refused without resend_unknown."""
    _dead_letter(rclient, "dl-2", "wamid.X2", reason_type="OutcomeUnknown")
    letter = deadletters.find(rclient, "dl-2")
    with pytest.raises(deadletters.MayHaveBeenDelivered):
        deadletters.replay(rclient, letter)
    replayed = deadletters.replay(rclient, letter, resend_unknown=True)
    assert replayed.options[deadletters.RESEND_UNKNOWN] is True


def test_purge_removes_old_letters_and_orphan_reasons(rclient: redis.Redis) -> None:
    """Letters older than the retention go, with their reasons; a reason without a letter goes too."""
    _dead_letter(rclient, "dl-old", "wamid.X3")
    _dead_letter(rclient, "dl-new", "wamid.X4")
    rclient.zadd(keys.dead_letters(PIPELINE_QUEUE), {"dl-old": int((time.time() - 7200) * 1000)})
    rclient.hset(keys.DEAD_LETTER_REASONS, "orphan", json.dumps({}))
    assert deadletters.purge(rclient, older_than_seconds=3600) == 1
    assert [letter.id for letter in deadletters.all_letters(rclient)] == ["dl-new"]
    assert set(rclient.hkeys(keys.DEAD_LETTER_REASONS)) == {b"dl-new"}


def test_active_conversations_are_those_whose_window_is_open(rclient: redis.Redis) -> None:
    """parse's claim puts each user's conversation in the active set at their message's time; the
    count keeps those of the last 24 hours and forgets the older ones."""
    from daemon.store import conversations

    now = time.time()
    for user, hours_ago in (("1", 1), ("2", 23), ("3", 25)):
        claims = dedup.Claims()
        message_id = f"wamid.A{user}"
        claims.add_message(keys.seen_message(message_id), "o", 60, False, message(REPLY, _item(message_id)))
        claims.date_last(NUMBER, user, message_id, int(now - hours_ago * 3600), 60)
        assert claims.write(rclient) == [True]
    assert conversations.active(rclient, now) == 2
    assert rclient.zscore(keys.ACTIVE_CONVERSATIONS, f"{NUMBER}:3") is None  # past its window: gone

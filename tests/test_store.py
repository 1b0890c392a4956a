"""The state store on its own, against a real Redis: queues, dedup, the ledger, dead letters."""

from __future__ import annotations

import json
import time

import pytest
import redis

from daemon.pipeline import PIPELINE_QUEUE, REPLY, MessageItem, message
from daemon.store import deadletters, dedup, keys, records, scripts
from daemon.store.ledger import Claim, ReplyLedger, Subject
from daemon.store.queues import Queue

NUMBER = "620000000000001"


NOW = int(time.time())


def _item(message_id: str, at: int = NOW) -> MessageItem:
    return MessageItem(
        {"id": message_id, "type": "text", "from": "1", "timestamp": str(at)}, NUMBER, None, None, 0.0, "env"
    )


def _claim(claims: dedup.Claims, message_id: str, owner: str = "o", at: int = NOW) -> None:
    """Add the claim parse makes for a fresh text message ``message_id`` (Meta's timestamp ``at``)."""
    claims.add_message(
        keys.seen_message(message_id), owner, 60, False, message(REPLY, _item(message_id, at)),
        None, (NUMBER, message_id, at),
    )  # fmt: skip


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
    for name in ("enqueue", "claim", "replay", "record", "ledger", "reserve", "release"):
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
    _claim(claims, "wamid.D1")
    assert claims.write(rclient) == [True]
    assert dedup.Claims().write(rclient) == []


def test_the_ledger_says_claimed_sent_or_in_doubt(rclient: redis.Redis) -> None:
    """A first claim is ours; after ``sent`` a claim finds it sent; a claim nobody finished is in
    doubt until taken over or released."""
    ledger = ReplyLedger(rclient, dedup_ttl_seconds=60)
    first, second = Subject(NUMBER, "wamid.L1", NOW), Subject(NUMBER, "wamid.L2", NOW)
    assert ledger.claim(first, 0) is Claim.CLAIMED
    assert ledger.claim(first, 0) is Claim.IN_DOUBT
    assert ledger.claim(first, 1) is Claim.CLAIMED
    ledger.sent(first, 0, "wamid.out")
    ledger.refused(first, 1, "window", replies=2)
    assert ledger.claim(first, 0) is Claim.SENT
    assert ledger.claim(first, 1) is Claim.SENT
    assert ledger.replies(first) == 2
    assert ledger.entries(first) == ["sent:wamid.out", "refused:window"]
    assert 60 < rclient.ttl(keys.ledger(NUMBER, "wamid.L1", 0)) <= 60 + 86_400
    assert ledger.claim(second, 0) is Claim.CLAIMED
    assert ledger.entries(second) == ["sending"]
    assert ledger.replies(second) is None
    ledger.release(second, 0)
    assert ledger.entries(second) == []
    assert ledger.claim(second, 0) is Claim.CLAIMED
    ledger.take_over(second, 0)
    ledger.handled(second, 0)
    assert ledger.replies(second) == 0


def test_a_message_is_claimed_once_in_its_record(rclient: redis.Redis) -> None:
    """Parse claims a message in its record: Meta's redelivery (another parse attempt) finds it a
    duplicate, a retried parse (the same attempt) hands it on again; the same id at another time
    (a different record) is not mistaken for it, and the ledger's marks keep its claim."""
    claims = dedup.Claims()
    _claim(claims, "wamid.R1", owner="attempt-1:0")
    assert claims.write(rclient) == [True]
    for owner, fresh in (("attempt-2:0", False), ("attempt-1:0", True)):
        again = dedup.Claims()
        _claim(again, "wamid.R1", owner=owner)
        assert again.write(rclient) == [fresh]
    ReplyLedger(rclient, 60).sent(Subject(NUMBER, "wamid.R1", NOW), 0, "wamid.out", replies=1)
    retried = dedup.Claims()
    _claim(retried, "wamid.R1", owner="attempt-1:0")
    assert retried.write(rclient) == [True]
    record = records.read(rclient, NUMBER, "wamid.R1", NOW)
    assert record is not None
    assert (record.handled, record.states) == (1, ("sent",))
    elsewhere = dedup.Claims()
    _claim(elsewhere, "wamid.R2", owner="attempt-3:0", at=NOW - 7 * 86_400)
    assert elsewhere.write(rclient) == [True]


def test_records_stay_small_as_messages_grow(rclient: redis.Redis) -> None:
    """A bucket's shards are sized from the bucket before it (64 at least), so each holds a few dozen
    records and Redis keeps it in its compact encoding: 4,000 messages handled (claimed, answered
    once, done) cost under 40 bytes each; the keys live for the window after their last record."""
    ledger = ReplyLedger(rclient, dedup_ttl_seconds=8 * 86_400)
    start = (NOW // records.BUCKET_SECONDS - 20) * records.BUCKET_SECONDS
    for bucket in range(2):
        for batch in range(40):
            claims = dedup.Claims()
            for n in range(batch * 100, batch * 100 + 100):
                _claim(
                    claims,
                    f"wamid.G{bucket}.{n}",
                    owner=f"attempt-{batch}:{n}",
                    at=start + bucket * 600 + n % 600,
                )
            assert claims.write(rclient) == [True] * 100
    for n in range(4_000):
        subject = Subject(NUMBER, f"wamid.G1.{n}", start + 600 + n % 600)
        assert ledger.claim(subject, 0) is Claim.CLAIMED
        ledger.handled(subject, 1)
    first, second = (start // records.BUCKET_SECONDS + b for b in range(2))
    assert rclient.hget(keys.record_bucket(first), "s") == b"64"  # nothing before it: the least
    assert rclient.hget(keys.record_bucket(second), "s") == b"128"  # 4,000 before it: ~31 a shard
    shards = [keys.record_shard(second, shard) for shard in range(128)]
    assert sum(rclient.hlen(shard) for shard in shards) == 4_000
    assert {rclient.object("encoding", shard) for shard in shards} <= {b"ziplist", b"listpack"}
    in_second = sum(int(rclient.memory_usage(key) or 0) for key in [*shards, keys.record_bucket(second)])
    assert in_second / 4_000 < 40, in_second / 4_000
    # A bucket already over keeps its records for the TTL (parse's here) from their writing.
    ends = max((second + 1) * records.BUCKET_SECONDS, time.time())
    expected = ends + 60 + records.EXTRA_SECONDS - time.time()
    assert abs(rclient.ttl(shards[0]) - expected) < 5


def test_an_earlier_releases_marks_still_decide(rclient: redis.Redis) -> None:
    """Where a message has no record, what an earlier release wrote decides: its seen mark makes a
    redelivery a duplicate, its ledger entry says sent or in doubt, its handled mark says done; a
    released claim clears its entry."""
    rclient.set(keys.seen_message("wamid.E1"), "old-attempt:0", ex=600)
    claims = dedup.Claims()
    _claim(claims, "wamid.E1", owner="new-attempt:0")
    assert claims.write(rclient) == [False]
    ledger = ReplyLedger(rclient, 60)
    sent, doubt = Subject(NUMBER, "wamid.E2", NOW), Subject(NUMBER, "wamid.E3", NOW)
    rclient.set(keys.ledger(NUMBER, "wamid.E2", 0), "sent:wamid.out.old", ex=600)
    rclient.set(keys.handled(NUMBER, "wamid.E2"), "1", ex=600)
    rclient.set(keys.ledger(NUMBER, "wamid.E3", 0), "sending:old:1767225600.000", ex=600)
    assert ledger.claim(sent, 0) is Claim.SENT
    assert ledger.replies(sent) == 1
    assert ledger.entries(sent) == ["sent:wamid.out.old"]
    assert ledger.claim(doubt, 0) is Claim.IN_DOUBT
    ledger.release(doubt, 0)
    assert ledger.claim(doubt, 0) is Claim.CLAIMED


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
        _claim(claims, message_id)
        claims.date_last(NUMBER, user, message_id, int(now - hours_ago * 3600), 60, 60)
        assert claims.write(rclient) == [True]
    assert conversations.active(rclient, now) == 2
    assert rclient.zscore(keys.ACTIVE_CONVERSATIONS, f"{NUMBER}:3") is None  # past its window: gone


def test_what_trace_reads_lives_its_own_retention(rclient: redis.Redis) -> None:
    """A sent message's id, its link to what it answered and the run's journey event are kept for
    the trace retention; the record that keeps the message from being sent again stays for the
    dedup window plus a day."""
    ledger = ReplyLedger(rclient, dedup_ttl_seconds=8 * 86_400, kept_seconds=3_600)
    subject = Subject(NUMBER, "wamid.K1", NOW)
    assert ledger.claim(subject, 0) is Claim.CLAIMED
    ledger.sent(subject, 0, "wamid.out.K1", replies=1, journey=("wamid.K1", '{"stage":"reply"}'))
    for key in (keys.ledger(NUMBER, "wamid.K1", 0), keys.outbound("wamid.out.K1"), keys.journey("wamid.K1")):
        assert 3_500 < rclient.ttl(key) <= 3_600, key
    [shard] = [
        key for key in rclient.scan_iter(match="wapipe:rec:*:*") if rclient.hexists(key, subject.digest)
    ]
    assert rclient.ttl(shard) > 9 * 86_400 - 60
    assert ledger.replies(subject) == 1


def test_a_users_index_keeps_the_subjects_that_still_have_records(rclient: redis.Redis) -> None:
    """The index `wapipe forget` follows keeps a user's subjects for the record TTL after each was
    added, not for as long as the user keeps writing; an earlier release's plain set is taken over
    (its members kept) on the next add."""
    from daemon.store.conversations import Conversations

    index = keys.user_messages(NUMBER, "447700900555")
    rclient.sadd(index, "wamid.old-1", "wamid.old-2")  # as the earlier release kept it
    claims = dedup.Claims()
    _claim(claims, "wamid.I1")
    claims.date_last(NUMBER, "447700900555", "wamid.I1", NOW, 86_400, 3_600)
    assert claims.write(rclient) == [True]
    assert rclient.type(index) == b"zset"
    assert set(rclient.zrange(index, 0, -1)) == {b"wamid.old-1", b"wamid.old-2", b"wamid.I1"}
    assert 3_500 < rclient.ttl(index) <= 3_600
    rclient.zadd(index, {"wamid.long-ago": NOW - 7_200})  # added two hours ago: past the 1 h kept
    talk = Conversations(
        rclient, history_messages=10, history_characters=0, ttl_seconds=86_400, turn_ttl_seconds=3_600
    )
    talk.note(NUMBER, "447700900555", subject="send:k-1")
    assert set(rclient.zrange(index, 0, -1)) == {b"wamid.old-1", b"wamid.old-2", b"wamid.I1", b"send:k-1"}

"""Each stage alone: ``run(context, argument)`` against a real Redis and the fake Graph API, no worker.

What a stage hands on is read back from its queue exactly as the next stage would decode it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Message

from actors import fetch_media, parse, reply, verify
from actors.context import Resources
from actors.errors import EnvelopeRejected, GraphRejected, OutcomeUnknown
from actors.sending import HELD_SLOTS, SendDeferred, SendingPaused
from daemon.messages import Image
from daemon.pipeline import (
    FETCH_MEDIA,
    MEDIA_QUEUE,
    PARSE,
    PIPELINE_QUEUE,
    REPLY,
    Envelope,
    MessageItem,
    Webhook,
    stage_named,
)
from daemon.signature import sign
from daemon.store import keys, statuses
from daemon.store.ledger import Claim, Subject
from tests.conftest import APP_SECRET
from tests.support.fake_graph import FakeGraph, b64_sha256, graph_error, media_bytes
from tests.support.meta import envelope, meta_bytes, text_envelope
from tests.support.stages import context, counted, resources

NUMBER = "620000000000001"


@pytest.fixture
def worker(redis_url: str, fake_graph: FakeGraph, tmp_path: Path) -> Iterator[Resources]:
    with resources(redis_url, fake_graph.url, tmp_path, WHATSAPP_MEDIA_HOSTS="127.0.0.1") as opened:
        yield opened


def queued(rclient: redis.Redis, queue: str) -> list[Message[Any]]:
    """The messages waiting on ``queue``, oldest first."""
    ids = rclient.lrange(keys.queue(queue), 0, -1)
    return [Message.decode(rclient.hget(keys.queue_messages(queue), redis_id)) for redis_id in ids]  # type: ignore[arg-type]


def handed_on(rclient: redis.Redis, queue: str) -> list[tuple[str, Any]]:
    """(stage, decoded argument) of each message waiting on ``queue``."""
    return [(m.actor_name, stage_named(m.actor_name).decode(m.kwargs)) for m in queued(rclient, queue)]


def _envelope(body: dict[str, Any], envelope_id: str = "env-1") -> Envelope:
    return Envelope(meta_bytes(body).decode(), time.time(), envelope_id)


def _item(message_id: str = "wamid.S1", **message: Any) -> MessageItem:
    return MessageItem(
        message={"id": message_id, "from": "447700900123", "type": "text", "text": {"body": "hi"}} | message,
        phone_number_id=NUMBER,
        contact=None,
        display_phone_number="15557650100",
        received_at=time.time(),
        envelope_id="env-1",
    )


# --- verify ---------------------------------------------------------------------------------------


def test_verify_hands_a_signed_envelope_to_parse(worker: Resources, rclient: redis.Redis) -> None:
    """A webhook whose stored bytes carry the app secret's signature goes on to parse, whole."""
    body = meta_bytes(text_envelope("wamid.V1"))
    verify.run(context(worker, "env-v1"), Webhook(body.decode(), sign(body, APP_SECRET), 1.5))
    [(stage, argument)] = handed_on(rclient, PIPELINE_QUEUE)
    assert stage == PARSE.name
    assert argument == Envelope(body.decode(), 1.5, "env-v1")


def test_verify_rejects_a_forged_or_malformed_envelope(worker: Resources, rclient: redis.Redis) -> None:
    """A wrong signature, a body that is not a webhook: rejected for good, nothing handed on."""
    body = meta_bytes(text_envelope("wamid.V2"))
    with pytest.raises(EnvelopeRejected, match="signature of the stored bytes"):
        verify.run(context(worker), Webhook(body.decode(), sign(body, "not-the-secret"), 0.0))
    other = json.dumps({"object": "page"}).encode()
    with pytest.raises(EnvelopeRejected, match="not a WhatsApp webhook"):
        verify.run(context(worker), Webhook(other.decode(), sign(other, APP_SECRET), 0.0))
    assert queued(rclient, PIPELINE_QUEUE) == []


def test_verify_drops_an_envelope_without_changes(worker: Resources, rclient: redis.Redis) -> None:
    """An envelope with no change has nothing for parse."""
    body = json.dumps({"object": "whatsapp_business_account", "entry": []}).encode()
    verify.run(context(worker), Webhook(body.decode(), sign(body, APP_SECRET), 0.0))
    assert queued(rclient, PIPELINE_QUEUE) == []


# --- parse ----------------------------------------------------------------------------------------


def test_parse_routes_messages_and_skips_duplicates(worker: Resources, rclient: redis.Redis) -> None:
    """Text goes to reply, media to fetch_media; the same ids in another delivery are duplicates;
    the same parse retried hands them on again (the ledger keeps that from answering twice)."""
    image = {"id": "wamid.P2", "from": "447700900123", "type": "image", "image": {"id": "m1"}}
    text = {"id": "wamid.P1", "from": "447700900123", "type": "text", "text": {"body": "hi"}}
    first = _envelope(envelope([text, image]))
    parse.run(context(worker, "attempt-1"), first)
    [(stage, item)] = handed_on(rclient, PIPELINE_QUEUE)
    assert (stage, item.id, item.phone_number_id) == (REPLY.name, "wamid.P1", NUMBER)
    assert [(s, i.id) for s, i in handed_on(rclient, MEDIA_QUEUE)] == [(FETCH_MEDIA.name, "wamid.P2")]

    parse.run(context(worker, "attempt-2"), _envelope(envelope([text, image]), "env-2"))
    assert len(queued(rclient, PIPELINE_QUEUE)) == 1  # a duplicate delivery hands nothing on
    assert len(queued(rclient, MEDIA_QUEUE)) == 1
    assert counted(worker.metrics.duplicates, "message") == 2

    parse.run(context(worker, "attempt-1"), first)  # the first parse, retried
    assert len(queued(rclient, PIPELINE_QUEUE)) == 2
    parse.run(context(worker, "attempt-3", wapipe_replay=True), first)  # an operator's replay
    assert len(queued(rclient, PIPELINE_QUEUE)) == 3
    # Without a conversation bot nothing kept under a message outlives the 72 h of the sent ids (and
    # their statuses): the user's index keeps the message for `wapipe forget` that long.
    index = keys.user_messages(NUMBER, "447700900123")
    assert set(rclient.zrange(index, 0, -1)) == {b"wamid.P1", b"wamid.P2"}
    assert 72 * 3600 - 60 < rclient.ttl(index) <= 72 * 3600
    # A conversation bot keeps each message's turn for the dedup window plus a day: so does the index.
    talking = dataclasses.replace(worker, conversational=True)
    other = {"id": "wamid.P3", "from": "447700900124", "type": "text", "text": {"body": "hi"}}
    parse.run(context(talking, "attempt-4"), _envelope(envelope([other]), "env-4"))
    assert 9 * 86_400 - 60 < rclient.ttl(keys.user_messages(NUMBER, "447700900124")) <= 9 * 86_400


def test_parse_records_statuses_monotonically(worker: Resources, rclient: redis.Redis) -> None:
    """``read`` then a late ``delivered``: the status stays ``read``."""

    def status_envelope(status: str, envelope_id: str) -> Envelope:
        body = envelope([])
        value = body["entry"][0]["changes"][0]["value"]
        value.pop("messages")
        value["statuses"] = [
            {"id": "wamid.OUT1", "status": status, "timestamp": "1767225601", "recipient_id": "447700900123"}
        ]
        return _envelope(body, envelope_id)

    parse.run(context(worker), status_envelope("read", "e1"))
    parse.run(context(worker), status_envelope("delivered", "e2"))
    assert statuses.latest(rclient, "wamid.OUT1") == statuses.Status("read", "1767225601")
    assert 2 * 86_400 < rclient.ttl(keys.status("wamid.OUT1")) <= 3 * 86_400  # WAPIPE_STATUS_RETENTION_DAYS
    assert queued(rclient, PIPELINE_QUEUE) == []


def test_parse_dead_letters_a_bad_item_alone(worker: Resources, rclient: redis.Redis) -> None:
    """A message that cannot be handled is dead-lettered with its reason; its neighbour goes on."""
    good = {"id": "wamid.G", "from": "447700900123", "type": "text", "text": {"body": "hi"}}
    bad = {"id": "wamid.B", "from": "447700900123", "type": ["text"]}
    parse.run(context(worker, "attempt-b"), _envelope(envelope([bad, good])))
    assert [item.id for _, item in handed_on(rclient, PIPELINE_QUEUE)] == ["wamid.G"]
    [letter_id] = rclient.zrange(keys.dead_letters(PIPELINE_QUEUE), 0, -1)
    record = json.loads(rclient.hget(keys.DEAD_LETTER_REASONS, letter_id))  # type: ignore[arg-type]
    assert record["reason"]["type"] == "ItemRejected"
    assert record["stage"] == REPLY.name


# --- fetch_media ----------------------------------------------------------------------------------


def test_fetch_media_stores_the_file_and_hands_it_to_reply(
    worker: Resources, rclient: redis.Redis, fake_graph: FakeGraph
) -> None:
    """The file is looked up, downloaded, verified against the webhook's hash and stored; reply
    receives the item with where it is."""
    fake_graph.add_media("m9")
    content = media_bytes("m9")
    item = _item("wamid.M1", type="image", image={"id": "m9", "sha256": b64_sha256(content)})
    fetch_media.run(context(worker), item)
    [(stage, handed)] = handed_on(rclient, PIPELINE_QUEUE)
    assert stage == REPLY.name
    stored = handed.stored_media
    assert stored is not None
    assert stored.sha256_ok
    assert (stored.size, stored.mime_type) == (len(content), "image/jpeg")
    assert Path(stored.path).read_bytes() == content
    assert handed.message == item.message


def test_fetch_media_answers_without_a_file_it_cannot_have(
    worker: Resources, rclient: redis.Redis, fake_graph: FakeGraph
) -> None:
    """A media id the Graph API refuses: reply still gets the message, without a file."""
    fetch_media.run(context(worker), _item("wamid.M2", type="image", image={"id": "unknown"}))
    [(_, handed)] = handed_on(rclient, PIPELINE_QUEUE)
    assert handed.stored_media is None
    assert counted(worker.metrics.media_downloads, "failed") == 1


# --- reply ----------------------------------------------------------------------------------------


def test_reply_sends_once_and_records_it(
    worker: Resources, rclient: redis.Redis, fake_graph: FakeGraph
) -> None:
    """The default reply goes out once, marked read first; a rerun finds it sent and sends nothing."""
    item = _item("wamid.R1")
    reply.run(context(worker, "reply-1"), item)
    [sent] = fake_graph.sends()
    assert sent.json["to"] == "+447700900123"
    assert len(fake_graph.of_kind("read")) == 1
    assert rclient.get(keys.ledger(NUMBER, "wamid.R1", 0)) == b"sent:wamid.out.1"
    assert worker.store.ledger.replies(Subject(NUMBER, "wamid.R1", item.at)) == 1
    reply.run(context(worker, "reply-2"), item)
    assert len(fake_graph.sends()) == 1


def test_reply_never_resends_a_send_in_doubt_unless_told(
    worker: Resources, rclient: redis.Redis, fake_graph: FakeGraph
) -> None:
    """A send left claimed (``sending``) by a dead attempt: OutcomeUnknown, no send; an operator's
    ``--resend-unknown`` replay sends it."""
    assert worker.store.ledger.claim(Subject(NUMBER, "wamid.R2", _item("wamid.R2").at), 0) is Claim.CLAIMED
    with pytest.raises(OutcomeUnknown):
        reply.run(context(worker), _item("wamid.R2"))
    assert fake_graph.sends() == []
    reply.run(context(worker, wapipe_resend_unknown=True), _item("wamid.R2"))
    assert len(fake_graph.sends()) == 1


def test_reply_errors_release_retry_or_dead_letter(
    worker: Resources, rclient: redis.Redis, fake_graph: FakeGraph
) -> None:
    """A throttled send is retried after Meta's wait; a permanent refusal is dead-lettered; both
    give their ledger entry back (the send surely did not happen)."""
    fake_graph.script("send", graph_error(130429, 400), graph_error(131026, 400))
    with pytest.raises(dramatiq.Retry) as throttled:
        reply.run(context(worker), _item("wamid.R3"))
    assert throttled.value.delay == 1_000  # Meta's 2 s, clamped to the tests' WAPIPE_RETRY_MAX_BACKOFF_MS
    subject = Subject(NUMBER, "wamid.R3", _item("wamid.R3").at)
    assert worker.store.ledger.entries(subject) == []
    with pytest.raises(GraphRejected):
        reply.run(context(worker), _item("wamid.R3"))
    assert worker.store.ledger.entries(subject) == []
    assert rclient.get(keys.ledger(NUMBER, "wamid.R3", 0)) is None


def test_reply_pauses_the_number_on_a_refused_token(
    worker: Resources, rclient: redis.Redis, fake_graph: FakeGraph
) -> None:
    """Token refused: the number is paused and the message waits without using a retry; the
    probe's success resumes sending."""
    fake_graph.script("send", graph_error(190, 401))
    run = context(worker, retries=2)
    with pytest.raises(SendingPaused):
        reply.run(run, _item("wamid.R4"))
    assert run.options["retries"] == 1  # the retry middleware adds it back
    assert worker.store.pause.paused(NUMBER)
    rclient.delete(keys.probe(NUMBER))
    reply.run(context(worker), _item("wamid.R4"))
    assert not worker.store.pause.paused(NUMBER)
    assert len(fake_graph.sends()) == 2


def test_reply_uploads_a_local_file_once_and_sends_it_by_id(
    redis_url: str, rclient: redis.Redis, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """A bot's ``Image(file=…)`` is uploaded (multipart: the bytes, their type, messaging_product)
    and sent by the new media id; the same file for a second user is not uploaded again. A type
    Meta refuses (131053) is dead-lettered with its code, and its ledger entry given back."""
    menu = tmp_path / "menu.png"
    menu.write_bytes(b"\x89PNG menu of the day")

    def bot(message: Any) -> list[Image]:
        return [Image(file=menu, caption="Today")]

    with resources(redis_url, fake_graph.url, tmp_path, handler=bot) as opened:
        reply.run(context(opened), _item("wamid.U1"))
        reply.run(context(opened), _item("wamid.U2", **{"from": "447700900124"}))
        [upload] = fake_graph.of_kind("media_upload")
        assert upload.path == f"/v25.0/{NUMBER}/media"
        assert upload.json == {
            "messaging_product": "whatsapp",
            "type": "image/png",
            "file": b"\x89PNG menu of the day",
            "file_type": "image/png",
            "filename": "menu.png",
        }
        media_id = rclient.get(keys.uploaded(NUMBER, hashlib.sha256(menu.read_bytes()).hexdigest()))
        assert media_id is not None
        assert [sent.json["image"] for sent in fake_graph.sends()] == [
            {"caption": "Today", "id": media_id.decode()}
        ] * 2

        menu.write_bytes(b"\x89PNG a new menu")
        fake_graph.script("media_upload", graph_error(131053, 400))
        with pytest.raises(GraphRejected) as refused:
            reply.run(context(opened), _item("wamid.U3"))
        assert refused.value.details["code"] == 131053
        assert rclient.get(keys.ledger(NUMBER, "wamid.U3", 0)) is None
        assert len(fake_graph.sends()) == 2


def test_reply_waits_for_its_pair_slot_in_the_delay_queue_holding_it(
    redis_url: str, rclient: redis.Redis, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """A reply whose pair slot is far is delayed to exactly that slot, which it holds: the next
    message gets the slot after it, the wait uses up no retry, and the run that comes back sends
    on the slot it holds (no new reservation, no second read receipt). A send that then fails
    gives its slot back, and its retry reserves anew."""
    interval_us = 300_000
    pair = keys.rate_pair(NUMBER, "+447700900123")
    with resources(
        redis_url, fake_graph.url, tmp_path, WAPIPE_PAIR_INTERVAL_MS="300", WAPIPE_PAIR_BURST="1"
    ) as opened:
        reply.run(context(opened), _item("wamid.P0"))  # the burst's one
        first, second = context(opened, retries=2), context(opened)
        with pytest.raises(SendDeferred) as deferred:
            reply.run(first, _item("wamid.P1"))
        assert first.options["retries"] == 1  # the retry middleware adds it back
        held = first.options[HELD_SLOTS]
        assert held["index"] == 0
        assert set(held["slots"]) == {"pair"}  # the number's slot is taken when the pair's is near
        with pytest.raises(SendDeferred) as later:
            reply.run(second, _item("wamid.P2"))
        assert second.options[HELD_SLOTS]["slots"]["pair"] - held["slots"]["pair"] == interval_us
        assert 100 <= deferred.value.delay <= 300
        assert later.value.delay - deferred.value.delay >= 290
        schedule = rclient.get(pair)
        time.sleep(deferred.value.delay / 1000)  # the delay queue's wait
        back = context(opened, **(first.options | {"retries": 2}))
        reply.run(back, _item("wamid.P1"))
        assert HELD_SLOTS not in back.options
        assert rclient.get(pair) == schedule  # sent on the slot it held: nothing more reserved
        assert len(fake_graph.sends()) == 2
        assert len(fake_graph.of_kind("read")) == 3  # P0, P1, P2: none again for P1's return
        fake_graph.script("send", graph_error(130429, 400))
        time.sleep((later.value.delay - deferred.value.delay) / 1000)
        failed = context(opened, **second.options)
        with pytest.raises(dramatiq.Retry):
            reply.run(failed, _item("wamid.P2"))
        assert HELD_SLOTS not in failed.options  # its retry reserves a slot of its own
        assert int(rclient.get(pair)) < int(schedule)  # given back: the retry may go now
        assert opened.store.limiter.reserve(NUMBER, "+447700900123").wait_ms == 0

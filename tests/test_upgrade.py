"""Upgrades keep working: what the previous release left in Redis is handled by this one.

Every record below is written byte for byte as release 0.x before the state store (commit
05985ed) wrote it — literal JSON and key names, not made by today's code — and then a worker of
this release runs over it. A redelivered message is never answered twice.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import redis

from tests.pipeline_helpers import dlq_cli, drained, post_webhook, replies_to
from tests.support.fake_graph import FakeGraph
from tests.support.meta import text_envelope
from tests.support.waiting import wait_for

PNID = "620000000000001"


def _old_reply_message(redis_id: str, message_id: str, inbound_id: str) -> str:
    """A ``reply`` message as the previous release enqueued it (Dramatiq's encoding of its kwargs)."""
    return json.dumps(
        {
            "queue_name": "wapipe",
            "actor_name": "reply",
            "args": [],
            "kwargs": {
                "item": {
                    "message": {
                        "from": "447700900123",
                        "id": inbound_id,
                        "timestamp": str(int(time.time())),
                        "text": {"body": "from the old release"},
                        "type": "text",
                    },
                    "contact": {"profile": {"name": "Ana"}, "wa_id": "447700900123"},
                    "phone_number_id": PNID,
                    "display_phone_number": "15557650100",
                    "received_at": time.time(),
                    "envelope_id": "old-envelope",
                }
            },
            "options": {"redis_message_id": redis_id},
            "message_id": message_id,
            "message_timestamp": int(time.time() * 1000),
        },
        separators=(",", ":"),
    )


def _queue_old(rclient: redis.Redis, redis_id: str, data: str) -> None:
    rclient.hset("dramatiq:wapipe.msgs", redis_id, data)
    rclient.rpush("dramatiq:wapipe", redis_id)


def _answers(fake_graph: FakeGraph, inbound_id: str) -> list[Any]:
    return [r for r in fake_graph.sends() if (r.json.get("context") or {}).get("message_id") == inbound_id]


def test_the_previous_releases_records_are_handled(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """Queued messages, dedup marks, ledger entries and dead letters of the previous release."""
    # A reply queued before the upgrade: answered once.
    _queue_old(rclient, "old-q-1", _old_reply_message("old-q-1", "old-m-1", "wamid.U1"))
    # A message the old release already answered, redelivered after it: the ledger says sent.
    rclient.set(f"wapipe:reply:{PNID}:wamid.U2:0", "sent:wamid.out.old", ex=86_400)
    _queue_old(rclient, "old-q-2", _old_reply_message("old-q-2", "old-m-2", "wamid.U2"))
    # A send the old release left in doubt: never sent again by itself.
    rclient.set(f"wapipe:reply:{PNID}:wamid.U3:0", "sending:old-m-3:1767225600.000", ex=86_400)
    _queue_old(rclient, "old-q-3", _old_reply_message("old-q-3", "old-m-3", "wamid.U3"))
    # A message the old release marked seen: Meta's redelivery of it is a duplicate.
    rclient.set("wapipe:seen:msg:wamid.U4", "old-parse-attempt:0", ex=86_400)
    # A dead letter of the old release, with its reason.
    letter = "old-dead-1"
    rclient.zadd("dramatiq:wapipe.XQ", {letter: int(time.time() * 1000)})
    rclient.hset("dramatiq:wapipe.XQ.msgs", letter, _old_reply_message(letter, "old-m-5", "wamid.U5"))
    rclient.hset(
        "wapipe:dlq:reasons",
        letter,
        json.dumps(
            {
                "message_id": "old-m-5",
                "stage": "reply",
                "queue": "wapipe",
                "reason": {"type": "GraphRejected", "message": "(#131026) undeliverable", "code": 131026},
                "attempts": 1,
                "failed_at": time.time(),
            }
        ),
    )

    stack = pipeline()
    env = stack["env"]
    assert post_webhook(stack["url"], text_envelope("wamid.U4")) == 200
    wait_for(lambda: _answers(fake_graph, "wamid.U1"), timeout=20, what="the queued reply answered")
    wait_for(lambda: drained(rclient), timeout=20, what="every old message handled")
    assert len(_answers(fake_graph, "wamid.U1")) == 1
    assert _answers(fake_graph, "wamid.U2") == []
    assert replies_to(rclient, PNID, "wamid.U2") == 1
    assert _answers(fake_graph, "wamid.U3") == []
    assert _answers(fake_graph, "wamid.U4") == []

    def dlq(*args: str) -> subprocess.CompletedProcess[str]:
        return dlq_cli(env, *args)

    listing = dlq("list")
    assert listing.returncode == 0, listing.stderr
    assert letter in listing.stdout
    assert "GraphRejected" in listing.stdout
    assert "wamid.U5" in listing.stdout
    assert dlq("replay", letter).returncode == 0
    wait_for(lambda: _answers(fake_graph, "wamid.U5"), timeout=20, what="the old dead letter replayed")
    wait_for(lambda: drained(rclient), timeout=20, what="the replay handled")
    assert len(_answers(fake_graph, "wamid.U5")) == 1
    assert letter not in dlq("list").stdout

"""Canaries for the Dramatiq internals ``actors.dramatiq_adapter`` relies on.

Each test names one thing wapipe uses that Dramatiq does not promise (a private class, a private
method, the argument order of its Lua script, its key layout). An upgrade that changes one fails
here, loudly, before it can lose or stall a message in production. ``pyproject.toml`` pins
Dramatiq to the versions these tests passed on.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from importlib import resources
from importlib.metadata import version
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis

from actors.dramatiq_adapter import WakeableRedisBroker, _WakeableConsumer, dispatch_args, sweep
from daemon.pipeline import PIPELINE_QUEUE, REPLY, MessageItem
from daemon.store import keys
from daemon.store.queues import Queue, requeue_fetched

#: What pyproject.toml allows; widen both together, after these tests pass on the new version.
TESTED = ("2.2",)


@pytest.fixture
def broker(redis_url: str) -> Iterator[WakeableRedisBroker]:
    made = WakeableRedisBroker(url=redis_url, namespace=keys.NAMESPACE, middleware=[])
    try:
        yield made
    finally:
        made.close()


def _item(message_id: str) -> MessageItem:
    return MessageItem(
        {"id": message_id, "type": "text", "from": "1"}, "620000000000001", None, None, 0.0, None
    )


def test_the_installed_dramatiq_is_a_tested_one() -> None:
    """The range pinned in pyproject.toml is the range these canaries ran on."""
    assert version("dramatiq").rsplit(".", 1)[0] in TESTED


def test_dispatch_arguments_are_in_dramatiqs_own_order(broker: WakeableRedisBroker) -> None:
    """``dispatch_args`` builds exactly what ``RedisBroker._dispatch`` passes its ``dispatch.lua``."""
    seen: list[list[Any]] = []
    broker.scripts["dispatch"] = lambda *, args, keys: seen.append([keys, args])  # type: ignore[assignment]
    broker.do_qsize(PIPELINE_QUEUE, "extra")
    ours = dispatch_args(broker, "qsize", PIPELINE_QUEUE, broker._should_do_maintenance("qsize"), "extra")
    [[their_keys, theirs]] = seen
    assert their_keys == [keys.NAMESPACE]
    assert abs(int(theirs[1]) - int(ours[1])) < 5_000  # the timestamp, in ms
    assert theirs[:1] + theirs[2:] == ours[:1] + ours[2:]


def test_dispatch_lua_still_reads_its_arguments_in_that_order() -> None:
    """The script's own header: the same ARGV order as :func:`dispatch_args`."""
    source = resources.files("dramatiq.brokers").joinpath("redis/dispatch.lua").read_text()
    order = [
        "command", "timestamp", "queue_name", "worker_id", "heartbeat_timeout",
        "dead_message_ttl", "do_maintenance", "max_unpack_size",
    ]  # fmt: skip
    for position, name in enumerate(order, start=1):
        assert f"local {name} = ARGV[{position}]" in source


def test_the_private_members_used_are_there(broker: WakeableRedisBroker) -> None:
    """The consumer's fields and the broker's helpers that the wake-able consumer uses."""
    consumer = broker.consume(PIPELINE_QUEUE, prefetch=2, timeout=100)
    try:
        assert isinstance(consumer, _RedisConsumer)
        for name in ("message_cache", "queued_message_ids", "misses", "prefetch", "timeout", "queue_name"):
            assert hasattr(consumer, name), name
        assert isinstance(consumer.outstanding_message_count, int)
        assert _WakeableConsumer.__next__ is not _RedisConsumer.__next__
    finally:
        consumer.close()
    for name in ("broker_id", "heartbeat_timeout", "dead_message_ttl", "namespace", "client", "scripts"):
        assert hasattr(broker, name), name
    assert broker._should_do_maintenance("fetch") in (0, 1, True, False)
    assert isinstance(broker._max_unpack_size(), int)
    assert {"dispatch"} <= set(broker.scripts)
    assert "consumer_class" in {name for name, _ in inspect.getmembers(RedisBroker)}


def test_a_message_wapipe_enqueues_is_one_dramatiq_consumes_and_acks(
    broker: WakeableRedisBroker, rclient: redis.Redis
) -> None:
    """Written with wapipe's own enqueue, fetched with Dramatiq's dispatch, acked in a pipelined
    batch: Dramatiq's key layout and message encoding are what wapipe writes and reads."""
    dramatiq.set_broker(broker)
    stored = Queue(rclient).send(REPLY, _item("wamid.C1"))
    assert rclient.hexists(keys.queue_messages(PIPELINE_QUEUE), stored.options["redis_message_id"])
    consumer = broker.consume(PIPELINE_QUEUE, prefetch=1, timeout=100)
    try:
        fetched = next(message for message in iter(consumer) if message is not None)
        assert fetched.message_id == stored.message_id
        assert REPLY.decode(fetched.kwargs) == _item("wamid.C1")
        consumer.ack(fetched)
        broker.ack_and_fetch(PIPELINE_QUEUE, 0)
        assert not rclient.hexists(keys.queue_messages(PIPELINE_QUEUE), stored.options["redis_message_id"])
        assert rclient.scard(keys.fetched(broker.broker_id, PIPELINE_QUEUE)) == 0
    finally:
        consumer.close()


def test_sweep_requeues_a_dead_workers_messages(broker: WakeableRedisBroker, rclient: redis.Redis) -> None:
    """A message fetched by a worker whose heartbeat stopped goes back on its queue at the next
    sweep, whatever Dramatiq's random maintenance does."""
    stored = Queue(rclient).send(REPLY, _item("wamid.C2"))
    redis_id = stored.options["redis_message_id"]
    dead_worker = "dead-worker"
    rclient.lrem(keys.queue(PIPELINE_QUEUE), 0, redis_id)
    rclient.sadd(keys.fetched(dead_worker, PIPELINE_QUEUE), redis_id)
    rclient.zadd(keys.HEARTBEATS, {dead_worker: current_millis() - 10 * broker.heartbeat_timeout})
    sweep(broker)
    assert rclient.lrange(keys.queue(PIPELINE_QUEUE), 0, -1) == [redis_id.encode()]


def test_a_broker_fetches_and_heartbeats_under_the_id_it_was_given(
    redis_url: str, rclient: redis.Redis
) -> None:
    """The broker id a worker process is given is the one Dramatiq's ``dispatch.lua`` files its
    fetches and heartbeats under (``keys.fetched``, ``keys.HEARTBEATS``): what the main process
    puts back with ``requeue_fetched`` when that process dies."""
    given = WakeableRedisBroker(broker_id="given-id", url=redis_url, namespace=keys.NAMESPACE, middleware=[])
    dramatiq.set_broker(given)
    redis_id = Queue(rclient).send(REPLY, _item("wamid.C3")).options["redis_message_id"]
    consumer = given.consume(PIPELINE_QUEUE, prefetch=1, timeout=100)
    try:
        assert next(message for message in iter(consumer) if message is not None).message_id
        assert rclient.smembers(keys.fetched("given-id", PIPELINE_QUEUE)) == {redis_id.encode()}
        assert rclient.zscore(keys.HEARTBEATS, "given-id") is not None
        assert rclient.llen(keys.queue(PIPELINE_QUEUE)) == 0
        assert requeue_fetched(rclient, "given-id") == 1
        assert rclient.lrange(keys.queue(PIPELINE_QUEUE), 0, -1) == [redis_id.encode()]
        assert rclient.zscore(keys.HEARTBEATS, "given-id") is None
    finally:
        consumer.close()
        given.close()

"""The worker's consumer: acks batched with the next fetch, kept through Redis failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Message

from actors.dramatiq_adapter import WakeableRedisBroker
from daemon.store.keys import WAKEUP_CHANNEL
from daemon.store.queues import AsyncQueue, Queue, redis_client
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for

QUEUE = "consumer_test"


@pytest.fixture
def broker(redis_url: str) -> Iterator[WakeableRedisBroker]:
    broker = WakeableRedisBroker(url=redis_url, namespace="dramatiq", middleware=[])
    yield broker
    broker.close()


def _acks_in_redis(rclient: redis.Redis) -> int:
    return sum(int(rclient.scard(key)) for key in rclient.scan_iter("dramatiq:__acks__.*"))


def test_noted_acks_go_out_with_the_next_fetch_even_after_a_script_flush(
    broker: WakeableRedisBroker, rclient: redis.Redis
) -> None:
    """A noted ack is not in Redis until the next fetch sends it; that works after Redis lost its
    scripts (as after a restart), and the fetch in the same round trip returns the next message."""

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def noop(n: int) -> None: ...

    noop.send(1)
    [first] = broker.ack_and_fetch(QUEUE, 1)
    assert first is not None
    broker.note_ack(QUEUE, Message.decode(first).options["redis_message_id"])
    assert rclient.hlen(f"dramatiq:{QUEUE}.msgs") == 1  # noted, not sent
    noop.send(2)
    rclient.script_flush()
    [second] = broker.ack_and_fetch(QUEUE, 1)
    assert second is not None
    assert Message.decode(second).args == (2,)
    assert rclient.hlen(f"dramatiq:{QUEUE}.msgs") == 1  # only the second, fetched and unacked
    assert _acks_in_redis(rclient) == 1


def test_acks_survive_a_redis_outage(
    broker: WakeableRedisBroker, rclient: redis.Redis, redis_server: RedisServer
) -> None:
    """With Redis down the noted acks stay noted (the call raises); once it is back they are sent."""

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def noop(n: int) -> None: ...

    for n in range(3):
        noop.send(n)
    fetched = broker.ack_and_fetch(QUEUE, 3)
    for data in fetched:
        assert data is not None
        broker.note_ack(QUEUE, Message.decode(data).options["redis_message_id"])
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        broker.ack_and_fetch(QUEUE, 0)
    redis_server.start()
    client = redis_server.client()
    assert client.hlen(f"dramatiq:{QUEUE}.msgs") == 3  # persisted (AOF), still unacked

    def sent() -> bool:
        try:
            broker.ack_and_fetch(QUEUE, 0)
        except redis.ConnectionError:
            return False  # the pool's old connections are discarded one by one
        return True

    wait_for(sent, timeout=10, what="acks sent after the restart")
    assert client.hlen(f"dramatiq:{QUEUE}.msgs") == 0
    assert _acks_in_redis(client) == 0


def test_a_worker_acks_everything_it_processed(broker: WakeableRedisBroker, rclient: redis.Redis) -> None:
    """200 messages through a real Dramatiq worker with the batched acks: all run once, none left
    in the queue, in its message hash or in an ack set."""
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE)
    def record(n: int) -> None:
        done.append(n)

    for n in range(200):
        record.send(n)
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:

        def finished() -> Any:
            return (
                len(done) == 200
                and rclient.hlen(f"dramatiq:{QUEUE}.msgs") == 0
                and _acks_in_redis(rclient) == 0
            )

        wait_for(finished, timeout=30, what="200 processed and acked")
    finally:
        worker.stop()
    assert sorted(done) == list(range(200))


def test_an_idle_consumer_is_woken_by_an_enqueue_onto_its_empty_queue(
    broker: WakeableRedisBroker, rclient: redis.Redis
) -> None:
    """A consumer idle at its longest poll (10 s here) gets a message enqueued by wapipe's writer
    within a second: the enqueue onto the empty queue published a wake-up."""
    consumer = broker.consume("wapipe", prefetch=4, timeout=10_000)
    wait_for(lambda: dict(rclient.pubsub_numsub(WAKEUP_CHANNEL))[WAKEUP_CHANNEL.encode()] >= 1, timeout=10)
    consumer.misses = 100  # as after a long idle: the next empty fetch waits the whole 10 s
    got: list[Any] = []

    def consume() -> None:
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            message = next(consumer)
            if message is not None:
                got.append(message)

    thread = threading.Thread(target=consume)
    thread.start()
    # An empty fetch counts a miss; the 10 s wait follows it at once.
    wait_for(lambda: consumer.misses > 100, timeout=10, what="the consumer to find its queue empty")
    enqueued_at = time.monotonic()
    Queue(rclient).enqueue(_message({}))
    thread.join(timeout=20)
    assert got, "the consumer never got the message"
    assert time.monotonic() - enqueued_at < 1.0
    consumer.close()


def test_only_an_enqueue_onto_an_empty_queue_publishes(rclient: redis.Redis, redis_url: str) -> None:
    """Consumers sleep only after finding their queue empty, so only a push onto an empty queue
    wakes them: one publish for a batch of five concurrent enqueues, none while messages wait."""
    pubsub = rclient.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(WAKEUP_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscription confirmation

    def published() -> int:
        count = 0
        while pubsub.get_message(timeout=0.2) is not None:
            count += 1
        return count

    async def five_at_once() -> None:
        client = redis_client(redis_url, 1.0)
        queue = AsyncQueue(client)
        await asyncio.gather(*(queue.enqueue(_message({"n": n})) for n in range(5)))
        await client.aclose()

    asyncio.run(five_at_once())
    assert rclient.llen("dramatiq:wapipe") == 5
    assert published() == 1
    Queue(rclient).enqueue(_message({}))
    assert published() == 0
    rclient.delete("dramatiq:wapipe")
    Queue(rclient).enqueue(_message({}))
    assert published() == 1
    pubsub.close()


def _message(item: dict[str, object]) -> Message[object]:
    """A reply message with any item: the consumer does not read arguments."""
    return Message(queue_name="wapipe", actor_name="reply", args=(), kwargs={"item": item}, options={})

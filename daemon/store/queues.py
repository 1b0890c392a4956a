"""The pipeline's queues: enqueue in Dramatiq's own format, and read their figures.

Dramatiq's Redis broker enqueues with its Lua script ``dispatch.lua``: ``HSET <queue>.msgs id
data`` then ``RPUSH <queue> id``. wapipe's producers do exactly that in ``push.lua`` (plus a
wake-up for idle consumers), so a message they enqueue is what ``actor.send()`` would have
written: the web edge through ``redis.asyncio`` (:class:`AsyncQueue`, never blocking its event
loop), the stages from their worker threads with redis-py (:class:`Queue`), ``wapipe dlq replay``
through :func:`daemon.store.deadletters.replay`. Neither registers the producer as a worker in
Dramatiq's heartbeat set, which only consumers need.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.retry
from dramatiq import Message
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from daemon import pipeline
from daemon.pipeline import QUEUES
from daemon.store import keys, scripts
from daemon.store.keys import WAKEUP_CHANNEL


def redis_client(url: str, timeout: float) -> aioredis.Redis:
    """A pooled ``redis.asyncio`` client that fails fast: a bounded timeout, one quick reconnect."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


def thread_redis_client(url: str, timeout: float) -> redis.Redis:
    """The same for one thread: redis-py's blocking client (about half the CPU per command of
    ``redis.asyncio`` here) on a single connection of its own. Skipping the pool's checkout per
    command (with redis-py 7+ a readiness probe and connection-count bookkeeping each time) takes
    a command from ~60 to ~32 µs of CPU on the benchmark machine. Not to be shared by threads
    that should not wait for one another: redis-py serialises their commands on the connection.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=redis.retry.Retry(NoBackoff(), 1),
        health_check_interval=30,
        single_connection_client=True,
    )


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's figures, read in a single round trip (see docs/dramatiq.md)."""

    ready: int
    delayed: int
    in_flight: int
    dead: int
    oldest_age_seconds: float


def prepare(message: Message[Any]) -> tuple[Message[Any], list[str], list[str | bytes]]:
    """The stored copy of ``message`` (with a fresh ``redis_message_id``), its queue's two keys
    (list, message hash), and its id, data and queue name, as the enqueue scripts take them."""
    stored = message.copy(options={"redis_message_id": str(uuid.uuid4())})
    args: list[str | bytes] = [stored.options["redis_message_id"], stored.encode(), stored.queue_name]
    return stored, [keys.queue(stored.queue_name), keys.queue_messages(stored.queue_name)], args


class AsyncQueue:
    """Enqueue Dramatiq messages and read queue figures with ``redis.asyncio``.

    Enqueues are group-committed: the messages of every request that enqueues while a write is
    in flight go together in the next one (one script, one round trip), and each caller returns
    when the write holding its message returned. With one request at a time that is one write
    per message, as before; under load the per-message cost of the asyncio Redis client, the
    largest part of a webhook's CPU, is shared by the batch.

    Args:
        client: a ``redis.asyncio.Redis`` owned by the caller's lifecycle.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._enqueue = scripts.register_async(client, "enqueue")
        self._waiting: list[tuple[list[str], list[str | bytes], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def send(
        self, stage: pipeline.Stage[pipeline.A], argument: pipeline.A, options: dict[str, Any] | None = None
    ) -> Message[Any]:
        """Enqueue ``argument`` for ``stage``; return the stored message (it has ``redis_message_id``).

        Raises:
            redis.RedisError: when Redis did not accept the write holding it.
        """
        return await self.enqueue(pipeline.message(stage, argument, options))

    async def enqueue(self, message: Message[Any]) -> Message[Any]:
        """Write ``message`` (made by :func:`daemon.pipeline.message`) to its queue; return the
        stored copy (it has ``redis_message_id``).

        Raises:
            redis.RedisError: when Redis did not accept the write holding it. Nothing is
                half-written: each write is one atomic script.
        """
        stored, names, args = prepare(message)
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()
        self._waiting.append((names, args, written))
        if self._writer is None:
            self._writer = loop.create_task(self._write())
        await written
        return stored

    async def _write(self) -> None:
        """Write what is waiting, batch after batch, until nothing is."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                names = [key for item in batch for key in item[0]]
                args = [WAKEUP_CHANNEL, *(arg for item in batch for arg in item[1])]
                try:
                    await self._enqueue(keys=names, args=args)
                except BaseException as error:
                    for _, _, written in batch:
                        if written.done():
                            continue
                        if isinstance(error, Exception):
                            written.set_exception(error)
                        else:
                            written.cancel()
                    if not isinstance(error, Exception):
                        raise
                else:
                    for _, _, written in batch:
                        if not written.done():
                            written.set_result(None)
        finally:
            self._writer = None

    async def ready_depth(self, queues: tuple[str, ...] = QUEUES) -> int:
        """Ready messages summed over ``queues`` (what backpressure compares to its limit)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(keys.queue(queue))
            lengths = await pipe.execute()
        return sum(int(length) for length in lengths)

    async def stats(self, queue: str) -> QueueStats:
        """Ready, delayed (incl. retry back-off), in flight (fetched, unacked), dead, oldest age."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(keys.queue(queue))
            pipe.hlen(keys.queue_messages(queue))
            pipe.hlen(keys.queue_messages(f"{queue}.DQ"))
            pipe.zcard(keys.dead_letters(queue))
            pipe.lindex(keys.queue(queue), 0)
            ready, held, delayed, dead, head = await pipe.execute()
        oldest = 0.0
        if head is not None:
            data = await self.client.hget(keys.queue_messages(queue), head)
            if data is not None:
                raw = data if isinstance(data, bytes) else data.encode()
                sent_ms = Message.decode(raw).message_timestamp
                oldest = max(0.0, time.time() - sent_ms / 1000)
        return QueueStats(
            ready=int(ready),
            delayed=int(delayed),
            in_flight=max(0, int(held) - int(ready)),
            dead=int(dead),
            oldest_age_seconds=oldest,
        )


class Queue:
    """Enqueue Dramatiq messages from a thread (the actors), exactly as :class:`AsyncQueue` does.

    Args:
        client: a ``redis.Redis`` owned by the caller's lifecycle (in the worker, the calling
            thread's own, see :func:`thread_redis_client`).
    """

    def __init__(self, client: redis.Redis) -> None:
        self._enqueue = scripts.register(client, "enqueue")

    def send(
        self, stage: pipeline.Stage[pipeline.A], argument: pipeline.A, options: dict[str, Any] | None = None
    ) -> Message[Any]:
        """Enqueue ``argument`` for ``stage``; return the stored message.

        Raises:
            redis.RedisError: when Redis did not accept it (nothing is half-written).
        """
        return self.enqueue(pipeline.message(stage, argument, options))

    def enqueue(self, message: Message[Any]) -> Message[Any]:
        """Write ``message`` to its queue; return the stored copy.

        Raises:
            redis.RedisError: when Redis did not accept it (nothing is half-written).
        """
        stored, names, args = prepare(message)
        self._enqueue(keys=names, args=[WAKEUP_CHANNEL, *args])
        return stored


def requeue_fetched(client: redis.Redis, broker_id: str, queues: tuple[str, ...] = QUEUES) -> int:
    """Put what the dead worker process whose broker was ``broker_id`` had fetched and not acked
    back on ``queues`` (and their delay queues), at once, in one atomic script; return how many
    messages went back. Only for a process known to be dead (its parent reaped it): a live one
    would run them a second time. See ``requeue.lua`` for where they go.

    Raises:
        redis.RedisError: Redis did not run it (nothing moved: the heartbeat timeout recovers them).
    """
    names = [name for queue in queues for name in (queue, f"{queue}.DQ")]
    key_names = [
        key
        for name in names
        for key in (keys.fetched(broker_id, name), keys.queue_messages(name), keys.queue(name))
    ]
    args: list[str] = [broker_id, WAKEUP_CHANNEL]
    for name in names:
        args += [name, "0" if name.endswith(".DQ") else "1"]
    script = scripts.register(client, "requeue")
    return int(script(keys=[*key_names, keys.HEARTBEATS], args=args))

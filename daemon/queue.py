"""The pipeline's queues in Redis, written in Dramatiq's own format.

Dramatiq's Redis broker enqueues with its Lua script ``dispatch.lua``: ``HSET <queue>.msgs id
data`` then ``RPUSH <queue> id``. wapipe's producers do exactly that, atomically in one small
script, so a message they enqueue is what ``actor.send()`` would have written: the web edge through
``redis.asyncio`` (:class:`AsyncQueue`, never blocking its event loop), the actors from their
worker threads with redis-py (:class:`Queue`). Neither registers the producer as a worker in
Dramatiq's heartbeat set, which only consumers need.

Queue layout: the text path (verify → parse → reply) shares one queue so that a hop never waits
for another queue's idle poll; media downloads have their own queue so that slow media never
delays text replies.
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

NAMESPACE = "dramatiq"
#: Producers publish a queue's name here after enqueueing, to wake idle consumers at once.
WAKEUP_CHANNEL = "wapipe:wakeup"
PIPELINE_QUEUE = "wapipe"
MEDIA_QUEUE = "wapipe_media"
QUEUES = (PIPELINE_QUEUE, MEDIA_QUEUE)

#: Which queue each actor consumes. The only place this is decided.
ACTOR_QUEUES = {
    "verify": PIPELINE_QUEUE,
    "parse": PIPELINE_QUEUE,
    "fetch_media": MEDIA_QUEUE,
    "reply": PIPELINE_QUEUE,
}


def build_message(
    actor_name: str, kwargs: dict[str, Any], options: dict[str, Any] | None = None
) -> Message[Any]:
    """A Dramatiq message for ``actor_name`` on its queue, with a fresh id and timestamp."""
    return Message(
        queue_name=ACTOR_QUEUES[actor_name],
        actor_name=actor_name,
        args=(),
        kwargs=kwargs,
        options=dict(options or {}),
    )


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


#: Enqueue exactly as Dramatiq's ``dispatch.lua`` does (``HSET <q>.msgs id data``, ``RPUSH <q> id``),
#: then wake idle consumers when the queue was empty. A consumer only sleeps after a fetch found
#: its queue empty (or while its prefetch is full, when its own acks wake it), so a push onto a
#: non-empty queue has no one to wake; not publishing then saved ~10 % of the workers' CPU at
#: full load (every publish woke every worker process), with the same latency at 100 msg/s.
#: ``push`` is a Lua function other scripts prepend to enqueue the same way (see ``actors.parse``).
PUSH_FUNCTION = """
local function store(queue_key, messages_key, id, data)
  redis.call('HSET', messages_key, id, data)
  redis.call('RPUSH', queue_key, id)
end
local function push(queue_key, messages_key, id, data, queue, channel)
  store(queue_key, messages_key, id, data)
  if redis.call('LLEN', queue_key) == 1 then redis.call('PUBLISH', channel, queue) end
end
"""
#: Enqueue several messages at once, waking each queue that was empty before. KEYS: per message its
#: queue list and message hash. ARGV: the wake-up channel, then per message its id, data and queue.
_ENQUEUE = (
    PUSH_FUNCTION
    + """
local pushed, keys = {}, {}
for i = 1, #KEYS / 2 do
  store(KEYS[2 * i - 1], KEYS[2 * i], ARGV[3 * i - 1], ARGV[3 * i])
  local queue = ARGV[3 * i + 1]
  if not pushed[queue] then keys[queue] = KEYS[2 * i - 1] end
  pushed[queue] = (pushed[queue] or 0) + 1
end
for queue, count in pairs(pushed) do
  if redis.call('LLEN', keys[queue]) == count then redis.call('PUBLISH', ARGV[1], queue) end
end
return #KEYS / 2
"""
)


def prepare(message: Message[Any]) -> tuple[Message[Any], list[str], list[str | bytes]]:
    """The stored copy of ``message`` (with a fresh ``redis_message_id``), its queue's two keys
    (list, message hash), and its id, data and queue name, as the enqueue scripts take them."""
    stored = message.copy(options={"redis_message_id": str(uuid.uuid4())})
    key = f"{NAMESPACE}:{stored.queue_name}"
    args: list[str | bytes] = [stored.options["redis_message_id"], stored.encode(), stored.queue_name]
    return stored, [key, f"{key}.msgs"], args


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
        self._enqueue = client.register_script(_ENQUEUE)
        self._waiting: list[tuple[list[str], list[str | bytes], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def enqueue(self, message: Message[Any]) -> Message[Any]:
        """Write ``message`` to its queue; return the stored copy (it has ``redis_message_id``).

        Raises:
            redis.RedisError: when Redis did not accept the write holding it. Nothing is
                half-written: each write is one atomic script.
        """
        stored, keys, args = prepare(message)
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()
        self._waiting.append((keys, args, written))
        if self._writer is None:
            self._writer = loop.create_task(self._write())
        await written
        return stored

    async def _write(self) -> None:
        """Write what is waiting, batch after batch, until nothing is."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                keys = [key for item in batch for key in item[0]]
                args = [WAKEUP_CHANNEL, *(arg for item in batch for arg in item[1])]
                try:
                    await self._enqueue(keys=keys, args=args)
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
                pipe.llen(f"{NAMESPACE}:{queue}")
            lengths = await pipe.execute()
        return sum(int(length) for length in lengths)

    async def stats(self, queue: str) -> QueueStats:
        """Ready, delayed (incl. retry back-off), in flight (fetched, unacked), dead, oldest age."""
        key = f"{NAMESPACE}:{queue}"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(key)
            pipe.hlen(f"{key}.msgs")
            pipe.hlen(f"{key}.DQ.msgs")
            pipe.zcard(f"{key}.XQ")
            pipe.lindex(key, 0)
            ready, held, delayed, dead, head = await pipe.execute()
        oldest = 0.0
        if head is not None:
            data = await self.client.hget(f"{key}.msgs", head)
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
        self._enqueue = client.register_script(_ENQUEUE)

    def enqueue(self, message: Message[Any]) -> Message[Any]:
        """Write ``message`` to its queue; return the stored copy.

        Raises:
            redis.RedisError: when Redis did not accept it (nothing is half-written).
        """
        stored, keys, args = prepare(message)
        self._enqueue(keys=keys, args=[WAKEUP_CHANNEL, *args])
        return stored

"""The pipeline's queues in Redis, written in Dramatiq's own format without blocking an event loop.

Dramatiq's Redis broker does every operation through one Lua script (``dispatch.lua``). The web
edge and the async actors run **that same script** through ``redis.asyncio``, so a message they
enqueue is byte-for-byte what ``actor.send()`` would have written, without the blocking redis-py
call ``send()`` makes.

Queue layout: the text path (verify → parse → reply) shares one queue so that a hop never waits
for another queue's idle poll; media downloads have their own queue so that slow media never
delays text replies.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from dramatiq import Message

NAMESPACE = "dramatiq"
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

#: Dramatiq uses half the Lua stack for unpacking; enqueue unpacks nothing, any sane value works.
_MAX_UNPACK = 4000


def dispatch_script() -> str:
    """The text of Dramatiq's ``dispatch.lua`` as installed."""
    return resources.files("dramatiq.brokers").joinpath("redis", "dispatch.lua").read_text("utf-8")


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


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's figures, read in a single round trip (see DRAMATIQ.md §1.2)."""

    ready: int
    delayed: int
    in_flight: int
    dead: int
    oldest_age_seconds: float


class AsyncQueue:
    """Enqueue Dramatiq messages and read queue figures with ``redis.asyncio``.

    Args:
        client: a ``redis.asyncio.Redis`` owned by the caller's lifecycle.
        heartbeat_timeout_ms: the same value the workers' broker uses.
        dead_message_ttl_ms: the same value the workers' broker uses.
    """

    def __init__(
        self, client: aioredis.Redis, *, heartbeat_timeout_ms: int, dead_message_ttl_ms: int
    ) -> None:
        self.client = client
        self.producer_id = f"producer-{uuid.uuid4()}"
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.dead_message_ttl_ms = dead_message_ttl_ms
        self._dispatch = client.register_script(dispatch_script())

    async def enqueue(self, message: Message[Any]) -> Message[Any]:
        """Write ``message`` to its queue; return the stored copy (it has ``redis_message_id``).

        Raises:
            redis.RedisError: when Redis did not accept it. Nothing is half-written: the script
                is atomic.
        """
        stored = message.copy(options={"redis_message_id": str(uuid.uuid4())})
        await self._dispatch(
            keys=[NAMESPACE],
            args=[
                "enqueue",
                int(time.time() * 1000),
                stored.queue_name,
                self.producer_id,
                self.heartbeat_timeout_ms,
                self.dead_message_ttl_ms,
                0,
                _MAX_UNPACK,
                stored.options["redis_message_id"],
                stored.encode(),
            ],
        )
        return stored

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

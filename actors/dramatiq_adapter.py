"""Everything wapipe relies on inside Dramatiq's Redis broker, in one module.

Dramatiq's public API does not offer what wapipe needs here, so this module (and only this one)
uses its private internals: the consumer class ``_RedisConsumer`` and its fields, the broker's
``_should_do_maintenance`` and ``_max_unpack_size``, and the argument order of its ``dispatch.lua``
(:func:`dispatch_args`). ``tests/test_dramatiq_adapter.py`` checks each of them against the
installed Dramatiq, so that an upgrade that changes one fails loudly there, and ``pyproject.toml``
pins Dramatiq to the range those tests passed on. What it works around: docs/dramatiq.md.

**A Redis broker whose idle consumers are woken up instead of polling with a growing back-off.**

Dramatiq's Redis consumer sleeps ``compute_backoff`` (5 ms doubling up to ``worker_timeout``)
whenever a fetch comes back empty or its prefetch is full, so a message enqueued on an idle queue
waits up to that cap at every hop, and a busy consumer can sleep while its threads are idle
(docs/dramatiq.md). Here the consumer waits on an event with the same timeout, and the event is set

- by a ``PUBLISH wapipe:wakeup <queue>`` that wapipe's producers (the web edge, the actors) send
  atomically with an enqueue onto an empty queue, and Dramatiq's retries and delayed-message moves
  after every enqueue, and
- by the consumer's own acks and nacks, which free prefetch room.

A consumer sleeps only after a fetch found its queue empty, or while its prefetch is full, so a
push onto a non-empty queue has no consumer to wake that its own acks would not.

The timeout keeps the old polling as the fallback, so a lost wake-up only costs what polling
always cost.

Acks are batched: a worker thread's ack is noted and wakes the consumer thread, which sends the
noted acks and its next fetch in one pipelined round trip, instead of one round trip per ack in
the worker thread and another for the fetch. Each is still Dramatiq's own ``dispatch.lua``
command; only the transport changed. An ack not yet sent when the process dies leaves the message
in this worker's ack set, so it runs again (put back by the process's parent, or by the maintenance
after ``heartbeat_timeout``), as for a worker killed just before its ack: wapipe's dedup marks and
reply ledger make that harmless. Nacks, heartbeats, requeueing and dead letters are Dramatiq's,
unchanged; the broker id can be given (:class:`WakeableRedisBroker`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from daemon.pipeline import QUEUES
from daemon.store.keys import NAMESPACE, WAKEUP_CHANNEL

log = logging.getLogger(__name__)

#: Wait before re-subscribing after the wake-up connection broke.
RESUBSCRIBE_SECONDS = 1.0


class WakeableRedisBroker(RedisBroker):
    """Dramatiq's RedisBroker with event-driven consumers (see the module docstring)."""

    def __init__(self, *, broker_id: str | None = None, **kwargs: Any) -> None:
        """Dramatiq's arguments, and ``broker_id``: the id this process's consumers fetch and
        heartbeat under (Dramatiq draws a random one), so that the parent that started the
        process can put back what it fetched if it dies."""
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        if broker_id is not None:
            self.broker_id = broker_id
        self._waiters: dict[str, set[threading.Event]] = defaultdict(set)
        self._waiters_lock = threading.Lock()
        self._listener: threading.Thread | None = None
        #: Redis message ids acked by worker threads, per queue, not yet sent to Redis.
        self._acks: dict[str, list[str]] = defaultdict(list)
        self._acks_lock = threading.Lock()

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakeableConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> _WakeableConsumer:
        consumer = _WakeableConsumer(self, queue_name, prefetch, timeout)
        with self._waiters_lock:
            self._waiters[queue_name].add(consumer.wake)
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen, name="wapipe-wakeup", daemon=True)
                self._listener.start()
        return consumer

    def forget(self, consumer: _WakeableConsumer) -> None:
        with self._waiters_lock:
            self._waiters[consumer.queue_name].discard(consumer.wake)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Dramatiq's enqueue (used by retries and delayed moves), then a wake-up for the queue."""
        enqueued = super().enqueue(message, delay=delay)
        if delay is None:
            with contextlib.suppress(redis.RedisError):  # stored anyway: the consumers' timeout finds it
                self.client.publish(WAKEUP_CHANNEL, enqueued.queue_name)
        return enqueued

    def note_ack(self, queue_name: str, redis_message_id: str) -> None:
        with self._acks_lock:
            self._acks[queue_name].append(redis_message_id)

    def ack_and_fetch(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        """Send the noted acks of ``queue_name`` and, when ``prefetch`` > 0, fetch up to that many
        messages, in one round trip (one ``dispatch.lua`` call each, pipelined).

        Raises:
            redis.ConnectionError: the acks stay noted, to be sent by the next call.
        """
        with self._acks_lock:
            acks, self._acks[queue_name] = self._acks[queue_name], []
        if not acks:
            return self.do_fetch(queue_name, prefetch) if prefetch > 0 else []
        calls: list[tuple[str, tuple[Any, ...]]] = [("ack", (message_id,)) for message_id in acks]
        if prefetch > 0:
            calls.append(("fetch", (prefetch,)))
        try:
            try:
                results = self._dispatch_pipelined(queue_name, calls)
            except redis.exceptions.NoScriptError:  # Redis restarted, or its scripts were flushed
                self.client.script_load(self.scripts["dispatch"].script)
                results = self._dispatch_pipelined(queue_name, calls)
        except BaseException:
            with self._acks_lock:
                self._acks[queue_name][:0] = acks
            raise
        return list(results[-1]) if prefetch > 0 else []

    def _dispatch_pipelined(self, queue_name: str, calls: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Dramatiq's ``do_<command>(queue_name, *args)`` for each call, in one pipeline: the same
        script with the same arguments (see ``RedisBroker._dispatch``)."""
        sha = self.scripts["dispatch"].sha
        with self.client.pipeline(transaction=False) as pipe:
            for command, args in calls:
                maintenance = self._should_do_maintenance(command)
                pipe.evalsha(
                    sha, 1, self.namespace, *dispatch_args(self, command, queue_name, maintenance, *args)
                )
            return list(pipe.execute())

    def _wake(self, queue_name: str) -> None:
        with self._waiters_lock:
            events = list(self._waiters.get(queue_name, ()))
        for event in events:
            event.set()

    def _listen(self) -> None:
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(WAKEUP_CHANNEL)
                for item in pubsub.listen():
                    data = item.get("data")
                    self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except redis.RedisError as error:
                log.debug("wakeup_subscription_lost", extra={"error": type(error).__name__})
            finally:
                pubsub.close()
            time.sleep(RESUBSCRIBE_SECONDS)


class _WakeableConsumer(_RedisConsumer):
    def __init__(self, broker: WakeableRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.wake = threading.Event()

    def ack(self, message: Any) -> None:
        """Note the ack for the consumer thread's next round trip (see the module docstring)."""
        self.broker.note_ack(self.queue_name, message.options["redis_message_id"])
        self.queued_message_ids.discard(message.message_id)
        self.wake.set()

    def nack(self, message: Any) -> None:
        super().nack(message)  # type: ignore[no-untyped-call]
        self.wake.set()

    def close(self) -> None:
        self.broker.forget(self)
        try:
            self.broker.ack_and_fetch(self.queue_name, 0)
        except redis.RedisError as error:
            # Still noted: the queue's next consumer sends them. If the process ends first, the
            # messages are redelivered after the heartbeat timeout and the dedup marks absorb it.
            log.warning("acks_deferred", extra={"queue": self.queue_name, "error": type(error).__name__})
        super().close()

    def __next__(self) -> Any:
        """Dramatiq's fetch loop, waiting on :attr:`wake` where it would sleep."""
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return _proxy(message)
                self.wake.clear()
                room = self.prefetch - self.outstanding_message_count
                self.message_cache = messages = self.broker.ack_and_fetch(self.queue_name, max(room, 0))
                if not messages:
                    self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                    self.wake.wait(backoff_ms / 1000)
                    return None
        except redis.ConnectionError as error:
            raise ConnectionClosed(error) from None  # type: ignore[no-untyped-call]


def dispatch_args(
    broker: RedisBroker, command: str, queue_name: str, maintenance: bool | int, *args: Any
) -> list[Any]:
    """The ARGV of Dramatiq's ``dispatch.lua`` for ``command`` on ``queue_name`` (its KEYS are the
    namespace alone), in the order ``RedisBroker._dispatch`` passes them: command, time (ms),
    queue, broker id, heartbeat timeout, dead-message TTL, whether to run maintenance, the largest
    unpack size, then the command's own arguments."""
    return [
        command,
        current_millis(),
        queue_name,
        broker.broker_id,
        broker.heartbeat_timeout,
        broker.dead_message_ttl,
        int(maintenance),
        broker._max_unpack_size(),  # type: ignore[no-untyped-call]
        *args,
    ]


def sweep(broker: RedisBroker, maintenance: bool = True) -> None:
    """One forced maintenance pass (requeue dead workers' messages, expire dead letters) on each
    queue and delay queue; with ``maintenance`` False, only this process's heartbeat (every
    ``dispatch.lua`` call records one for the caller first).

    Dramatiq runs its maintenance on a random 0.1 % of commands, none when idle (docs/dramatiq.md):
    a killed worker's messages could wait for hours on a quiet queue.
    """
    dispatch = broker.scripts["dispatch"]
    for queue in QUEUES:
        for name in (queue, f"{queue}.DQ"):
            dispatch(keys=[NAMESPACE], args=dispatch_args(broker, "qsize", name, maintenance))
            if not maintenance:
                return


def _proxy(message: Message[Any]) -> Any:
    from dramatiq.broker import MessageProxy

    return MessageProxy(message)

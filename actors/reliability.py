"""Two fixes to Dramatiq's Redis delivery that wapipe's guarantees depend on (docs/dramatiq.md).

- :class:`SafeRetries`: Dramatiq's Retries re-enqueues a failed message and the worker then acks
  the original. If Redis is down at that moment the enqueue error is swallowed and the message
  is acked and lost (Dramatiq PR #545). Here the re-enqueue waits for Redis to come back; if the
  worker is stopping first, the message is failed (dead-lettered with that reason), never lost.
- :class:`Sweeper`: a killed worker's fetched messages are only requeued by a *random*
  maintenance pass (0.1 % of commands, none when idle: Dramatiq #527). Each worker process forces
  that pass on every pipeline queue every ``heartbeat_timeout / 4``, so they run again within
  ``heartbeat_timeout`` + one sweep even with no traffic (12.5 s by default); it also purges dead
  letters past ``WAPIPE_DLQ_RETENTION_DAYS`` and media files past ``WAPIPE_MEDIA_RETENTION_DAYS``
  (hourly, with a log line). Each sweep is also a heartbeat of its process, whatever its worker
  threads and consumers do. The broker runs no maintenance of its own (``maintenance_chance``
  0), and a sweeper runs it only once its process has reached Redis on time for
  ``heartbeat_timeout / 2`` (:class:`Settling`): after a Redis outage, or a pause of the process,
  the live processes' heartbeats are as old as the dead ones', and would be taken for dead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Retries

from actors.dramatiq_adapter import sweep
from daemon.store import conversations, deadletters, media

log = logging.getLogger(__name__)

#: Wait between attempts to re-enqueue a retry while Redis is unreachable.
REENQUEUE_WAIT_SECONDS = 1.0
#: How often dead letters past their retention are purged.
PURGE_INTERVAL_SECONDS = 3600.0

#: Set on a message whose retry could not be enqueued before the worker stopped.
ENQUEUE_LOST = "wapipe_retry_enqueue_lost"

_stopping = threading.Event()


#: What an unreachable Redis raises, from redis-py directly or wrapped by Dramatiq.
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, BrokerConnectionError)

T = TypeVar("T")


class RedisStillDown(Exception):
    """The worker is stopping and Redis is still unreachable: the operation was given up."""


def wait_out_outage(operation: Callable[[], T], what: str) -> T:
    """Run a Redis operation from a worker thread, retrying every second while Redis is unreachable.

    Raises:
        RedisStillDown: the worker began stopping before Redis answered.
    """
    warned = False
    while True:
        try:
            return operation()
        except _REDIS_DOWN as error:
            if _stopping.is_set():
                log.error("redis_operation_abandoned", extra={"what": what, "error": type(error).__name__})
                raise RedisStillDown(what) from error
            if not warned:
                log.warning("waiting_for_redis", extra={"what": what})
                warned = True
            time.sleep(REENQUEUE_WAIT_SECONDS)


class _WaitingBroker:
    """The broker as Retries sees it: ``enqueue`` waits out a Redis outage."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> dramatiq.Message[Any]:
        return wait_out_outage(lambda: self._broker.enqueue(message, delay=delay), "retry enqueue")


class SafeRetries(Retries):
    """Dramatiq's Retries whose re-enqueue survives a Redis outage (see the module docstring)."""

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        try:
            super().after_process_message(  # type: ignore[no-untyped-call]
                _WaitingBroker(broker), message, result=result, exception=exception
            )
        except RedisStillDown:
            message.fail()  # dead-lettered rather than acked and lost
            message.options[ENQUEUE_LOST] = True  # the dead-letter recorder reports this reason


class Settling:
    """Whether a sweeper may run the maintenance now: once every sweep reached Redis, on time, for
    ``settle_seconds``. A failed sweep, or a gap between two longer than that (the process was
    paused or starved, and its siblings on the host may have been too), starts the wait again:
    meanwhile every live process heartbeats again (its consumers within a poll, or a consumer
    restart after a lost connection, its sweeper within a sweep), and only dead ones stay old."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._since: float | None = None
        self._last: float | None = None

    def may_sweep(self, now: float) -> bool:
        """Before a sweep at monotonic time ``now``: whether it may run the maintenance."""
        if self._last is not None and now - self._last > self.settle_seconds:
            self._since = None
        self._last = now
        return self._since is not None and now - self._since >= self.settle_seconds

    def reached(self, now: float) -> None:
        """The sweep that started at ``now`` reached Redis."""
        if self._since is None:
            self._since = now

    def failed(self) -> None:
        """The sweep did not reach Redis."""
        self._since = None


class Sweeper(dramatiq.Middleware):
    """Forces Dramatiq's maintenance on every pipeline queue, and purges expired dead letters."""

    def __init__(
        self,
        heartbeat_timeout_ms: int,
        retention_days: int,
        media_dir: Path | None = None,
        media_retention_days: int = 0,
    ) -> None:
        self.interval = max(0.2, heartbeat_timeout_ms / 4000)
        self.settle_seconds = heartbeat_timeout_ms / 2000
        self.retention_seconds = retention_days * 86_400
        self.media_dir = media_dir
        self.media_retention_seconds = media_retention_days * 86_400
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        _stopping.clear()
        assert isinstance(broker, RedisBroker)
        self._thread = threading.Thread(target=self._run, args=(broker,), name="wapipe-sweeper", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        _stopping.set()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _count_active(self, broker: RedisBroker) -> None:
        """Refresh ``wapipe_active_conversations`` (and forget conversations past their window)."""
        from actors.metrics import current  # actors.metrics imports this module (via dead_letters)

        current().active_conversations.set(conversations.active(broker.client, time.time()))

    def _purge_media(self) -> None:
        """Delete the media files stored longer ago than ``WAPIPE_MEDIA_RETENTION_DAYS`` (0: keep)."""
        if self.media_dir is None or self.media_retention_seconds <= 0:
            return
        removed = media.remove_expired(self.media_dir, self.media_retention_seconds)
        if removed:
            log.info("media_files_purged", extra={"files": removed})

    def _run(self, broker: RedisBroker) -> None:
        next_purge = 0.0
        settling = Settling(self.settle_seconds)
        while not _stopping.wait(self.interval):
            now = time.monotonic()
            try:
                sweep(broker, maintenance=settling.may_sweep(now))
                settling.reached(now)
                self._count_active(broker)
                if time.monotonic() >= next_purge:
                    deadletters.purge(broker.client, older_than_seconds=self.retention_seconds)
                    self._purge_media()
                    next_purge = time.monotonic() + PURGE_INTERVAL_SECONDS
            except redis.RedisError as error:
                settling.failed()
                log.warning("sweep_failed", extra={"error": type(error).__name__})

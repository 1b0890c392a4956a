"""Per-process resources of a worker: created after the worker boots, closed at shutdown.

The actors are plain functions run by Dramatiq's worker threads (its native model), and their I/O
blocks those threads: Redis through redis-py's blocking client, on a connection of each thread's
own (:func:`daemon.queue.thread_redis_client`), the Graph API through the keep-alive pool of
:mod:`daemon.http_pool` (a third of aiohttp's CPU per request, once the hand-off to an event loop
thread is counted). Only an ``async`` custom reply handler is awaited, on the one event loop
thread of Dramatiq's ``AsyncIO`` middleware (:meth:`Runtime.run`).
"""

from __future__ import annotations

import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dramatiq
import redis
from dramatiq.asyncio import EventLoopThread, get_event_loop_thread
from dramatiq.middleware import CurrentMessage
from redis.commands.core import Script

from actors import metrics as worker_metrics
from daemon.config import Settings
from daemon.graph import GraphClient, emulator_endpoint
from daemon.handler import Handler, load_handler
from daemon.queue import Queue, thread_redis_client
from daemon.ratelimit import SendLimiter
from daemon.sandbox_link import EmulatorLink

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _ThreadRedis:
    """A worker thread's own Redis client (one connection) and what is built on it."""

    client: redis.Redis
    queue: Queue
    limiter: SendLimiter
    scripts: dict[str, Script] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Runtime:
    """What actors use: settings, Redis, the queue writer, the Graph API client, the handler.

    :attr:`redis`, :attr:`queue`, :attr:`limiter` and :meth:`script` are the calling thread's:
    each worker thread talks to Redis on a connection of its own (see
    :func:`daemon.queue.thread_redis_client`), opened at its first use and closed with the runtime.
    """

    settings: Settings
    redis_url: str
    graph: GraphClient
    handler: Handler
    loop: EventLoopThread
    emulator: EmulatorLink | None = None
    _local: threading.local = field(default_factory=threading.local)
    _opened: list[redis.Redis] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _mine(self) -> _ThreadRedis:
        mine: _ThreadRedis | None = getattr(self._local, "redis", None)
        if mine is None:
            settings = self.settings
            client = thread_redis_client(self.redis_url, settings.redis_timeout_seconds)
            limiter = SendLimiter(
                client,
                per_number_rate=settings.send_rate,
                pair_interval_ms=settings.pair_interval_ms,
                pair_burst=settings.pair_burst,
            )
            mine = self._local.redis = _ThreadRedis(client, Queue(client), limiter)
            with self._lock:
                self._opened.append(client)
        return mine

    @property
    def redis(self) -> redis.Redis:
        return self._mine().client

    @property
    def queue(self) -> Queue:
        return self._mine().queue

    @property
    def limiter(self) -> SendLimiter:
        return self._mine().limiter

    def script(self, source: str) -> Script:
        """The Lua ``source`` registered with :attr:`redis`, once per thread (not per message)."""
        scripts = self._mine().scripts
        script = scripts.get(source)
        if script is None:
            script = scripts[source] = self.redis.register_script(source)
        return script

    def close(self) -> None:
        """Close the Graph client and every thread's Redis connection."""
        self.graph.close()
        if self.emulator is not None:
            self.emulator.close()
        with self._lock:
            opened, self._opened[:] = list(self._opened), []
        for client in opened:
            client.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` on the worker's event loop and return its result.

        An interrupt (time limit, shutdown) cancels it, as for Dramatiq's async actors.
        """
        return self.loop.run_coroutine(coroutine)


_current: Runtime | None = None


def current() -> Runtime:
    """The runtime of this worker process.

    Raises:
        RuntimeError: outside a booted worker.
    """
    if _current is None:
        raise RuntimeError("wapipe runtime is not started (only available inside a worker)")
    return _current


def current_message_id() -> str:
    """The Dramatiq message id of the message being processed (stable across retries)."""
    message = CurrentMessage.get_current_message()
    if message is None:
        raise RuntimeError("no current message")
    return str(message.message_id)


def current_options() -> dict[str, Any]:
    """The current message's options (``retries``, ``wapipe_replay``…); changes are seen by Retries.

    Outside a message: an empty dict of no consequence.
    """
    message = CurrentMessage.get_current_message()
    return {} if message is None else message.options


def _observe_graph(endpoint: str, result: str, seconds: float) -> None:
    metrics = worker_metrics.current()
    metrics.graph_requests.labels(endpoint, result).inc()
    metrics.graph_duration.labels(endpoint).observe(seconds)


def _open(settings: Settings, redis_url: str, loop: EventLoopThread) -> Runtime:
    emulator = None
    if settings.sandbox:
        # The deployment's own emulator, found through Redis (never guessed from PORT).
        client = redis.Redis.from_url(redis_url, socket_timeout=settings.redis_timeout_seconds)
        emulator = EmulatorLink(client, timeout=settings.graph_timeout_seconds)
        graph = GraphClient(
            settings, observe=_observe_graph, endpoint=emulator_endpoint(emulator, settings.api_version)
        )
    else:
        graph = GraphClient(settings, observe=_observe_graph)
    return Runtime(
        settings=settings,
        redis_url=redis_url,
        graph=graph,
        handler=load_handler(settings.handler),
        loop=loop,
        emulator=emulator,
    )


class RuntimeMiddleware(dramatiq.Middleware):
    """Opens the runtime after the worker boots and closes it after the worker stops.

    Must be added after ``AsyncIO``: ``after_*`` hooks run in reverse order, so this one closes
    its resources before the event loop stops.
    """

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _current
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            raise RuntimeError("the AsyncIO middleware must run before RuntimeMiddleware")
        _current = _open(self.settings, self.redis_url, loop_thread)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _current
        if _current is not None:
            _current.close()
        _current = None

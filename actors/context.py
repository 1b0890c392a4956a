"""What a stage works with: the worker's resources, and the :class:`Context` of one run.

A stage is ``run(context, argument)``: everything it touches comes in through the context —
settings, the state store on the calling thread's own Redis connection, the Graph API client,
the reply handler, the metrics, and the message being processed (its id and options). The worker
builds one per run (:class:`Resources`, owned by :class:`ResourcesMiddleware`); a test builds one
with :meth:`Resources.context` on a real Redis and a fake Graph API, without a worker.

The stages are plain functions run by Dramatiq's worker threads (its native model), and their I/O
blocks those threads: Redis through redis-py's blocking client, on a connection of each thread's
own (:func:`daemon.store.queues.thread_redis_client`), the Graph API through the keep-alive pool of
:mod:`daemon.http_pool` (a third of aiohttp's CPU per request, once the hand-off to an event loop
thread is counted). Only an ``async`` custom reply handler is awaited, on the one event loop
thread of Dramatiq's ``AsyncIO`` middleware (:meth:`Context.run_coroutine`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dramatiq
import redis
from dramatiq.asyncio import get_event_loop_thread

from actors.metrics import WorkerMetrics
from actors.metrics import current as current_metrics
from daemon.bot import takes_conversation
from daemon.config import Settings
from daemon.graph import GraphClient, emulator_endpoint
from daemon.handler import Handler, load_handler
from daemon.sandbox_link import EmulatorLink
from daemon.store import Store, journeys
from daemon.store.deadletters import REPLAY, RESEND_UNKNOWN
from daemon.store.queues import thread_redis_client

T = TypeVar("T")
RetryT = TypeVar("RetryT", bound=dramatiq.Retry)
#: Awaits a coroutine on the worker's event loop and returns its result.
CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], Any]


@dataclass(slots=True)
class Journal:
    """What a run found, for its event in the message's journey: ids and figures, never content."""

    fields: dict[str, Any] = field(default_factory=dict)
    #: The run's ``done`` event was written with the stage's last write (:meth:`Context.done`).
    written: bool = False


@dataclass(frozen=True, slots=True)
class Context:
    """One run of a stage: its dependencies and the message it processes."""

    settings: Settings
    #: The state store on this thread's Redis connection.
    store: Store
    graph: GraphClient
    handler: Handler
    metrics: WorkerMetrics
    #: The Dramatiq message id: stable across the message's retries.
    message_id: str
    #: Whether the handler takes the conversation (a bot, or a two-argument function).
    conversational: bool
    #: The message's options (``retries``…); a change is seen by the retry middleware.
    options: dict[str, Any]
    run_coroutine: CoroutineRunner
    #: What the run found, for its event in the message's journey (``wapipe trace``).
    journal: Journal = field(default_factory=Journal)
    #: The (number, user, message id) this run is marked running under in its user's order
    #: (:func:`actors.ordering.wait_for_earlier`); a run that fails takes the mark back.
    running: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ordered(self) -> bool:
        """Whether a user's messages are handled one at a time, in order (:mod:`actors.ordering`):
        always for a handler that takes the conversation, else unless ``WAPIPE_USER_ORDER`` is off."""
        return self.conversational or self.settings.user_order

    @property
    def retries(self) -> int:
        """How many times this message was retried before this run."""
        return int(self.options.get("retries", 0))

    @property
    def replay(self) -> bool:
        """An operator replayed this message from the dead letters (``wapipe dlq replay``)."""
        return bool(self.options.get(REPLAY))

    @property
    def resend_unknown(self) -> bool:
        """The operator allowed resending what may have been delivered (``--resend-unknown``)."""
        return bool(self.options.get(RESEND_UNKNOWN))

    def done(self, stage: str, subject: str) -> tuple[str, str]:
        """The run's ``done`` event for ``subject``'s journey, for a stage that writes it with its
        last write (a round trip less); the worker then does not write it again."""
        self.journal.written = True
        return subject, journeys.event(stage, "done", self.retries + 1, **self.journal.fields)

    def not_counted(self, retry: RetryT) -> RetryT:
        """Make ``retry`` not count as one of the message's retries (the middleware adds one back)."""
        self.options["retries"] = self.retries - 1
        return retry


@dataclass(frozen=True, slots=True)
class Resources:
    """A worker process's resources; :meth:`context` gives a run its share of them.

    The state store is per thread: each worker thread talks to Redis on a connection of its own
    (see :func:`daemon.store.queues.thread_redis_client`), opened at its first use and closed
    with the resources.
    """

    settings: Settings
    redis_url: str
    graph: GraphClient
    handler: Handler
    metrics: WorkerMetrics
    run_coroutine: CoroutineRunner
    emulator: EmulatorLink | None = None
    #: Whether :attr:`handler` takes the conversation (decided once, when it is loaded).
    conversational: bool = False
    _local: threading.local = field(default_factory=threading.local)
    _opened: list[redis.Redis] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def store(self) -> Store:
        """The calling thread's state store."""
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            client = thread_redis_client(self.redis_url, self.settings.redis_timeout_seconds)
            store = self._local.store = Store.on(client, self.settings)
            with self._lock:
                self._opened.append(client)
        return store

    def context(self, message_id: str, options: dict[str, Any]) -> Context:
        """The context of one run of the message ``message_id`` with ``options``."""
        return Context(
            settings=self.settings,
            store=self.store,
            graph=self.graph,
            handler=self.handler,
            metrics=self.metrics,
            message_id=message_id,
            conversational=self.conversational,
            options=options,
            run_coroutine=self.run_coroutine,
        )

    def close(self) -> None:
        """Close the Graph client and every thread's Redis connection."""
        self.graph.close()
        if self.emulator is not None:
            self.emulator.close()
        with self._lock:
            opened, self._opened[:] = list(self._opened), []
        for client in opened:
            client.close()

    @classmethod
    def open(
        cls, settings: Settings, redis_url: str, run_coroutine: CoroutineRunner, metrics: WorkerMetrics
    ) -> Resources:
        """Connect to the Graph API (in sandbox mode: the deployment's own emulator, found through
        Redis, never guessed from PORT) and load the reply handler."""

        def observe(endpoint: str, result: str, seconds: float) -> None:
            metrics.graph_requests.labels(endpoint, result).inc()
            metrics.graph_duration.labels(endpoint).observe(seconds)

        emulator = None
        if settings.sandbox:
            client = redis.Redis.from_url(redis_url, socket_timeout=settings.redis_timeout_seconds)
            emulator = EmulatorLink(client, timeout=settings.graph_timeout_seconds)
            graph = GraphClient(
                settings, observe=observe, endpoint=emulator_endpoint(emulator, settings.api_version)
            )
        else:
            graph = GraphClient(settings, observe=observe)
        handler = load_handler(settings.handler)
        return cls(
            settings=settings,
            redis_url=redis_url,
            graph=graph,
            handler=handler,
            conversational=takes_conversation(handler),
            metrics=metrics,
            run_coroutine=run_coroutine,
            emulator=emulator,
        )


class ResourcesMiddleware(dramatiq.Middleware):
    """Opens the worker's :class:`Resources` after it boots and closes them after it stops.

    Must be added after ``AsyncIO``: ``after_*`` hooks run in reverse order, so this one closes
    its resources before the event loop stops.
    """

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.resources: Resources | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        loop_thread = get_event_loop_thread()
        if loop_thread is None:
            raise RuntimeError("the AsyncIO middleware must run before ResourcesMiddleware")
        # An interrupt (time limit, shutdown) cancels the coroutine, as for Dramatiq's async actors.
        self.resources = Resources.open(
            self.settings, self.redis_url, loop_thread.run_coroutine, current_metrics()
        )

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.resources is not None:
            self.resources.close()
        self.resources = None

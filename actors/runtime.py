"""Per-process resources of a worker: created after the worker boots, closed at shutdown.

Async actors run on the one event loop thread of Dramatiq's ``AsyncIO`` middleware, so the
``redis.asyncio`` client and the Graph API's aiohttp session are created on that loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import dramatiq
import redis.asyncio as aioredis
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import CurrentMessage

from actors import metrics as worker_metrics
from daemon.config import Settings
from daemon.graph import GraphClient
from daemon.handler import Handler, load_handler
from daemon.queue import AsyncQueue, redis_client
from daemon.ratelimit import SendLimiter


@dataclass(frozen=True, slots=True)
class Runtime:
    """What actors use: settings, Redis, the queue writer, the Graph API client, the handler."""

    settings: Settings
    redis: aioredis.Redis
    queue: AsyncQueue
    graph: GraphClient
    handler: Handler
    limiter: SendLimiter


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


async def _open(settings: Settings, redis_url: str) -> Runtime:
    client = redis_client(redis_url, settings.redis_timeout_seconds)
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.graph_timeout_seconds),
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=64),
        headers={"User-Agent": "wapipe/0.1"},
    )
    return Runtime(
        settings=settings,
        redis=client,
        queue=AsyncQueue(client),
        graph=GraphClient(session, settings, observe=_observe_graph),
        handler=load_handler(settings.handler),
        limiter=SendLimiter(
            client,
            per_number_rate=settings.send_rate,
            pair_interval_ms=settings.pair_interval_ms,
            pair_burst=settings.pair_burst,
        ),
    )


async def _close(runtime: Runtime) -> None:
    await runtime.graph.close()
    await runtime.redis.aclose()


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
        _current = loop_thread.run_coroutine(_open(self.settings, self.redis_url))

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        global _current
        loop_thread = get_event_loop_thread()
        if _current is not None and loop_thread is not None:
            loop_thread.run_coroutine(_close(_current))
        _current = None

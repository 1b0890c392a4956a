"""The web edge: Meta's webhook (handshake and deliveries), health, readiness and metrics.

``POST /webhook`` answers 200 only after Redis accepted one ``verify`` message holding the exact
bytes, the signature header and the receive time. Everything else happens in the actors.

The edge faces the internet before any signature is checked, so what a stranger can hold is
bounded (:class:`EdgeGuard`): a request head must arrive within ``WAPIPE_HEADER_TIMEOUT_SECONDS``
(idle keep-alive connections close after it too), a body within ``WAPIPE_BODY_TIMEOUT_SECONDS``
(else 400); at most ``WAPIPE_MAX_CONCURRENT_REQUESTS`` webhook requests and
``WAPIPE_MAX_BUFFERED_BYTES`` of their bodies are held at once (503 above, before reading), with
headroom kept for small bodies, so that a flood of large ones never crowds out Meta's webhooks
(a few KB each). Any body gets 200, 400, 401, 413, 415 or 503, never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from daemon import envelope, logs, metrics, outgoing, sandbox, sandbox_chat, signature
from daemon.config import Settings
from daemon.pipeline import QUEUES, VERIFY, Webhook
from daemon.sandbox_link import Announcer, EmulatorRecord
from daemon.startup import listen_error
from daemon.store.queues import AsyncQueue, redis_client

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", aioredis.Redis)
QUEUE = web.AppKey("queue", AsyncQueue)
WEB_METRICS = web.AppKey("web_metrics", metrics.WebMetrics)
EMULATOR = web.AppKey("emulator", sandbox.Emulator)

#: How long a reading of the queue depth is reused before Redis is asked again.
DEPTH_CACHE_SECONDS = 0.1


class Backpressure:
    """Decides whether the pipeline has room, reading the ready depth at most every 100 ms.

    Concurrent requests share one reading in flight instead of each asking Redis.
    """

    def __init__(self, queue: AsyncQueue, limit: int) -> None:
        self._queue = queue
        self._limit = limit
        self._depth = 0
        self._read_at = float("-inf")
        self._reading: asyncio.Task[int] | None = None

    async def overloaded(self) -> bool:
        if time.monotonic() - self._read_at >= DEPTH_CACHE_SECONDS:
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._queue.ready_depth(QUEUES))
                self._reading.add_done_callback(self._forget_reading)
            self._depth = await asyncio.shield(self._reading)
            self._read_at = time.monotonic()
        return self._depth > self._limit

    def _forget_reading(self, reading: asyncio.Task[int]) -> None:
        self._reading = None
        if not reading.cancelled():
            reading.exception()  # its waiters may all have timed out: mark the outcome as seen


BACKPRESSURE = web.AppKey("backpressure", Backpressure)


async def handshake(request: web.Request) -> web.Response:
    """Meta's GET verification: echo ``hub.challenge`` when the token matches, else 403."""
    settings = request.app[SETTINGS]
    query = request.rel_url.query
    mode = query.get("hub.mode")
    token = query.get("hub.verify_token")
    challenge = query.get("hub.challenge")
    expected = settings.verify_token.get().encode("utf-8")
    token_ok = token is not None and hmac.compare_digest(token.encode("utf-8"), expected)
    if mode == "subscribe" and token_ok and challenge:
        log.info("webhook_handshake_ok")
        return web.Response(text=challenge, content_type="text/plain")
    log.warning("webhook_handshake_refused", extra={"mode": mode, "has_challenge": bool(challenge)})
    return web.Response(status=403, text="forbidden", content_type="text/plain")


class EdgeGuard:
    """Counts the webhook requests in progress and the body bytes they hold (see the module
    docstring). Single-threaded: it lives on the web's event loop."""

    #: Bodies up to this size may use :data:`SMALL_HEADROOM` beyond the buffered-bytes cap.
    SMALL_BODY = 65_536
    SMALL_HEADROOM = 8 * 1_048_576
    #: After holding this much, memory is handed back to the system once nothing is held.
    TRIM_AFTER = 16 * 1_048_576

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0
        self.buffered = 0
        self._held_since_trim = 0
        self._trim: asyncio.TimerHandle | None = None

    def reserve(self, size: int) -> bool:
        """Hold ``size`` more body bytes, if the cap allows."""
        limit = self.max_bytes + (self.SMALL_HEADROOM if size <= self.SMALL_BODY else 0)
        if self.buffered + size > limit:
            return False
        self.buffered += size
        self._held_since_trim += size
        return True

    def release(self, size: int) -> None:
        self.buffered -= size
        if self.buffered == 0 and self._held_since_trim > self.TRIM_AFTER and self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(1.0, self._give_back)

    def _give_back(self) -> None:
        """Return freed heap pages to the system after a burst of large bodies (glibc keeps them
        otherwise, and the process would stay at its peak)."""
        self._trim = None
        if self.buffered == 0:
            self._held_since_trim = 0
            _malloc_trim()


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


GUARD = web.AppKey("edge_guard", EdgeGuard)


class _Refused(Exception):
    """A delivery refused with ``status``; ``outcome`` labels the metric."""

    def __init__(self, status: int, outcome: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.outcome = outcome
        self.text = text


class _Held:
    """The body bytes one request holds in the guard, released when it is answered."""

    def __init__(self, guard: EdgeGuard) -> None:
        self.guard = guard
        self.size = 0

    def take(self, size: int) -> None:
        if not self.guard.reserve(size):
            log.warning("webhook_bodies_over_limit", extra={"buffered": self.guard.buffered})
            raise _Refused(503, "overloaded", "too much in progress, retry later")
        self.size += size

    def release(self) -> None:
        self.guard.release(self.size)
        self.size = 0


async def _read_body(request: web.Request, limit: int, held: _Held) -> bytes:
    """The raw body, refusing (413) before reading more than ``limit`` bytes and (503) past what
    the guard lets requests hold."""
    announced = request.content_length
    if announced is not None and announced > limit:
        raise _Refused(413, "too_large", "payload too large")
    if announced is not None:
        held.take(announced)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, "too_large", "payload too large")
        if announced is None or size > announced:
            held.take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def receive(request: web.Request) -> web.Response:
    """A webhook delivery: room, size, signature, JSON, queue room, durable enqueue, then 200."""
    started = time.perf_counter()
    web_metrics = request.app[WEB_METRICS]
    guard = request.app[GUARD]
    held = _Held(guard)
    guard.requests += 1
    try:
        envelope_id = await _accept(request, held)
    except _Refused as refused:
        web_metrics.observe(refused.outcome, time.perf_counter() - started)
        response = web.Response(status=refused.status, text=refused.text, content_type="text/plain")
        if not request.content.at_eof():
            response.force_close()  # the rest of the body is not read: the connection cannot be reused
        return response
    except Exception as error:  # noqa: BLE001 - a bug must not become a 500 that Meta retries for days
        log.error(
            "webhook_failed_unexpectedly",
            extra={"error": type(error).__name__, "traceback": logs.traceback_lines(error)},
        )
        web_metrics.observe("unavailable", time.perf_counter() - started)
        return web.Response(status=503, text="unavailable, retry later", content_type="text/plain")
    finally:
        guard.requests -= 1
        held.release()
    web_metrics.observe("accepted", time.perf_counter() - started)
    log.debug("webhook_accepted", extra={"envelope_id": envelope_id})
    return web.Response(text="ok", content_type="text/plain")


async def _accept(request: web.Request, held: _Held) -> str:
    settings = request.app[SETTINGS]
    if held.guard.requests > held.guard.max_requests:
        log.warning("webhook_requests_over_limit", extra={"limit": held.guard.max_requests})
        raise _Refused(503, "overloaded", "too many requests in progress, retry later")
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Meta never compresses; refusing keeps a zip bomb from ever being expanded.
        raise _Refused(415, "bad_json", "content encoding not supported")
    try:
        async with asyncio.timeout(settings.body_timeout_seconds):
            body = await _read_body(request, settings.max_body_bytes, held)
    except TimeoutError:
        log.warning("webhook_body_too_slow", extra={"timeout_seconds": settings.body_timeout_seconds})
        raise _Refused(400, "bad_json", "body not received in time") from None
    header = request.headers.get(signature.HEADER)
    try:
        signature.verify(body, header, settings.app_secret.get())
    except signature.SignatureError as error:
        log.warning("webhook_bad_signature", extra={"reason": str(error), "bytes": len(body)})
        raise _Refused(401, "bad_signature", "invalid signature") from None
    try:
        text = body.decode("utf-8")
        envelope.loads(text)
    except ValueError:  # UnicodeDecodeError, JSONDecodeError and NotStandardJSON are all ValueErrors
        log.warning("webhook_bad_json", extra={"bytes": len(body)})
        raise _Refused(400, "bad_json", "body is not JSON") from None
    assert header is not None  # verified above
    delivery = Webhook(body=text, signature=header.strip(), received_at=time.time())
    queue = request.app[QUEUE]
    try:
        async with asyncio.timeout(settings.redis_timeout_seconds):
            if await request.app[BACKPRESSURE].overloaded():
                log.warning("webhook_overloaded", extra={"limit": settings.max_queue_depth})
                raise _Refused(503, "overloaded", "queue full, retry later")
            stored = await queue.send(VERIFY, delivery)
    except (RedisError, TimeoutError) as error:
        log.error("webhook_enqueue_failed", extra={"error": type(error).__name__})
        raise _Refused(503, "unavailable", "queue unavailable, retry later") from None
    return str(stored.message_id)


async def healthz(request: web.Request) -> web.Response:
    """200 while the process runs."""
    return web.Response(text="ok", content_type="text/plain")


async def readyz(request: web.Request) -> web.Response:
    """200 when Redis answers a PING within the Redis timeout; 503 otherwise."""
    settings = request.app[SETTINGS]
    try:
        async with asyncio.timeout(settings.redis_timeout_seconds):
            await request.app[REDIS].ping()
    except (RedisError, TimeoutError) as error:
        return web.Response(status=503, text=f"redis unavailable: {type(error).__name__}")
    return web.Response(text="ok", content_type="text/plain")


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text format; the queue figures are read from Redis now."""
    settings = request.app[SETTINGS]
    web_metrics = request.app[WEB_METRICS]
    try:
        async with asyncio.timeout(settings.redis_timeout_seconds):
            stats = {queue: await request.app[QUEUE].stats(queue) for queue in QUEUES}
    except (RedisError, TimeoutError):
        stats = None
    web_metrics.set_queue_stats(stats)
    body, content_type = web_metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def make_app(settings: Settings, redis_url: str) -> web.Application:
    """The web application; Redis is connected in ``cleanup_ctx`` and closed on shutdown."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[WEB_METRICS] = metrics.WebMetrics()
    app[GUARD] = EdgeGuard(settings.max_concurrent_requests, settings.max_buffered_bytes)

    async def redis_lifecycle(app: web.Application) -> AsyncIterator[None]:
        client = redis_client(redis_url, settings.redis_timeout_seconds)
        queue = AsyncQueue(client)
        app[REDIS] = client
        app[QUEUE] = queue
        app[BACKPRESSURE] = Backpressure(queue, settings.max_queue_depth)
        yield
        await client.aclose()

    app.cleanup_ctx.append(redis_lifecycle)
    app.router.add_get("/webhook", handshake)
    app.router.add_post("/webhook", receive)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    if settings.send_token is not None:
        app.cleanup_ctx.append(outgoing.lifecycle(redis_url, settings))
        app.router.add_routes(outgoing.routes(settings, lambda request: request.app[REDIS]))
    if settings.sandbox:
        emulator = sandbox.Emulator(lambda request: request.app[REDIS], settings.max_body_bytes)
        app[EMULATOR] = emulator
        sandbox.mount(app, emulator)
        emulator.chat = sandbox_chat.Chat(settings, emulator, lambda request: request.app[REDIS], redis_url)
        sandbox_chat.mount(app, emulator.chat)
    return app


def advertised_url(host: str, port: int) -> str:
    """The URL other processes on this machine reach a server listening on (host, port) at."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - a wildcard bind is reached through loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(settings: Settings, redis_url: str) -> None:
    """Run the web until SIGTERM or SIGINT, then shut down gracefully.

    In sandbox mode the emulator is recorded in Redis once the web listens, and withdrawn at stop.

    Raises:
        StartupError: the port cannot be listened on (one line naming ``PORT``).
    """
    app = make_app(settings, redis_url)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        # aiohttp closes a connection that has not sent a whole request head within this (and an
        # idle keep-alive connection after it): a slow or silent client cannot hold one forever.
        keepalive_timeout=settings.header_timeout_seconds,
        # Nothing is decompressed: a compressed body is refused (415) without being inflated.
        auto_decompress=False,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    announcer: Announcer | None = None
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as error:
            raise listen_error("PORT", settings.host, settings.port, error) from None
        port = _bound_port(runner, settings.port)
        log.info("web_listening", extra={"host": settings.host, "port": port, "sandbox": settings.sandbox})
        if settings.sandbox:
            emulator = app[EMULATOR]
            emulator.web_url = advertised_url(settings.host, port)
            announcer = Announcer(app[REDIS], EmulatorRecord(emulator.web_url, emulator.token))
            recorded = await announcer.start()
            log.info(
                "sandbox_emulator_recorded" if recorded else "sandbox_emulator_standby",
                extra={"url": emulator.web_url},
            )
        await stop.wait()
        log.info("web_stopping")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if announcer is not None:
            await announcer.stop()
        await runner.cleanup()


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    """The port actually bound (``PORT=0`` asks the system for a free one)."""
    with contextlib.suppress(IndexError, TypeError):
        return int(runner.addresses[0][1])
    return configured

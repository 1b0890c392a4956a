"""A load generator acting as Meta: signed webhooks over keep-alive connections, bounded in count
and time, as fast as possible or at a fixed rate. Records send time and answer time per request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from daemon.signature import sign
from daemon.simulate import meta_body

PHONE_NUMBER_ID = "100000000000001"
#: How many users the load's messages come from, in turn (message n from user n mod USERS): a
#: business's traffic is many users writing a few messages each. One user's flood is another
#: load (``python -m bench.pacing``, ``python -m bench.run --users 1``): Meta lets a user get one
#: message every 6 s after a burst of 20, and wapipe answers each user's messages one at a time.
USERS = 1000


def wa_id(user: int) -> str:
    """The number of the load's ``user``-th user (user 1234 is ``15550001234``)."""
    return str(15550000000 + user)


def webhook(message_id: str, text: str = "benchmark message", user: int = 1234) -> bytes:
    """A ~1.5 KB text webhook from ``user`` as Meta serialises it (compact, ASCII, escaped slashes)."""
    sender = wa_id(user)
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [
            {
                "profile": {"name": "Bench User " + "x" * 880},
                "wa_id": sender,
                "user_id": f"US.{sender}00001",  # the business-scoped id Meta adds (pywa needs it)
            }
        ],
        "messages": [
            {
                "from": sender,
                "id": message_id,
                "timestamp": str(int(time.time())),  # inside the 24-hour window
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }
    return meta_body(envelope)


@dataclass
class Result:
    message_id: str
    sent_at: float
    answered_at: float
    status: int


Request = tuple[str, bytes]

#: Longest wait for one answer; a request not answered by then counts as failed (status 0).
ANSWER_TIMEOUT_SECONDS = 30.0


def requests(prefix: str, count: int, users: int = USERS) -> list[Request]:
    """``count`` unique signed-to-be webhooks, each with its message id, from ``users`` users in
    turn (``users=1``: all from user 0)."""
    return [(f"wamid.{prefix}.{n}", webhook(f"wamid.{prefix}.{n}", user=n % users)) for n in range(count)]


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a request and waits for its answer.

    Just enough HTTP for the servers measured here (answers with ``Content-Length``), on a bare
    asyncio protocol like wrk's event loop in C: with aiohttp's client the generator took about
    as much CPU per request as the web server it measured, on the same two cores.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answer: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("connection closed before the answer"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None:
            return
        status_line, *lines = self.buffer[:end].split(b"\r\n")
        headers = dict(line.lower().split(b":", 1) for line in lines)
        if b"transfer-encoding" in headers:
            self.answer.set_exception(NotImplementedError("only answers with a Content-Length"))
            return
        length = int(headers.get(b"content-length", b"0"))
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        if headers.get(b"connection", b"").strip() == b"close":
            self.closed = True
        if not self.answer.done():
            self.answer.set_result(int(status_line.split()[1]))

    async def exchange(self, raw: bytes) -> int:
        loop = asyncio.get_running_loop()
        self.answer = answer = loop.create_future()
        assert self.transport is not None
        self.transport.write(raw)
        timer = loop.call_later(
            ANSWER_TIMEOUT_SECONDS, lambda: answer.done() or answer.set_exception(TimeoutError())
        )
        try:
            return await answer
        finally:
            timer.cancel()
            self.answer = None


class _Client:
    """Signed webhook POSTs to one URL over keep-alive connections, reopened when closed."""

    def __init__(self, url: str, secret: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
        self.secret = secret
        self.open: list[_Connection] = []

    async def post(
        self, connection: _Connection | None, request: Request
    ) -> tuple[Result, _Connection | None]:
        message_id, body = request
        raw = (
            f"{self.head}X-Hub-Signature-256: {sign(body, self.secret)}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("ascii") + body
        started = time.time()
        try:
            if connection is None or connection.closed:
                _, connection = await asyncio.get_running_loop().create_connection(
                    _Connection, self.host, self.port
                )
                self.open.append(connection)
            status = await connection.exchange(raw)
        except (OSError, TimeoutError):
            if connection is not None and connection.transport is not None:
                connection.transport.close()
            return Result(message_id, started, time.time(), 0), None
        return Result(message_id, started, time.time(), status), connection

    def close(self) -> None:
        for connection in self.open:
            if connection.transport is not None:
                connection.transport.close()


async def as_fast_as_possible(
    url: str, batch: list[Request], *, secret: str, connections: int = 64, deadline_s: float = 60.0
) -> list[Result]:
    """Post every request, ``connections`` at a time, stopping at the deadline."""
    results: list[Result] = []
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for request in batch:
        queue.put_nowait(request)
    stop_at = time.monotonic() + deadline_s
    client = _Client(url, secret)

    async def worker() -> None:
        connection: _Connection | None = None
        while not queue.empty() and time.monotonic() < stop_at:
            result, connection = await client.post(connection, queue.get_nowait())
            results.append(result)

    try:
        await asyncio.gather(*(worker() for _ in range(connections)))
    finally:
        client.close()
    return results


async def at_rate(
    url: str, batch: list[Request], *, secret: str, rate: float, connections: int = 64
) -> list[Result]:
    """Post at ``rate`` per second (open loop: a slow answer does not slow the schedule, up to
    ``connections`` requests in flight)."""
    client = _Client(url, secret)
    idle: asyncio.Queue[_Connection | None] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(None)

    async def one(request: Request) -> Result:
        connection = await idle.get()
        result, connection = await client.post(connection, request)
        idle.put_nowait(connection)
        return result

    try:
        start = time.monotonic()
        tasks = []
        for n, request in enumerate(batch):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(request)))
        return list(await asyncio.gather(*tasks))
    finally:
        client.close()

"""A load generator acting as Meta: signed webhooks over a pool of connections, bounded in count
and time, as fast as possible or at a fixed rate. Records send time and answer time per request."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from daemon.signature import sign
from daemon.simulate import meta_body

PHONE_NUMBER_ID = "100000000000001"


def webhook(message_id: str, text: str = "benchmark message") -> bytes:
    """A ~1.5 KB text webhook as Meta serialises it (compact, ASCII, escaped slashes)."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Bench User " + "x" * 900}, "wa_id": "15550001234"}],
        "messages": [
            {
                "from": "15550001234",
                "id": message_id,
                "timestamp": "1767225600",
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


def requests(prefix: str, count: int) -> list[Request]:
    """``count`` unique signed-to-be webhooks, each with its message id."""
    return [(f"wamid.{prefix}.{n}", webhook(f"wamid.{prefix}.{n}")) for n in range(count)]


async def _post(session: aiohttp.ClientSession, url: str, request: Request, secret: str) -> Result:
    message_id, body = request
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, secret)}
    started = time.time()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return Result(message_id, started, time.time(), response.status)
    except (aiohttp.ClientError, TimeoutError):
        return Result(message_id, started, time.time(), 0)


def _session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), timeout=aiohttp.ClientTimeout(total=30)
    )


async def as_fast_as_possible(
    url: str, batch: list[Request], *, secret: str, connections: int = 64, deadline_s: float = 60.0
) -> list[Result]:
    """Post every request, ``connections`` at a time, stopping at the deadline."""
    results: list[Result] = []
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for request in batch:
        queue.put_nowait(request)
    stop_at = time.monotonic() + deadline_s
    async with _session(connections) as session:

        async def worker() -> None:
            while not queue.empty() and time.monotonic() < stop_at:
                results.append(await _post(session, url, queue.get_nowait(), secret))

        await asyncio.gather(*(worker() for _ in range(connections)))
    return results


async def at_rate(
    url: str, batch: list[Request], *, secret: str, rate: float, connections: int = 64
) -> list[Result]:
    """Post at ``rate`` per second (open loop: a slow answer does not slow the schedule)."""
    async with _session(connections) as session:
        start = time.monotonic()
        tasks = []
        for n, request in enumerate(batch):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(session, url, request, secret)))
        return list(await asyncio.gather(*tasks))

"""A lean transport over the fake Graph API core (:mod:`daemon.fake_graph`) for the benchmark:
answers sends and read receipts as the core says, records when each reply arrived (by the inbound
id it quotes). ``GET /stats`` returns them; ``DELETE /stats`` clears.
``PUT /delay?ms=N`` makes every later ``/messages`` answer wait N ms, as a real Graph API would
(the overload step uses it so that the burst outruns the workers whatever their speed).

It speaks just enough HTTP/1.1 (keep-alive, ``Content-Length`` bodies) on a bare asyncio protocol,
so that the fake costs the shared two cores as little as possible: with aiohttp's server it took
about 1 ms of CPU per replied message (two requests), a third of what the whole stack may spend
at 700 messages/s. Any client that sends chunked bodies or pipelines requests is not supported.

Run: ``python -m bench.fake_graph PORT``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time

from daemon import fake_graph as core

received: dict[str, float] = {}
received_all: dict[str, int] = {}
sends: list[float] = []
ids = itertools.count(1)
#: Seconds each ``/messages`` answer waits (``PUT /delay?ms=N``).
delay = 0.0

READ_OK = json.dumps(core.READ_ANSWER).encode()


def response(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("ascii") + body


def handle(method: str, path: str, body: bytes) -> bytes:
    global delay
    if method == "PUT" and path.startswith("/delay?ms="):
        delay = float(path.partition("=")[2]) / 1000
        return response("200 OK", b"{}")
    if path == "/stats":
        if method == "DELETE":
            received.clear()
            received_all.clear()
            sends.clear()
            return response("200 OK", b"{}")
        stats = {"received": received, "received_all": received_all, "sends": sends}
        return response("200 OK", json.dumps(stats).encode())
    message = json.loads(body) if method == "POST" else None
    call = core.route(method, path, message)
    if call.kind == "read":
        return response("200 OK", READ_OK)
    if call.kind != "send":
        return response("404 Not Found", b"{}")
    assert isinstance(message, dict)
    refused = core.check_send(message)
    if refused is not None:
        refusal = core.error_body(refused.code, refused.message, details=refused.details)
        return response(f"{refused.status} Refused", json.dumps(refusal).encode())
    now = time.time()
    sends.append(now)
    message_id = str(core.in_reply_to(message))
    received.setdefault(message_id, now)
    received_all[message_id] = received_all.get(message_id, 0) + 1
    answer = core.send_answer(core.recipient_of(message), f"wamid.bench.{next(ids)}")
    return response("200 OK", json.dumps(answer).encode())


class GraphProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            answer = handle(method, path, body)
            if delay and path.endswith("/messages"):
                asyncio.get_running_loop().call_later(delay, self.transport.write, answer)
            else:
                self.transport.write(answer)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(GraphProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()

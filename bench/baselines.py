"""The two baselines the ingest figures are compared with, served like ``wapipe web``.

- ``bare``: an aiohttp handler that reads the body and answers 200;
- ``hmac_lpush``: + the X-Hub-Signature-256 check + one ``redis.asyncio`` LPUSH, then 200 —
  the ceiling for "verify and enqueue durably" in Python.

Run: ``python -m bench.baselines MODE PORT [REDIS_URL]``.
"""

from __future__ import annotations

import sys

import redis.asyncio as aioredis
from aiohttp import web

from daemon.signature import SignatureError, verify

SECRET = "bench-app-secret"


def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    app = web.Application(client_max_size=4 * 1024 * 1024)
    if mode == "bare":

        async def bare(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(text="ok")

        app.router.add_post("/webhook", bare)
    else:
        client = aioredis.Redis.from_url(sys.argv[3])

        async def hmac_lpush(request: web.Request) -> web.Response:
            body = await request.read()
            try:
                verify(body, request.headers.get("X-Hub-Signature-256"), SECRET)
            except SignatureError:
                return web.Response(status=401)
            await client.lpush("bench:baseline", body)
            return web.Response(text="ok")

        app.router.add_post("/webhook", hmac_lpush)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()

"""A lean fake Graph API for the benchmark: answers sends and read receipts, records when each
reply arrived (by the inbound id it quotes). ``GET /stats`` returns them; ``DELETE /stats`` clears.

Run: ``python -m bench.fake_graph PORT``.
"""

from __future__ import annotations

import itertools
import json
import sys
import time

from aiohttp import web

received: dict[str, float] = {}
sends: list[float] = []
ids = itertools.count(1)


async def messages(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("status") == "read":
        return web.json_response({"success": True})
    now = time.time()
    sends.append(now)
    context = body.get("context") or {}
    received.setdefault(str(context.get("message_id")), now)
    return web.json_response(
        {"messaging_product": "whatsapp", "messages": [{"id": f"wamid.bench.{next(ids)}"}]}
    )


async def stats(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        received.clear()
        sends.clear()
        return web.json_response({})
    return web.Response(
        text=json.dumps({"received": received, "sends": sends}), content_type="application/json"
    )


def main() -> None:
    app = web.Application()
    app.router.add_post("/{version}/{phone_number_id}/messages", messages)
    app.router.add_route("*", "/stats", stats)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()

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
received_all: dict[str, int] = {}
sends: list[float] = []
ids = itertools.count(1)


async def messages(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("status") == "read":
        return web.json_response({"success": True})
    now = time.time()
    sends.append(now)
    context = body.get("context") or {}
    message_id = str(context.get("message_id"))
    received.setdefault(message_id, now)
    received_all[message_id] = received_all.get(message_id, 0) + 1
    return web.json_response(
        {"messaging_product": "whatsapp", "messages": [{"id": f"wamid.bench.{next(ids)}"}]}
    )


async def stats(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        received.clear()
        received_all.clear()
        sends.clear()
        return web.json_response({})
    body = {"received": received, "received_all": received_all, "sends": sends}
    return web.Response(text=json.dumps(body), content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/{version}/{phone_number_id}/messages", messages)
    app.router.add_route("*", "/stats", stats)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()

"""reply: run the reply handler, mark the message read, send the replies at most once.

Queue ``wapipe``. Receives one ``item`` (the inbound message object, its ``phone_number_id`` and
contact, ``received_at``). The handler (DESIGN.md's default, or ``WAPIPE_HANDLER``) returns the
outbound messages; none means "handled without reply" and no read receipt. Otherwise the message
is marked read (a failure is logged and does not stop the reply), then each outbound message is
sent from the envelope's own ``phone_number_id``.

At most once: before each send a ledger key ``wapipe:reply:{phone_number_id}:{id}:{n}`` is claimed
in Redis. A send that surely did not happen (no connection, 5xx / 429, a Graph error) releases the
claim and is retried; a send that may have happened (timeout after the request went out, a worker
that died mid-send) keeps the claim and is dead-lettered as "unknown outcome", never resent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from actors import runtime
from actors.errors import GraphRejected, ItemRejected, OutcomeUnknown
from daemon.graph import GraphError, GraphUnreachable, SendOutcomeUnknown
from daemon.handler import InboundMessage, Outbound, call_handler

log = logging.getLogger(__name__)

ACTOR_NAME = "reply"
OPTIONS: dict[str, Any] = {}

#: The reply ledger outlives the message dedup window by a day.
LEDGER_EXTRA_SECONDS = 86_400


async def run(item: dict[str, Any]) -> None:
    rt = runtime.current()
    if not isinstance(item.get("message"), dict) or not item["message"].get("id"):
        raise ItemRejected("inbound message has no id", envelope_id=item.get("envelope_id"))
    message = InboundMessage.from_item(item)
    fields = {"actor": ACTOR_NAME, "message_id": message.id, "type": message.type}
    outbound = await call_handler(rt.handler, message)
    if not outbound:
        log.info("handled_without_reply", extra=fields)
        return
    recipient = _recipient(message)
    await _mark_read(rt, message, fields)
    replay = bool(runtime.current_options().get("wapipe_replay"))
    for index, body in enumerate(outbound):
        await _send_once(rt, message, index, {**recipient, **body, "messaging_product": "whatsapp"}, replay)
    log.info(
        "replied",
        extra={
            **fields,
            "replies": len(outbound),
            "latency_ms": round((time.time() - item["received_at"]) * 1000),
        },
    )


def _recipient(message: InboundMessage) -> dict[str, str]:
    if message.from_:
        return {"recipient_type": "individual", "to": "+" + message.from_}
    if message.from_user_id:
        return {"recipient_type": "individual", "recipient": message.from_user_id}
    raise ItemRejected("inbound message has neither from nor from_user_id", message_id=message.id)


async def _mark_read(rt: runtime.Runtime, message: InboundMessage, fields: dict[str, Any]) -> None:
    try:
        await rt.graph.mark_read(message.phone_number_id, message.id)
    except (GraphError, GraphUnreachable, SendOutcomeUnknown) as error:
        log.warning("mark_read_failed", extra={**fields, "error": str(error)[:200]})


async def _send_once(
    rt: runtime.Runtime, message: InboundMessage, index: int, body: Outbound, replay: bool
) -> None:
    key = f"wapipe:reply:{message.phone_number_id}:{message.id}:{index}"
    ttl = rt.settings.message_dedup_ttl_seconds + LEDGER_EXTRA_SECONDS
    claim = f"sending:{runtime.current_message_id()}:{time.time():.3f}"
    claimed = await rt.redis.set(key, claim, nx=True, ex=ttl)
    if not claimed:
        stored = await rt.redis.get(key) or b""
        state = stored.decode() if isinstance(stored, bytes) else str(stored)
        if state.startswith("sent"):
            log.info(
                "reply_already_sent", extra={"actor": ACTOR_NAME, "message_id": message.id, "index": index}
            )
            return
        if not replay:
            raise OutcomeUnknown(
                "an earlier attempt started this send and never finished: it may have been delivered",
                message_id=message.id,
                index=index,
            )
        await rt.redis.set(key, claim, ex=ttl)  # an operator's replay takes the send over
    try:
        result = await rt.graph.send_message(message.phone_number_id, body)
    except SendOutcomeUnknown as error:
        raise OutcomeUnknown(str(error), message_id=message.id, index=index) from None
    except GraphError as error:
        await rt.redis.delete(key)
        if error.kind == "permanent":
            raise GraphRejected(
                error.message,
                code=error.code,
                http_status=error.http_status,
                details=error.details,
                fbtrace_id=error.fbtrace_id,
                message_id=message.id,
            ) from None
        raise
    except GraphUnreachable:
        await rt.redis.delete(key)
        raise
    await rt.redis.set(key, f"sent:{result.message_id}", ex=ttl)

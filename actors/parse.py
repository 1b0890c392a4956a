"""parse: split a verified envelope into items, deduplicate them, route each one.

Queue ``wapipe``. Receives the verified ``body``, ``received_at`` and ``envelope_id``. Every
entry × change × message / status / error becomes an item:

- messages are deduplicated by ``id`` (``WAPIPE_MESSAGE_DEDUP_TTL_SECONDS``, 8 days) and handed to
  ``fetch_media`` (image, video, audio, document, sticker) or straight to ``reply``;
- statuses are deduplicated by ``id`` + ``status`` (1 day) and recorded monotonically;
- value-level errors and fields other than ``messages`` are logged and counted;
- items for a ``phone_number_id`` outside ``WAPIPE_PHONE_NUMBER_IDS`` are dropped with a count.

Counts are kept in the Redis hash ``wapipe:stats`` (shared by every worker, kept across restarts):
``field_unhandled:{field}``, ``dropped_foreign_number``, ``error_item:{code}``, ``duplicate:{kind}``.

A dedup mark records which parse attempt claimed it, so a retried parse (same Dramatiq message id)
hands its items on again instead of taking them for duplicates; the reply ledger keeps that from
answering twice. Retries: bounded by ``WAPIPE_RETRY_*``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from actors import metrics, runtime
from daemon.envelope import MEDIA_TYPES, Item, split
from daemon.queue import build_message

log = logging.getLogger(__name__)

ACTOR_NAME = "parse"
OPTIONS: dict[str, Any] = {}

#: Status order: a status only replaces a lower one; ``failed`` is terminal.
STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3, "played": 4, "failed": 5}
STATUS_TTL_SECONDS = 30 * 86_400
STATS_KEY = "wapipe:stats"

_RECORD_STATUS = """
local current = tonumber(redis.call('HGET', KEYS[1], 'rank') or '0')
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'rank', ARGV[2], 'timestamp', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 1
end
return 0
"""


def dedup_key(item: Item) -> str | None:
    """The Redis key that marks ``item`` as seen, or None for items without an id."""
    item_id = item.data.get("id")
    if not isinstance(item_id, str) or not item_id:
        return None
    if item.kind == "message":
        return f"wapipe:seen:msg:{item_id}"
    return f"wapipe:seen:status:{item_id}:{item.data.get('status')}"


async def run(body: str, received_at: float, envelope_id: str) -> None:
    rt = runtime.current()
    settings = rt.settings
    attempt_id = runtime.current_message_id()
    replay = bool(runtime.current_options().get("wapipe_replay"))
    allowed = settings.phone_number_ids
    work: list[tuple[int, Item]] = []
    counts: Counter[str] = Counter()
    for index, item in enumerate(split(json.loads(body))):
        if item.kind == "field":
            counts[f"field_unhandled:{item.field}"] += 1
            log.info(
                "field_unhandled",
                extra={"actor": ACTOR_NAME, "envelope_id": envelope_id, "field": item.field},
            )
        elif allowed is not None and item.phone_number_id not in allowed:
            counts["dropped_foreign_number"] += 1
            log.info(
                "item_dropped_foreign_number",
                extra={
                    "actor": ACTOR_NAME,
                    "envelope_id": envelope_id,
                    "phone_number_id": item.phone_number_id,
                },
            )
        elif item.kind == "error":
            counts[f"error_item:{item.data.get('code')}"] += 1
            log.warning(
                "webhook_error_item",
                extra={"actor": ACTOR_NAME, "envelope_id": envelope_id, "code": item.data.get("code")},
            )
        else:
            work.append((index, item))

    fresh = await _claim(rt, work, attempt_id, replay)
    families = metrics.current()
    for index, item in work:
        if index not in fresh:
            counts[f"duplicate:{item.kind}"] += 1
            families.duplicates.labels(item.kind).inc()
            log.info(
                "duplicate_skipped",
                extra={"actor": ACTOR_NAME, "kind": item.kind, "item_id": item.data.get("id")},
            )
        elif item.kind == "status":
            families.statuses.labels(families.status(item.data.get("status"))).inc()
            await _record_status(rt, item)
        else:
            families.inbound.labels(families.inbound_type(item.data.get("type"))).inc()
    if counts:
        async with rt.redis.pipeline(transaction=False) as pipe:
            for name, count in counts.items():
                pipe.hincrby(STATS_KEY, name, count)
            await pipe.execute()
    for index, item in work:
        if index in fresh and item.kind == "message":
            stage = "fetch_media" if item.data.get("type") in MEDIA_TYPES else "reply"
            await rt.queue.enqueue(build_message(stage, {"item": _handoff(item, received_at, envelope_id)}))


async def _claim(
    rt: runtime.Runtime, work: list[tuple[int, Item]], attempt_id: str, replay: bool
) -> set[int]:
    """Mark every item seen; return the indexes this parse run may hand on."""
    settings = rt.settings
    keyed = [(index, item, dedup_key(item)) for index, item in work]
    fresh = {index for index, _, key in keyed if key is None or replay}
    pending = [(index, item, key) for index, item, key in keyed if key is not None and not replay]
    if not pending:
        return fresh
    async with rt.redis.pipeline(transaction=False) as pipe:
        for index, item, key in pending:
            ttl = (
                settings.message_dedup_ttl_seconds
                if item.kind == "message"
                else settings.status_dedup_ttl_seconds
            )
            pipe.set(key, f"{attempt_id}:{index}", nx=True, ex=ttl)
        claimed = await pipe.execute()
    contested = [(index, key) for (index, _, key), won in zip(pending, claimed, strict=True) if not won]
    fresh.update(index for (index, _, _), won in zip(pending, claimed, strict=True) if won)
    if contested:
        async with rt.redis.pipeline(transaction=False) as pipe:
            for _, key in contested:
                pipe.get(key)
            owners = await pipe.execute()
        for (index, _), owner in zip(contested, owners, strict=True):
            if owner is not None and owner.decode() == f"{attempt_id}:{index}":
                fresh.add(index)  # our own earlier attempt claimed it: hand it on again
    return fresh


async def _record_status(rt: runtime.Runtime, item: Item) -> None:
    status = str(item.data.get("status"))
    rank = STATUS_RANK.get(status, 0)
    await rt.redis.eval(
        _RECORD_STATUS,
        1,
        f"wapipe:status:{item.data.get('id')}",
        status,
        rank,
        str(item.data.get("timestamp", "")),
        STATUS_TTL_SECONDS,
    )
    log.debug("status_recorded", extra={"actor": ACTOR_NAME, "status": status})


def _handoff(item: Item, received_at: float, envelope_id: str) -> dict[str, Any]:
    return {
        "message": item.data,
        "contact": item.contact,
        "phone_number_id": item.phone_number_id,
        "display_phone_number": item.display_phone_number,
        "received_at": received_at,
        "envelope_id": envelope_id,
    }

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
answering twice. Claiming, handing on, recording statuses and counting happen in one Lua script
for the whole envelope: one round trip, and all of it or none. Retries: bounded by
``WAPIPE_RETRY_*``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from actors import metrics, runtime
from daemon.envelope import MEDIA_TYPES, Item, loads, split
from daemon.queue import PUSH_FUNCTION, WAKEUP_CHANNEL, build_message, prepare

log = logging.getLogger(__name__)

ACTOR_NAME = "parse"
OPTIONS: dict[str, Any] = {}

#: Status order: a status only replaces a lower one; ``failed`` is terminal.
STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3, "played": 4, "failed": 5}
STATUS_TTL_SECONDS = 30 * 86_400
STATS_KEY = "wapipe:stats"
#: Stands in for the dedup mark of an item without an id (never read or written).
UNMARKED = "wapipe:seen:-"

#: KEYS: the stats hash, then per item its dedup mark and its target (a message: the queue list and
#: message hash it goes to; a status: its status hash). ARGV: the number of items, then 8 values
#: per item: kind, owner, dedup TTL (s), '1' to skip the dedup check (replay, no id), then for a
#: message ``push``'s id, data, queue and channel, for a status its status, rank, timestamp and
#: TTL (s); then (name, count) pairs to add to the stats hash. A mark held by another owner makes
#: the item a duplicate (counted as ``duplicate:{kind}``); a status only replaces a lower rank.
#: Returns one flag per item: 1 handled now, 0 a duplicate.
_CLAIM = (
    PUSH_FUNCTION
    + """
local results = {}
local k = 2
local n = tonumber(ARGV[1])
for i = 1, n do
  local a = 1 + (i - 1) * 8
  local kind, owner, ttl = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local fresh = ARGV[a + 4] == '1'
  if not fresh then
    fresh = redis.call('SET', KEYS[k], owner, 'NX', 'EX', ttl) and true or redis.call('GET', KEYS[k]) == owner
  end
  if kind == 'message' then
    if fresh then push(KEYS[k + 1], KEYS[k + 2], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]) end
    k = k + 3
  else
    if fresh and tonumber(ARGV[a + 6]) > tonumber(redis.call('HGET', KEYS[k + 1], 'rank') or '0') then
      redis.call('HSET', KEYS[k + 1], 'status', ARGV[a + 5], 'rank', ARGV[a + 6], 'timestamp', ARGV[a + 7])
      redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 8])
    end
    k = k + 2
  end
  if not fresh then redis.call('HINCRBY', KEYS[1], 'duplicate:' .. kind, 1) end
  results[i] = fresh and 1 or 0
end
for j = 2 + n * 8, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[j], ARGV[j + 1])
end
return results
"""
)


def dedup_key(item: Item) -> str | None:
    """The Redis key that marks ``item`` as seen, or None for items without an id."""
    item_id = item.data.get("id")
    if not isinstance(item_id, str) or not item_id:
        return None
    if item.kind == "message":
        return f"wapipe:seen:msg:{item_id}"
    return f"wapipe:seen:status:{item_id}:{item.data.get('status')}"


def run(body: str, received_at: float, envelope_id: str) -> None:
    rt = runtime.current()
    allowed = rt.settings.phone_number_ids
    work: list[tuple[int, Item]] = []
    counts: Counter[str] = Counter()
    for index, item in enumerate(split(loads(body))):  # type: ignore[arg-type]  # verify checked its shape
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
    if not work and not counts:
        return
    keys, args = _claims(rt, work, received_at, envelope_id)
    for name, count in counts.items():
        args += [name, count]
    handled = rt.script(_CLAIM)(keys=[STATS_KEY, *keys], args=[len(work), *args])
    families = metrics.current()
    for (_, item), fresh in zip(work, handled, strict=True):
        if not fresh:
            families.duplicates.labels(item.kind).inc()
            log.info(
                "duplicate_skipped",
                extra={"actor": ACTOR_NAME, "kind": item.kind, "item_id": item.data.get("id")},
            )
        elif item.kind == "status":
            families.statuses.labels(families.status(item.data.get("status"))).inc()
            log.debug("status_recorded", extra={"actor": ACTOR_NAME, "status": item.data.get("status")})
        else:
            families.inbound.labels(families.inbound_type(item.data.get("type"))).inc()


def _claims(
    rt: runtime.Runtime, work: list[tuple[int, Item]], received_at: float, envelope_id: str
) -> tuple[list[str], list[Any]]:
    """``_CLAIM``'s keys and per-item arguments for ``work`` (items with their index in the envelope)."""
    settings = rt.settings
    attempt_id = runtime.current_message_id()
    replay = bool(runtime.current_options().get("wapipe_replay"))
    keys: list[str] = []
    args: list[Any] = []
    for index, item in work:
        mark = dedup_key(item)
        skip_check = "1" if replay or mark is None else "0"
        keys.append(mark or UNMARKED)
        if item.kind == "message":
            stage = "fetch_media" if item.data.get("type") in MEDIA_TYPES else "reply"
            _, queue_keys, push_args = prepare(
                build_message(stage, {"item": _handoff(item, received_at, envelope_id)})
            )
            keys += queue_keys
            ttl = settings.message_dedup_ttl_seconds
            args += ["message", f"{attempt_id}:{index}", ttl, skip_check, *push_args, WAKEUP_CHANNEL]
        else:
            status = str(item.data.get("status"))
            keys.append(f"wapipe:status:{item.data.get('id')}")
            ttl = settings.status_dedup_ttl_seconds
            args += ["status", f"{attempt_id}:{index}", ttl, skip_check]
            args += [
                status,
                STATUS_RANK.get(status, 0),
                str(item.data.get("timestamp", "")),
                STATUS_TTL_SECONDS,
            ]
    return keys, args


def _handoff(item: Item, received_at: float, envelope_id: str) -> dict[str, Any]:
    return {
        "message": item.data,
        "contact": item.contact,
        "phone_number_id": item.phone_number_id,
        "display_phone_number": item.display_phone_number,
        "received_at": received_at,
        "envelope_id": envelope_id,
    }

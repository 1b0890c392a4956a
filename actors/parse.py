"""parse: split a verified envelope into items, deduplicate them, route each one.

Queue ``wapipe``. Receives the verified ``body``, ``received_at`` and ``envelope_id``. Every
entry × change × message / status / error becomes an item:

- messages are deduplicated by ``id`` (``WAPIPE_MESSAGE_DEDUP_TTL_SECONDS``, 8 days) and handed to
  ``fetch_media`` (image, video, audio, document, sticker) or straight to ``reply``;
- statuses are deduplicated by ``id`` + ``status`` (1 day) and recorded monotonically;
- value-level errors and fields other than ``messages`` are logged and counted
  (``wapipe_webhook_error_items_total{code}``, ``wapipe_unhandled_fields_total{field}``);
- items for a ``phone_number_id`` outside ``WAPIPE_PHONE_NUMBER_IDS`` are dropped and counted
  (``wapipe_dropped_items_total{reason="foreign_number"}``).

From here on the unit of work is one item: a message that cannot be handled (an id that is not
valid Unicode, a ``type`` that is not a string, …) is dead-lettered alone, with its reason, for the
stage it would have gone to, and every other item of the envelope goes on. A status that cannot be
read is dropped and counted (``wapipe_dropped_items_total{reason="invalid_status"}``): there is
nothing to answer or replay.

A dedup mark records which parse attempt claimed it, so a retried parse (same Dramatiq message id)
hands its items on again instead of taking them for duplicates; the reply ledger keeps that from
answering twice. Claiming, handing on, recording statuses and dead-lettering bad items happen in
one Lua script for the whole envelope: one round trip, and all of it or none. Retries: bounded by
``WAPIPE_RETRY_*``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from typing import Any

from actors import metrics, runtime
from daemon.dlq import REASONS_KEY
from daemon.envelope import MEDIA_TYPES, Item, item_problem, loads, split
from daemon.queue import NAMESPACE, PUSH_FUNCTION, WAKEUP_CHANNEL, build_message, prepare

log = logging.getLogger(__name__)

ACTOR_NAME = "parse"
OPTIONS: dict[str, Any] = {}

#: Status order: a status only replaces a lower one; ``failed`` is terminal.
STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3, "played": 4, "failed": 5}
STATUS_TTL_SECONDS = 30 * 86_400
#: Stands in for the dedup mark of an item without an id (never read or written).
UNMARKED = "wapipe:seen:-"

#: KEYS: per item its dedup mark and its target (a message: the queue list and message hash it goes
#: to; a status: its status hash), then per bad item its queue's dead-letter set, their messages
#: and the reasons hash. ARGV: the number of items, then 8 values per item: kind, owner, dedup TTL
#: (s), '1' to skip the dedup check (replay, no id), then for a message ``push``'s id, data, queue
#: and channel, for a status its status, rank, timestamp and TTL (s); then 4 values per bad item:
#: its dead letter's id, message data, reason record and time (ms) — Dramatiq's dead-letter layout,
#: as its ``nack`` writes it. A mark held by another owner makes the item a duplicate; a status only
#: replaces a lower rank. Returns one flag per item: 1 handled now, 0 a duplicate.
_CLAIM = (
    PUSH_FUNCTION
    + """
local results = {}
local k = 1
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
  results[i] = fresh and 1 or 0
end
for b = 2 + n * 8, #ARGV, 4 do
  redis.call('ZADD', KEYS[k], ARGV[b + 3], ARGV[b])
  redis.call('HSET', KEYS[k + 1], ARGV[b], ARGV[b + 1])
  redis.call('HSET', KEYS[k + 2], ARGV[b], ARGV[b + 2])
  k = k + 3
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
    bad: list[tuple[int, Item, str]] = []
    fields: Counter[str] = Counter()
    errors: Counter[object] = Counter()
    foreign = invalid_statuses = 0
    for index, item in enumerate(split(loads(body))):  # type: ignore[arg-type]  # verify checked its shape
        if item.kind == "field":
            fields[item.field] += 1
            log.info(
                "field_unhandled",
                extra={"actor": ACTOR_NAME, "envelope_id": envelope_id, "field": item.field},
            )
        elif allowed is not None and item.phone_number_id not in allowed:
            foreign += 1
            log.info(
                "item_dropped_foreign_number",
                extra={"actor": ACTOR_NAME, "envelope_id": envelope_id, "index": index},
            )
        elif item.kind == "error":
            errors[item.data.get("code")] += 1
            log.warning(
                "webhook_error_item",
                extra={"actor": ACTOR_NAME, "envelope_id": envelope_id, "code": item.data.get("code")},
            )
        elif (problem := item_problem(item)) is not None:
            if item.kind == "status":  # nothing to answer or replay: counted, like a foreign item
                invalid_statuses += 1
                log.warning(
                    "status_dropped_invalid",
                    extra={
                        "actor": ACTOR_NAME,
                        "envelope_id": envelope_id,
                        "index": index,
                        "reason": problem,
                    },
                )
            else:
                bad.append((index, item, problem))
        else:
            work.append((index, item))
    keys, args, bad = _claims(rt, work, bad, received_at, envelope_id)
    handled = rt.script(_CLAIM)(keys=keys, args=[len(work), *args]) if keys else []
    families = metrics.current()
    for field, count in fields.items():
        families.unhandled_fields.labels(families.field_label(field)).inc(count)
    for code, count in errors.items():
        families.webhook_error_items.labels(families.error_code_label(code)).inc(count)
    if foreign:
        families.dropped_items.labels("foreign_number").inc(foreign)
    if invalid_statuses:
        families.dropped_items.labels("invalid_status").inc(invalid_statuses)
    for index, _, problem in bad:
        log.warning(
            "item_dead_lettered",
            extra={"actor": ACTOR_NAME, "envelope_id": envelope_id, "index": index, "reason": problem},
        )
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
    rt: runtime.Runtime,
    work: list[tuple[int, Item]],
    bad: list[tuple[int, Item, str]],
    received_at: float,
    envelope_id: str,
) -> tuple[list[str], list[Any], list[tuple[int, Item, str]]]:
    """``_CLAIM``'s keys and arguments for ``work`` (items with their index in the envelope), then
    for the dead letters of ``bad`` items. An item whose arguments cannot be made joins ``bad``
    (and leaves ``work``); the bad items are returned."""
    settings = rt.settings
    attempt_id = runtime.current_message_id()
    replay = bool(runtime.current_options().get("wapipe_replay"))
    claimed: list[tuple[int, Item, tuple[list[str], list[Any]]]] = []
    for index, item in work:
        try:
            claimed.append(
                (
                    index,
                    item,
                    _claim(item, f"{attempt_id}:{index}", replay, received_at, envelope_id, settings),
                )
            )
        except (TypeError, ValueError) as error:  # a value of a shape no check foresaw
            if item.kind == "message":
                bad.append((index, item, f"{type(error).__name__}: {error}"[:300]))
            else:
                metrics.current().dropped_items.labels("invalid_status").inc()
                log.warning("status_dropped_invalid", extra={"actor": ACTOR_NAME, "index": index})
    work[:] = [(index, item) for index, item, _ in claimed]
    keys = [key for _, _, (item_keys, _) in claimed for key in item_keys]
    args = [arg for _, _, (_, item_args) in claimed for arg in item_args]
    now_ms = int(time.time() * 1000)
    for index, item, problem in bad:
        stage = _stage(item)
        message = build_message(stage, {"item": _handoff(item, received_at, envelope_id)})
        # The same id on a rerun of this parse attempt: the dead letter is written once.
        letter_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"wapipe:{attempt_id}:{index}"))
        record = {
            "message_id": message.message_id,
            "stage": stage,
            "queue": message.queue_name,
            "reason": {
                "type": "ItemRejected",
                "message": problem,
                "envelope_id": envelope_id,
                "index": index,
            },
            "attempts": 0,
            "failed_at": now_ms / 1000,
        }
        stored = message.copy(options={"redis_message_id": letter_id})
        xq = f"{NAMESPACE}:{message.queue_name}.XQ"
        keys += [xq, f"{xq}.msgs", REASONS_KEY]
        args += [letter_id, stored.encode(), json.dumps(record), now_ms]
    return keys, args, bad


def _stage(item: Item) -> str:
    kind = item.data.get("type")
    return "fetch_media" if isinstance(kind, str) and kind in MEDIA_TYPES else "reply"


def _claim(
    item: Item, owner: str, replay: bool, received_at: float, envelope_id: str, settings: Any
) -> tuple[list[str], list[Any]]:
    """One item's keys and arguments for ``_CLAIM``; every string is proven encodable here, so that
    a bad one fails this item alone, not the script of the envelope."""
    mark = dedup_key(item)
    skip_check = "1" if replay or mark is None else "0"
    keys = [mark or UNMARKED]
    if item.kind == "message":
        _, queue_keys, push_args = prepare(
            build_message(_stage(item), {"item": _handoff(item, received_at, envelope_id)})
        )
        keys += queue_keys
        args = ["message", owner, settings.message_dedup_ttl_seconds, skip_check, *push_args, WAKEUP_CHANNEL]
    else:
        status = str(item.data.get("status"))
        keys.append(f"wapipe:status:{item.data.get('id')}")
        args = ["status", owner, settings.status_dedup_ttl_seconds, skip_check]
        args += [status, STATUS_RANK.get(status, 0), str(item.data.get("timestamp", "")), STATUS_TTL_SECONDS]
    for value in (*keys, *args):
        if isinstance(value, str):
            value.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
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

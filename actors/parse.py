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

import logging
import time
import uuid
from collections import Counter

from actors.context import Context
from daemon.config import DAY_SECONDS
from daemon.envelope import MEDIA_TYPES, Item, item_problem, loads, split
from daemon.pipeline import (
    FETCH_MEDIA,
    PARSE,
    REPLY,
    Envelope,
    MessageItem,
    Stage,
    message,
    timestamp_of,
    window_time,
)
from daemon.store import dedup, journeys
from daemon.store.order import ORDER_TTL_SECONDS

log = logging.getLogger(__name__)

ACTOR_NAME = PARSE.name


def run(context: Context, envelope: Envelope) -> None:
    allowed = context.settings.phone_number_ids
    envelope_id = envelope.envelope_id
    work: list[tuple[int, Item]] = []
    bad: list[tuple[int, Item, str]] = []
    fields: Counter[str] = Counter()
    errors: Counter[object] = Counter()
    foreign = invalid_statuses = 0
    for index, item in enumerate(split(loads(envelope.body))):  # type: ignore[arg-type]  # verify checked its shape
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
    claims, work, bad = _claims(context, work, bad, envelope)
    handled = claims.write(context.store.client)
    families = context.metrics
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
    context: Context,
    work: list[tuple[int, Item]],
    bad: list[tuple[int, Item, str]],
    envelope: Envelope,
) -> tuple[dedup.Claims, list[tuple[int, Item]], list[tuple[int, Item, str]]]:
    """The envelope's writes for ``work`` (items with their index in the envelope), then the dead
    letters of ``bad`` items. An item whose writes cannot be made joins ``bad`` (a message) or is
    dropped and counted (a status). Returns the writes, the claimed items and the bad ones."""
    settings = context.settings
    attempt_id = context.message_id
    claims = dedup.Claims()
    claimed: list[tuple[int, Item]] = []
    now_ms = int(time.time() * 1000)
    # A user's messages take their places in the order the webhooks were received (whichever parse
    # runs first) and, within an envelope, in the order Meta's timestamps give.
    work = sorted(work, key=lambda entry: (_timestamp(entry[1]), entry[0]))
    received_us = int(envelope.received_at * 1_000_000)
    for position, (index, item) in enumerate(work):
        owner = f"{attempt_id}:{index}"
        mark = dedup.mark(item)
        try:
            if item.kind == "message":
                handoff = MessageItem.from_item(item, envelope.received_at, envelope.envelope_id)
                claims.add_message(
                    mark,
                    owner,
                    settings.message_dedup_ttl_seconds,
                    context.replay,
                    message(_stage(item), handoff),
                    (handoff.id, _received(context, handoff), context.store.journeys.ttl_seconds),
                    (handoff.phone_number_id, handoff.id, handoff.at),
                )
                user = handoff.user
                if user is not None:
                    claims.date_last(
                        handoff.phone_number_id,
                        user,
                        handoff.id,
                        int(window_time(item.data.get("timestamp"), envelope.received_at)),
                        settings.conversation_ttl_seconds,
                        _indexed_for(context),
                    )
                if context.ordered and user is not None:
                    place = received_us + position
                    claims.order_last(handoff.phone_number_id, user, handoff.id, place, ORDER_TTL_SECONDS)
            else:
                claims.add_status(
                    mark,
                    owner,
                    settings.status_dedup_ttl_seconds,
                    context.replay,
                    str(item.data.get("id")),
                    str(item.data.get("status")),
                    str(item.data.get("timestamp", "")),
                    settings.status_retention_days * DAY_SECONDS,
                    _error_code(item),
                )
        except (TypeError, ValueError) as error:  # a value of a shape no check foresaw
            if item.kind == "message":
                bad.append((index, item, f"{type(error).__name__}: {error}"[:300]))
            else:
                context.metrics.dropped_items.labels("invalid_status").inc()
                log.warning("status_dropped_invalid", extra={"actor": ACTOR_NAME, "index": index})
            continue
        claimed.append((index, item))
    for index, item, problem in bad:
        stage = _stage(item)
        letter = message(stage, _raw_handoff(item, envelope))
        record = {
            "message_id": letter.message_id,
            "stage": stage.name,
            "queue": letter.queue_name,
            "reason": {
                "type": "ItemRejected",
                "message": problem,
                "envelope_id": envelope.envelope_id,
                "index": index,
            },
            "attempts": 0,
            "failed_at": now_ms / 1000,
        }
        # The same id on a rerun of this parse attempt: the dead letter is written once.
        letter_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"wapipe:{attempt_id}:{index}"))
        claims.add_dead_letter(letter, letter_id, record, now_ms)
    return claims, claimed, bad


def _indexed_for(context: Context) -> int:
    """How long a user's index keeps a message for `wapipe forget`: as long as anything kept under
    its id may hold something of the user — its turn (a conversation bot's, the record TTL), else
    the ids of the messages sent in answer and their links, and their delivery statuses."""
    if context.conversational:
        return context.store.ledger.ttl_seconds
    settings = context.settings
    return max(settings.trace_retention_hours * 3600, settings.status_retention_days * DAY_SECONDS)


def _received(context: Context, handoff: MessageItem) -> str:
    """The first event of a fresh message's journey: parse took it from the webhook."""
    fields = {
        "phone_number_id": handoff.phone_number_id,
        "envelope_id": handoff.envelope_id,
        "type": handoff.type,
        "received_at": round(handoff.received_at, 3),
        "record_at": handoff.at,
        "next": _stage_of(handoff.type).name,
    }
    if context.replay:
        fields["replay"] = True
    return journeys.event(ACTOR_NAME, "done", context.retries + 1, **fields)


def _error_code(item: Item) -> int | None:
    """The error code of a failed status (its first error), if it has one."""
    errors = item.data.get("errors")
    first = errors[0] if isinstance(errors, list) and errors else None
    code = first.get("code") if isinstance(first, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _timestamp(item: Item) -> int:
    return timestamp_of(item.data.get("timestamp"))


def _stage(item: Item) -> Stage[MessageItem]:
    return _stage_of(item.data.get("type"))


def _stage_of(kind: object) -> Stage[MessageItem]:
    return FETCH_MEDIA if isinstance(kind, str) and kind in MEDIA_TYPES else REPLY


def _raw_handoff(item: Item, envelope: Envelope) -> MessageItem:
    """The hand-off of a message that cannot be handled, as it came (for its dead letter)."""
    return MessageItem(
        message=item.data,
        phone_number_id=item.phone_number_id,  # type: ignore[arg-type]  # may be anything: it is dead
        contact=item.contact,
        display_phone_number=item.display_phone_number,
        received_at=envelope.received_at,
        envelope_id=envelope.envelope_id,
    )

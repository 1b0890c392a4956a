"""Dead letters: list, show, replay and purge (``wapipe dlq``), and retention.

A dead letter is a message Dramatiq moved to ``dramatiq:<queue>.XQ`` (its id → the message, scored
by when) plus the reason wapipe recorded beside it in ``wapipe:dlq:reasons`` (the worker's
dead-letter recorder writes it, and ``parse`` for an item it cannot hand on). Its id is the Redis
message id that ``wapipe dlq list`` prints; ``show`` and ``replay`` also take a unique prefix.

A replay enqueues the same actor with the same arguments and ``wapipe_replay`` set, which lets that
stage pass its dedup marks (parse) — once: the dead letter is removed as it is replayed. A send
whose outcome is unknown (it may have been delivered) is not replayed unless the operator says
``--resend-unknown``, which sets :data:`RESEND_UNKNOWN` and lets ``reply`` take that send over.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq import Message

from daemon.pipeline import QUEUES, ArgumentInvalid, Envelope, MessageItem, stage_named
from daemon.store import keys, scripts
from daemon.store.queues import prepare

log = logging.getLogger(__name__)

REASONS_KEY = keys.DEAD_LETTER_REASONS
#: Message option of a replayed message: its stage passes its dedup marks (parse).
REPLAY = "wapipe_replay"
#: Message option of a replay the operator allowed to resend what may have been delivered.
RESEND_UNKNOWN = "wapipe_resend_unknown"
#: Dead letters of these reasons may have been delivered: replayed only with ``resend_unknown``.
UNKNOWN_OUTCOMES = frozenset({"OutcomeUnknown"})


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    queue: str
    failed_at: float
    message: dict[str, Any]
    record: dict[str, Any] | None

    @property
    def stage(self) -> str:
        return str(self.message.get("actor_name"))

    @property
    def reason(self) -> dict[str, Any]:
        if self.record is not None:
            return dict(self.record.get("reason") or {})
        return {"type": "Unknown", "message": "no reason was recorded"}

    def what(self) -> dict[str, Any]:
        """Which envelope or item this is, by its ids (no payload).

        Read with the stage's own argument type; a message that does not decode (the very reason
        some are dead letters) is read field by field.
        """
        kwargs = self.message.get("kwargs") or {}
        try:
            argument = stage_named(self.stage).decode(kwargs)
        except (KeyError, ArgumentInvalid):
            argument = None
        if isinstance(argument, MessageItem):
            return {
                "kind": "item",
                "message_id": argument.id,
                "type": argument.type,
                "phone_number_id": argument.phone_number_id,
                "envelope_id": argument.envelope_id,
            }
        item = kwargs.get("item") if isinstance(kwargs, dict) else None
        if argument is None and isinstance(item, dict):
            found = item.get("message")
            inbound: dict[str, Any] = found if isinstance(found, dict) else {}
            return {
                "kind": "item",
                "message_id": inbound.get("id"),
                "type": inbound.get("type"),
                "phone_number_id": item.get("phone_number_id"),
                "envelope_id": item.get("envelope_id"),
            }
        envelope_id = argument.envelope_id if isinstance(argument, Envelope) else kwargs.get("envelope_id")
        return {"kind": "envelope", "envelope_id": envelope_id or self.message.get("message_id")}

    def summary(self) -> dict[str, Any]:
        reason = self.reason
        return {
            "id": self.id,
            "failed_at": self.failed_at,
            "stage": self.stage,
            "what": self.what(),
            "reason": {  # "detail" (an unexpected exception's own message) only in `dlq show`
                key: reason.get(key) for key in ("type", "code", "message") if reason.get(key) is not None
            },
            "attempts": (self.record or {}).get("attempts"),
        }

    @property
    def may_have_been_delivered(self) -> bool:
        return self.reason.get("type") in UNKNOWN_OUTCOMES


class NotFound(LookupError):
    """No dead letter has that id (or the prefix is not unique)."""


class MayHaveBeenDelivered(Exception):
    """A replay that could message a user twice, asked for without ``resend_unknown``."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def record_reason(client: redis.Redis, redis_message_id: str, record: dict[str, Any]) -> None:
    """Store why the message ``redis_message_id`` is being dead-lettered (stage, reason, attempts,
    time), beside the dead letter Dramatiq writes under the same id."""
    client.hset(REASONS_KEY, redis_message_id, json.dumps(record))


def all_letters(client: redis.Redis, queues: tuple[str, ...] = QUEUES) -> list[DeadLetter]:
    """Every dead letter, oldest first."""
    letters = []
    for queue in queues:
        entries: list[tuple[bytes, float]] = client.zrange(keys.dead_letters(queue), 0, -1, withscores=True)  # type: ignore[assignment]
        for raw_id, score in entries:
            letter_id = _text(raw_id)
            data = client.hget(keys.dead_letter_messages(queue), letter_id)
            if data is None:
                continue
            reason = client.hget(REASONS_KEY, letter_id)
            letters.append(
                DeadLetter(
                    id=letter_id,
                    queue=queue,
                    failed_at=float(score) / 1000,
                    message=json.loads(data),
                    record=json.loads(reason) if reason else None,
                )
            )
    return sorted(letters, key=lambda letter: letter.failed_at)


def find(client: redis.Redis, letter_id: str) -> DeadLetter:
    matches = [letter for letter in all_letters(client) if letter.id.startswith(letter_id)]
    exact = [letter for letter in matches if letter.id == letter_id]
    if exact:
        return exact[0]
    if len(matches) != 1:
        raise NotFound(f"no dead letter {letter_id!r}" if not matches else f"{letter_id!r} is ambiguous")
    return matches[0]


def remove(client: redis.Redis, letter: DeadLetter) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.dead_letters(letter.queue), letter.id)
        pipe.hdel(keys.dead_letter_messages(letter.queue), letter.id)
        pipe.hdel(REASONS_KEY, letter.id)
        pipe.execute()


def replay_message(letter: DeadLetter, *, resend_unknown: bool = False) -> Message[Any]:
    """A fresh message for the same actor and arguments, marked as a replay."""
    original = letter.message
    options: dict[str, Any] = {REPLAY: True}
    if resend_unknown:
        options[RESEND_UNKNOWN] = True
    return Message(
        queue_name=str(original["queue_name"]).removesuffix(".DQ"),
        actor_name=str(original["actor_name"]),
        args=tuple(original.get("args") or ()),
        kwargs=dict(original.get("kwargs") or {}),
        options=options,
    )


def replay(client: redis.Redis, letter: DeadLetter, *, resend_unknown: bool = False) -> Message[Any]:
    """Enqueue the replay (waking idle workers, as every enqueue does) and remove the dead letter,
    in one script: it runs once, even when two operators replay the same letter.

    Raises:
        MayHaveBeenDelivered: the letter's send may have reached the user, and ``resend_unknown``
            (the operator's explicit acceptance of a possible second message) is not given.
    """
    if letter.may_have_been_delivered and not resend_unknown:
        raise MayHaveBeenDelivered(
            f"{letter.id}: its send may have been delivered ({letter.reason.get('type')}); "
            "pass --resend-unknown to send it anyway"
        )
    stored, queue_keys, push_args = prepare(replay_message(letter, resend_unknown=resend_unknown))
    replayed = scripts.register(client, "replay")(
        keys=[
            *queue_keys,
            keys.dead_letters(letter.queue),
            keys.dead_letter_messages(letter.queue),
            REASONS_KEY,
        ],
        args=[*push_args, keys.WAKEUP_CHANNEL, letter.id],
    )
    if not replayed:
        raise NotFound(f"dead letter {letter.id!r} was replayed or removed meanwhile")
    log.info(
        "dead_letter_replayed",
        extra={"dead_letter": letter.id, "stage": letter.stage, "resend_unknown": resend_unknown},
    )
    return stored


def purge(client: redis.Redis, *, older_than_seconds: float | None, now: float | None = None) -> int:
    """Delete dead letters older than ``older_than_seconds`` (all when None); log and return how many."""
    now = time.time() if now is None else now
    purged = 0
    for letter in all_letters(client):
        if older_than_seconds is None or letter.failed_at < now - older_than_seconds:
            remove(client, letter)
            purged += 1
    live = {letter.id for letter in all_letters(client)}
    orphans = [key for key in client.hkeys(REASONS_KEY) if _text(key) not in live]
    if orphans:
        client.hdel(REASONS_KEY, *orphans)
    if purged or orphans:
        log.info(
            "dead_letters_purged",
            extra={"count": purged, "orphan_reasons": len(orphans), "older_than_seconds": older_than_seconds},
        )
    return purged

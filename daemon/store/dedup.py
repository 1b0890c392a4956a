"""Deduplication of what Meta delivers more than once, and ``parse``'s one write per envelope.

Meta retries a webhook it did not see acknowledged, and may deliver the same message in two
webhooks. A message is claimed in its record (:mod:`daemon.store.records`, kept for
``WAPIPE_MESSAGE_DEDUP_TTL_SECONDS`` plus a day), a status by a mark on its ``id`` and ``status``
(``wapipe:seen:status:<id>:<status>``, for ``WAPIPE_STATUS_DEDUP_TTL_SECONDS``). Either holds the
parse attempt that claimed it, so a retried parse (same attempt) hands its items on again instead
of taking them for duplicates; the reply ledger keeps that from answering twice.

:class:`Claims` collects an envelope's writes — claim each mark, enqueue each fresh message, record
each fresh status, dead-letter each item that cannot be handled — and :meth:`Claims.write` makes them
in one script (``claim.lua``): one round trip, all of it or none.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from dramatiq import Message

from daemon.envelope import Item
from daemon.store import keys, records, scripts, statuses
from daemon.store.queues import prepare


def _encodable(values: list[Any]) -> None:
    for value in values:
        if isinstance(value, str):
            value.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate


@dataclass
class Claims:
    """The writes of one envelope, made by :meth:`write`.

    Each ``add_*`` proves its strings encodable before adding anything, so that a bad value
    fails that item alone (``ValueError``), not the script of the whole envelope.
    """

    _keys: list[str] = field(default_factory=list)
    _args: list[Any] = field(default_factory=list)
    _order_keys: list[str] = field(default_factory=list)
    _order_args: list[Any] = field(default_factory=list)
    _dated_keys: list[str] = field(default_factory=list)
    _dated_args: list[Any] = field(default_factory=list)
    _letter_keys: list[str] = field(default_factory=list)
    _letter_args: list[Any] = field(default_factory=list)
    _items: int = 0

    def add_message(
        self,
        mark: str | None,
        owner: str,
        ttl_seconds: int,
        replay: bool,
        message: Message[Any],
        journey: tuple[str, str, int] | None,
        record: tuple[str, str, int] | None,
    ) -> None:
        """Claim the message for ``owner`` and, when fresh, enqueue ``message`` (made by
        :func:`daemon.pipeline.message`) and start ``journey`` (its subject, first event and TTL in
        seconds: :mod:`daemon.store.journeys`). An inbound message is claimed in its ``record`` (its
        number, id and time: :mod:`daemon.store.records`), kept ``ttl_seconds`` (the dedup window)
        plus a day, ``mark`` being where an earlier release marked it seen; without a record (a
        business send's key), by ``mark`` itself, for ``ttl_seconds``. ``replay`` or no mark:
        always fresh."""
        _, queue_keys, push_args = prepare(message)
        subject, first, journey_ttl = journey if journey is not None else ("", "", 0)
        item_keys = [mark or keys.UNMARKED, *queue_keys, keys.journey(subject) if journey else keys.UNMARKED]
        skip = "1" if replay or mark is None else "0"
        at, field, ttl = 0, b"", ttl_seconds
        if record is not None:
            at, field, ttl = record[2], records.digest(record[0], record[1]), ttl + records.EXTRA_SECONDS
        item_args = [
            "message", owner, ttl, skip, *push_args, keys.WAKEUP_CHANNEL, first, journey_ttl, at, field,
        ]  # fmt: skip
        _encodable([*item_keys, *item_args])
        self._add(item_keys, item_args)

    def add_status(
        self,
        mark: str | None,
        owner: str,
        ttl_seconds: int,
        replay: bool,
        status_id: str,
        status: str,
        timestamp: str,
        retention_seconds: int,
        error_code: int | None = None,
    ) -> None:
        """Claim ``mark`` and, when fresh, record ``status`` (with a failure's ``error_code``) unless
        a higher one is recorded; the record is kept ``retention_seconds`` after its last change."""
        item_keys = [mark or keys.UNMARKED, keys.status(status_id)]
        skip = "1" if replay or mark is None else "0"
        item_args = [
            "status", owner, ttl_seconds, skip,
            status, statuses.rank(status), timestamp, retention_seconds,
            "" if error_code is None else error_code, "", "", "",
        ]  # fmt: skip
        _encodable([*item_keys, *item_args])
        self._add(item_keys, item_args)

    def order_last(
        self, phone_number_id: str, user: str, message_id: str, place_us: int, ttl_seconds: int
    ) -> None:
        """Give the message added last, if it is fresh, its place in its user's order (see
        :mod:`daemon.store.order`)."""
        _encodable([user, message_id])
        self._order_keys.append(keys.order(phone_number_id, user))
        self._order_args += [self._items, message_id, place_us, ttl_seconds]

    def date_last(
        self,
        phone_number_id: str,
        user: str,
        message_id: str,
        timestamp: int,
        ttl_seconds: int,
        index_seconds: int,
    ) -> None:
        """For the message added last, if it is fresh: move its conversation's ``last_inbound`` (the
        24-hour window) to its ``timestamp`` if later (0: unknown), and add it to its user's index
        of messages (for erasure, kept ``index_seconds``) and to the active conversations. See
        :mod:`daemon.store.conversations`."""
        _encodable([user, message_id])
        self._dated_keys += [
            keys.conversation(phone_number_id, user),
            keys.user_messages(phone_number_id, user),
            keys.ACTIVE_CONVERSATIONS,
        ]
        self._dated_args += [
            self._items, timestamp, ttl_seconds, message_id, f"{phone_number_id}:{user}", index_seconds,
        ]  # fmt: skip

    def add_dead_letter(
        self, message: Message[Any], letter_id: str, record: dict[str, Any], now_ms: int
    ) -> None:
        """Dead-letter ``message`` as Dramatiq's ``nack`` would, with wapipe's ``record`` of why.
        The same ``letter_id`` on a rerun writes it once."""
        stored = message.copy(options={"redis_message_id": letter_id})
        self._letter_keys += [
            keys.dead_letters(message.queue_name),
            keys.dead_letter_messages(message.queue_name),
            keys.DEAD_LETTER_REASONS,
        ]
        self._letter_args += [letter_id, stored.encode(), json.dumps(record), now_ms]

    def _add(self, item_keys: list[str], item_args: list[Any]) -> None:
        self._keys += item_keys
        self._args += item_args
        self._items += 1

    def arguments(self) -> tuple[list[str], list[Any]]:
        """``claim.lua``'s keys and arguments for these writes."""
        return (
            [*self._keys, *self._order_keys, *self._dated_keys, *self._letter_keys],
            [
                self._items,
                len(self._order_args) // 4,
                len(self._dated_args) // 6,
                int(time.time()),
                *self._args,
                *self._order_args,
                *self._dated_args,
                *self._letter_args,
            ],
        )

    def write(self, client: redis.Redis) -> list[bool]:
        """Make every write; one flag per claimed item, in order: True fresh, False a duplicate."""
        if not self._keys and not self._letter_keys:
            return []
        names, args = self.arguments()
        return [bool(flag) for flag in scripts.register(client, "claim")(keys=names, args=args)]

    async def write_async(self, client: aioredis.Redis) -> list[bool]:
        """:meth:`write` through ``redis.asyncio`` (the web edge)."""
        if not self._keys and not self._letter_keys:
            return []
        names, args = self.arguments()
        return [bool(flag) for flag in await scripts.register_async(client, "claim")(keys=names, args=args)]


def mark(item: Item) -> str | None:
    """The dedup mark of an envelope item, or None for an item without an id."""
    item_id = item.data.get("id")
    if not isinstance(item_id, str) or not item_id:
        return None
    if item.kind == "message":
        return keys.seen_message(item_id)
    return keys.seen_status(item_id, item.data.get("status"))

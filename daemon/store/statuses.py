"""Delivery statuses of outbound messages (``sent`` → ``delivered`` → ``read`` …), kept monotonic.

``parse`` records each status it receives in ``wapipe:status:<id>`` (a hash of ``status``,
``rank``, ``timestamp``, and a failure's ``error`` code) in its claim script (:mod:`daemon.store.dedup`): a status only replaces a
lower one, whatever order Meta delivers them in, and ``failed`` is terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from daemon.store import keys

#: Status order: a status only replaces a lower one; ``failed`` is terminal.
STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3, "played": 4, "failed": 5}


def rank(status: str) -> int:
    """The rank of ``status`` (0 for a status wapipe does not know: it never replaces another)."""
    return STATUS_RANK.get(status, 0)


@dataclass(frozen=True, slots=True)
class Status:
    status: str
    #: Meta's timestamp of it (Unix seconds, as Meta wrote it).
    timestamp: str
    #: The error code of a ``failed`` status.
    error_code: int | None = None


FIELDS = ("status", "timestamp", "error")


def from_fields(stored: list[bytes | None]) -> Status | None:
    """A status read with ``HMGET key *FIELDS``; None when there is none."""
    if stored[0] is None:
        return None
    error = (stored[2] or b"").decode()
    return Status(stored[0].decode(), (stored[1] or b"").decode(), int(error) if error.isdigit() else None)


def latest(client: redis.Redis, status_id: str) -> Status | None:
    """The latest status recorded for outbound message ``status_id``, if any."""
    return from_fields(client.hmget(keys.status(status_id), *FIELDS))  # type: ignore[arg-type]


def latest_of(client: redis.Redis, status_ids: list[str]) -> list[Status | None]:
    """:func:`latest` of each of ``status_ids``, in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for status_id in status_ids:
            pipe.hmget(keys.status(status_id), *FIELDS)
        return [from_fields(stored) for stored in pipe.execute()]

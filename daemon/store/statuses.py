"""Delivery statuses of outbound messages (``sent`` → ``delivered`` → ``read`` …), kept monotonic.

``parse`` records each status it receives in ``wapipe:status:<id>`` (a hash of ``status``,
``rank``, ``timestamp``) in its claim script (:mod:`daemon.store.dedup`): a status only replaces a
lower one, whatever order Meta delivers them in, and ``failed`` is terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from daemon.store import keys

#: Status order: a status only replaces a lower one; ``failed`` is terminal.
STATUS_RANK = {"sent": 1, "delivered": 2, "read": 3, "played": 4, "failed": 5}
STATUS_TTL_SECONDS = 30 * 86_400


def rank(status: str) -> int:
    """The rank of ``status`` (0 for a status wapipe does not know: it never replaces another)."""
    return STATUS_RANK.get(status, 0)


@dataclass(frozen=True, slots=True)
class Status:
    status: str
    timestamp: str


def latest(client: redis.Redis, status_id: str) -> Status | None:
    """The latest status recorded for outbound message ``status_id``, if any."""
    stored: list[bytes | None] = client.hmget(keys.status(status_id), "status", "timestamp")  # type: ignore[assignment]
    if stored[0] is None:
        return None
    return Status(stored[0].decode(), (stored[1] or b"").decode())

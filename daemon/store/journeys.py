"""Each message's journey: what happened to it, stage by stage, for ``wapipe trace``.

``parse`` starts it when it claims a fresh message (in its claim script); then each run of a stage
that carries the message (``fetch_media``, ``reply``, ``send``) adds one event when it ends — a
``done`` of ``reply`` or ``send`` in the same command as its last ledger write: ``done``, ``retry`` (it will run again: an error, a rate-limit wait, an earlier message
of the user to wait for) or ``failed`` (dead-lettered), with the attempt number and what it found
(bytes stored, replies sent, the error's type and code). Events hold ids, times and figures, never
what the user wrote. A journey lives ``WAPIPE_TRACE_RETENTION_HOURS`` after its last event and
keeps its last :data:`MAX_EVENTS` events.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from daemon.store import keys, scripts

#: The most events one journey keeps (a message that waited long for an earlier one retries often).
MAX_EVENTS = 100


def event(stage: str, outcome: str, attempt: int, **fields: Any) -> str:
    """One event, as stored: ``at`` (Unix seconds), stage, outcome, attempt, and ``fields``."""
    return json.dumps(
        {"at": round(time.time(), 3), "stage": stage, "outcome": outcome, "attempt": attempt, **fields},
        separators=(",", ":"),
    )


def appended(subject: str, entry: str, ttl_seconds: int) -> tuple[list[str], list[Any]]:
    """The keys and arguments that make ``record.lua`` append ``entry`` to ``subject``'s journey
    (after the keys it sets)."""
    return [keys.journey(subject)], [entry, MAX_EVENTS, ttl_seconds]


class Journeys:
    """Journeys on one Redis client; ``ttl_seconds``: ``WAPIPE_TRACE_RETENTION_HOURS``."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._client = client
        self._record = scripts.register(client, "record")
        self.ttl_seconds = ttl_seconds

    def add(self, subject: str, entry: str) -> None:
        """Append ``entry`` (made by :func:`event`) to ``subject``'s journey, in one command."""
        journey_keys, journey_args = appended(subject, entry, self.ttl_seconds)
        # record.lua: no key to set (0, the TTL), no message record (time, digest '', …), no order
        # to leave (''), the event.
        self._record(
            keys=journey_keys, args=[0, self.ttl_seconds, 0, "", -1, "", "", 0, 0, "", *journey_args]
        )

    def read(self, subject: str) -> list[dict[str, Any]]:
        """``subject``'s events, oldest first (empty when none were kept)."""
        return [json.loads(raw) for raw in self._client.lrange(keys.journey(subject), 0, -1)]

"""The reply ledger: each outbound message is sent at most once.

Before the ``n``-th message answering inbound ``id`` (or business send ``send:<key>``) is sent, it
is claimed in the message's record (:mod:`daemon.store.records`: state ``s``); after Meta accepted
it, the record says ``S`` (sent), or ``R`` when it was refused for good. A claim found ``s`` means
an earlier attempt may have sent it: it is not sent again unless an operator's replay takes it
over. When the message is done, its record holds how many messages answered it (``0``: handled
without reply), written with the last mark. Records live for the message dedup window plus a day.

Beside the record, each message sent keeps its id under ``wapipe:reply:<phone_number_id>:<id>:<n>``
(``sent:<outbound id>``; ``refused:<why>`` for one refused) and ``wapipe:outbound:<outbound id>``
records what it answered (:func:`answered`), for delivery tracking and ``wapipe trace``, for
``WAPIPE_TRACE_RETENTION_HOURS`` (like the journeys). Releases
before the records kept the state in those ``wapipe:reply:…`` entries (and ``wapipe:handled:…``):
where a record has no state, they decide.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daemon import retrying
from daemon.store import journeys, keys, records, scripts

#: A stage run's event for a message's journey: (the ledger subject, the event).
Journey = tuple[str, str]

#: How long a write recording a send that happened waits for Redis: rather than leave it "in doubt".
RECORD_WAIT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Subject:
    """What ledger entries are kept under: the number, the inbound message id (or ``send:<key>``)
    and the time its record is filed by (Meta's ``timestamp``, or the send's request time)."""

    phone_number_id: str
    id: str
    at: int
    #: The user whose order the message leaves when it is done (:mod:`daemon.store.order`), if it
    #: holds a place in one.
    ordered_for: str | None = None

    @property
    def digest(self) -> bytes:
        return records.digest(self.phone_number_id, self.id)

    def entry(self, index: int) -> str:
        return keys.ledger(self.phone_number_id, self.id, index)


class Claim(enum.Enum):
    """What :meth:`ReplyLedger.claim` found."""

    #: Ours now: send.
    CLAIMED = "claimed"
    #: Sent already by an earlier attempt, or refused for good (outside the window): do not send.
    SENT = "sent"
    #: An earlier attempt started this send and never finished: it may have been delivered.
    IN_DOUBT = "doubt"


class ReplyLedger:
    """The ledger on one Redis client.

    Args:
        client: the calling thread's redis-py client.
        dedup_ttl_seconds: ``WAPIPE_MESSAGE_DEDUP_TTL_SECONDS``; records live a day longer.
        kept_seconds: how long a sent message's id and link are kept (``WAPIPE_TRACE_RETENTION_HOURS``);
            by default as long as the records.
    """

    def __init__(self, client: redis.Redis, dedup_ttl_seconds: int, kept_seconds: int | None = None) -> None:
        self._client = client
        self._record_script = scripts.register(client, "record")
        self._ledger_script = scripts.register(client, "ledger")
        self.ttl_seconds = dedup_ttl_seconds + records.EXTRA_SECONDS
        self.kept_seconds = self.ttl_seconds if kept_seconds is None else kept_seconds

    def _claims(self, operation: str, subject: Subject, index: int) -> str:
        found = self._ledger_script(
            keys=[subject.entry(index)],
            args=[operation, subject.at, subject.digest, index, int(time.time()), self.ttl_seconds],
        )
        return found.decode() if isinstance(found, bytes) else str(found)

    def claim(self, subject: Subject, index: int) -> Claim:
        """Claim the ``index``-th send answering ``subject``."""
        return Claim(self._claims("claim", subject, index))

    def take_over(self, subject: Subject, index: int) -> None:
        """Claim a send in doubt (an operator accepted a possible second message)."""
        self._claims("take_over", subject, index)

    def release(self, subject: Subject, index: int) -> None:
        """Give a claim back: the send surely did not happen."""
        self._claims("release", subject, index)

    def sent(
        self,
        subject: Subject,
        index: int,
        outbound_id: str,
        *,
        user: str | None = None,
        replies: int | None = None,
        journey: Journey | None = None,
    ) -> None:
        """Record that the ``index``-th send happened, and what the message sent answered (its
        subject, index and ``user``: :func:`answered`); with ``replies``, also that the message is
        done (the last send), in the same command, with the run's ``journey`` event."""
        link = {
            "phone_number_id": subject.phone_number_id,
            "answers": subject.id,
            "index": index,
            "user": user,
        }
        values = [
            (subject.entry(index), f"sent:{outbound_id}"),
            (keys.outbound(outbound_id), json.dumps(link, separators=(",", ":"))),
        ]
        self._record(values, subject, index, "S", replies, journey)

    def refused(
        self,
        subject: Subject,
        index: int,
        reason: str,
        *,
        replies: int | None = None,
        journey: Journey | None = None,
    ) -> None:
        """Record that the ``index``-th send was refused for good (``reason``, e.g. the window
        closed): a retry does not send it either. With ``replies``, the message is done."""
        self._record([(subject.entry(index), f"refused:{reason}")], subject, index, "R", replies, journey)

    def handled(self, subject: Subject, replies: int, *, journey: Journey | None = None) -> None:
        """Record that the message is done, answered by ``replies`` messages (with the run's
        ``journey`` event, in the same command)."""
        self._record([], subject, -1, "", replies, journey)

    def entries(self, subject: Subject) -> list[str]:
        """What became of each message answering ``subject``, in index order: ``sent:<id>``,
        ``refused:<why>``, ``sending`` (claimed, in doubt) or ``none``; an earlier release's
        entries when the record has none."""
        record = records.read(self._client, subject.phone_number_id, subject.id, subject.at)
        if record is None or not record.states:
            return [entry for entry in self._earlier_entries(subject) if entry]
        kept = self._client.mget([subject.entry(index) for index in range(len(record.states))])
        found = []
        for state, value in zip(record.states, kept, strict=True):
            text = value.decode() if isinstance(value, bytes) else None
            if state == "sent":
                found.append(text if text and text.startswith("sent:") else "sent:")
            elif state == "refused":
                found.append(text if text and text.startswith("refused:") else "refused:")
            else:
                found.append(state or "none")
        return found

    def _earlier_entries(self, subject: Subject) -> list[str]:
        found: list[str] = []
        while (value := self._client.get(subject.entry(len(found)))) is not None:
            text = value.decode() if isinstance(value, bytes) else str(value)
            found.append("sending" if text.startswith("sending") else text)
        return found

    def replies(self, subject: Subject) -> int | None:
        """How many messages answered ``subject``, or None when it is not done."""
        record = records.read(self._client, subject.phone_number_id, subject.id, subject.at)
        if record is not None and record.handled is not None:
            return record.handled
        value = self._client.get(keys.handled(subject.phone_number_id, subject.id))
        return None if value is None else int(value)

    def _record(
        self,
        values: Sequence[tuple[str, str]],
        subject: Subject,
        index: int,
        state: str,
        replies: int | None,
        journey: Journey | None,
    ) -> None:
        """Set each key to its value, update ``subject``'s record (the ``index``-th state, and
        done with ``replies``: then it also leaves its user's order) and append ``journey``'s
        event, in one command. It records sends that happened: worth waiting for Redis (up to
        :data:`RECORD_WAIT_SECONDS`) rather than leave them "in doubt"."""
        names = [key for key, _ in values]
        args: list[Any] = [
            len(values), *(value for _, value in values), self.kept_seconds,
            subject.at, subject.digest, index, state, "" if replies is None else replies,
            int(time.time()), self.ttl_seconds,
        ]  # fmt: skip
        if replies is not None and subject.ordered_for is not None:  # done: it leaves the order
            names += [
                keys.order(subject.phone_number_id, subject.ordered_for),
                keys.order_running(subject.phone_number_id, subject.ordered_for),
            ]
            args.append(subject.id)
        else:
            args.append("")
        if journey is not None:
            journey_keys, journey_args = journeys.appended(*journey, self.kept_seconds)
            names += journey_keys
            args += journey_args
        retrying.call(
            lambda: self._record_script(keys=names, args=args),
            on=(RedisConnectionError, RedisTimeoutError),
            attempts=None,
            timeout=RECORD_WAIT_SECONDS,
            wait_max=2.0,
        )


def answered(client: redis.Redis, outbound_id: str) -> dict[str, object] | None:
    """What the message ``outbound_id`` (sent by wapipe) answered: ``phone_number_id``, ``answers``
    (the inbound message id, or ``send:<key>``), ``index`` and ``user``; None when unknown."""
    stored = client.get(keys.outbound(outbound_id))
    return None if stored is None else dict(json.loads(stored))

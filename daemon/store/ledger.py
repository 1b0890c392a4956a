"""The reply ledger: each outbound message is sent at most once.

Before the ``n``-th message answering inbound ``id`` is sent, ``wapipe:reply:<phone_number_id>:
<id>:<n>`` is claimed (``sending:<attempt>:<time>``); after Meta accepted it, it says
``sent:<outbound id>``. A claim found ``sending`` means an earlier attempt may have sent it: it is
not sent again unless an operator's replay takes it over. When the inbound message is done,
``wapipe:handled:<phone_number_id>:<id>`` records how many messages answered it (``0``: handled
without reply), written with the last ledger mark. With each ``sent`` mark,
``wapipe:outbound:<outbound id>`` records what that message answered (:func:`answered`), for
delivery tracking. Entries live for the message dedup window plus a day.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from daemon import retrying
from daemon.store import journeys, keys, scripts

#: A stage run's event for a message's journey: (the ledger subject, the event).
Journey = tuple[str, str]

#: The reply ledger outlives the message dedup window by a day.
EXTRA_SECONDS = 86_400
#: How long a write recording a send that happened waits for Redis: rather than leave it "in doubt".
RECORD_WAIT_SECONDS = 60.0


class Claim(enum.Enum):
    """What :meth:`ReplyLedger.claim` found."""

    #: Ours now: send.
    CLAIMED = "claimed"
    #: Sent already by an earlier attempt, or refused for good (outside the window): do not send.
    SENT = "sent"
    #: An earlier attempt started this send and never finished: it may have been delivered.
    IN_DOUBT = "in_doubt"


class ReplyLedger:
    """The ledger on one Redis client.

    Args:
        client: the calling thread's redis-py client.
        dedup_ttl_seconds: ``WAPIPE_MESSAGE_DEDUP_TTL_SECONDS``; entries live a day longer.
    """

    def __init__(self, client: redis.Redis, dedup_ttl_seconds: int) -> None:
        self._client = client
        self._record_script = scripts.register(client, "record")
        self.ttl_seconds = dedup_ttl_seconds + EXTRA_SECONDS

    def claim(self, phone_number_id: str, message_id: str, index: int, attempt: str) -> Claim:
        """Claim the ``index``-th send answering ``message_id`` for ``attempt``."""
        key = keys.ledger(phone_number_id, message_id, index)
        if self._client.set(key, f"sending:{attempt}", nx=True, ex=self.ttl_seconds):
            return Claim.CLAIMED
        stored = self._client.get(key) or b""
        state = stored.decode() if isinstance(stored, bytes) else str(stored)
        return Claim.SENT if state.startswith(("sent", "refused")) else Claim.IN_DOUBT

    def take_over(self, phone_number_id: str, message_id: str, index: int, attempt: str) -> None:
        """Claim a send in doubt for ``attempt`` (an operator accepted a possible second message)."""
        self._client.set(
            keys.ledger(phone_number_id, message_id, index), f"sending:{attempt}", ex=self.ttl_seconds
        )

    def release(self, phone_number_id: str, message_id: str, index: int) -> None:
        """Give a claim back: the send surely did not happen."""
        self._client.delete(keys.ledger(phone_number_id, message_id, index))

    def sent(
        self,
        phone_number_id: str,
        message_id: str,
        index: int,
        outbound_id: str,
        *,
        user: str | None = None,
        replies: int | None = None,
        journey: Journey | None = None,
    ) -> None:
        """Record that the ``index``-th send happened, and what the message sent answered (its
        subject, index and ``user``: :func:`answered`); with ``replies``, also that the inbound
        message is done (the last send), in the same command, with the run's ``journey`` event."""
        link = {"phone_number_id": phone_number_id, "answers": message_id, "index": index, "user": user}
        values = [
            (keys.ledger(phone_number_id, message_id, index), f"sent:{outbound_id}"),
            (keys.outbound(outbound_id), json.dumps(link, separators=(",", ":"))),
        ]
        if replies is not None:
            values.append((keys.handled(phone_number_id, message_id), str(replies)))
        self._record(values, journey)

    def refused(
        self,
        phone_number_id: str,
        message_id: str,
        index: int,
        reason: str,
        *,
        replies: int | None = None,
        journey: Journey | None = None,
    ) -> None:
        """Record that the ``index``-th send was refused for good (``refused:<reason>``, e.g. the
        window closed): a retry does not send it either. With ``replies``, the message is done."""
        values = [(keys.ledger(phone_number_id, message_id, index), f"refused:{reason}")]
        if replies is not None:
            values.append((keys.handled(phone_number_id, message_id), str(replies)))
        self._record(values, journey)

    def handled(
        self, phone_number_id: str, message_id: str, replies: int, *, journey: Journey | None = None
    ) -> None:
        """Record that the inbound message is done, answered by ``replies`` messages (with the
        run's ``journey`` event, in the same command)."""
        self._record([(keys.handled(phone_number_id, message_id), str(replies))], journey)

    def entries(self, phone_number_id: str, message_id: str) -> list[str]:
        """Every ledger entry of ``message_id``, in index order (``sent:<id>``, ``refused:<why>``,
        ``sending:<attempt>``), up to the first index with none."""
        found: list[str] = []
        while (value := self._client.get(keys.ledger(phone_number_id, message_id, len(found)))) is not None:
            found.append(value.decode() if isinstance(value, bytes) else str(value))
        return found

    def replies(self, phone_number_id: str, message_id: str) -> int | None:
        """How many messages answered ``message_id``, or None when it is not done."""
        value = self._client.get(keys.handled(phone_number_id, message_id))
        return None if value is None else int(value)

    def _record(self, values: Sequence[tuple[str, str]], journey: Journey | None = None) -> None:
        """Set each key to its value (and append ``journey``'s event), in one command. It records
        sends that happened: worth waiting for Redis (up to :data:`RECORD_WAIT_SECONDS`) rather
        than leave them "in doubt"."""
        names = [key for key, _ in values]
        args: list[Any] = [len(values), *(value for _, value in values), self.ttl_seconds]
        if journey is not None:
            journey_keys, journey_args = journeys.appended(*journey, self.ttl_seconds)
            names += journey_keys
            args += journey_args

        def write() -> None:
            if len(values) == 1 and journey is None:
                self._client.set(values[0][0], values[0][1], ex=self.ttl_seconds)
            else:
                self._record_script(keys=names, args=args)

        retrying.call(
            write,
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

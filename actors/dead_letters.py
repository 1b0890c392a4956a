"""Dead letters: Dramatiq's ``.XQ`` holds the message, this middleware records why.

Dramatiq moves a failed message to ``dramatiq:<queue>.XQ`` atomically when it nacks it. Just
before that, :class:`DeadLetterRecorder` stores the reason (exception, Graph error code, details,
fbtrace_id), the stage and the attempt count under the same Redis message id, so that
``wapipe dlq`` can show each dead letter with its reason. A business send's journey also gets a
``dead_lettered`` event naming the dead letter, which ``GET /send/{key}`` reads. A dead-lettered
message has ended: it leaves its user's order (:mod:`daemon.store.order`), so that the user's next
message goes at once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Interrupt, Middleware
from redis.exceptions import RedisError

from actors.errors import ConversationBusy, PermanentFailure
from actors.reliability import ENQUEUE_LOST, RedisStillDown, wait_out_outage
from daemon.graph import (
    GraphError,
    GraphUnreachable,
    MediaExpired,
    MediaRefused,
    RequestInvalid,
    SendOutcomeUnknown,
)
from daemon.logs import traceback_lines
from daemon.pipeline import FETCH_MEDIA, REPLY, SEND, ArgumentInvalid
from daemon.store import journeys, order
from daemon.store.deadletters import record_reason

log = logging.getLogger(__name__)


#: Failures whose messages wapipe writes itself (ids, codes, sizes: never content), or that Meta,
#: Redis and the network write. Any other exception (a bot's own, a bug) may quote content in its
#: message: only its type goes to the logs and to ``dlq list``.
KNOWN_FAILURES: tuple[type[BaseException], ...] = (
    PermanentFailure,
    ConversationBusy,
    GraphError,
    GraphUnreachable,
    SendOutcomeUnknown,
    MediaExpired,
    MediaRefused,
    RequestInvalid,
    dramatiq.Retry,
    RedisError,
    RedisStillDown,
    TimeoutError,
    Interrupt,
)


def expected(exception: BaseException) -> bool:
    """True for the failures wapipe anticipates (logged as one line, no traceback)."""
    return isinstance(exception, KNOWN_FAILURES)


def reason_line(exception: BaseException) -> str:
    """One content-free line saying why a run failed: the type, and the message when wapipe (or
    Meta, Redis, the network) wrote it."""
    if isinstance(exception, GraphError):
        return f"GraphError code={exception.code} http={exception.http_status}: {exception.message}"[:300]
    if expected(exception):
        return f"{type(exception).__name__}: {exception}"[:300]
    return type(exception).__name__


def describe(exception: BaseException | None) -> dict[str, Any]:
    """The reason recorded for a dead letter; never a payload body or a secret.

    The message of an unexpected exception may quote content: it is kept for ``dlq show`` (a
    deliberate view of the dead letter) under ``detail``, never in ``message``.
    """
    if isinstance(exception, PermanentFailure):
        return exception.reason
    if isinstance(exception, GraphError):
        return exception.reason()
    if exception is None:
        return {"type": "Unknown", "message": "failed without an exception"}
    if expected(exception):
        return {"type": type(exception).__name__, "message": str(exception)[:500]}
    return {"type": type(exception).__name__, "detail": str(exception)[:500]}


class DeadLetterRecorder(Middleware):
    """Records the reason of every message that is about to be dead-lettered.

    Must be added *before* ``Retries``: ``after_*`` hooks run in reverse order, and this one has
    to see the verdict ``Retries`` reached.

    Args:
        journey_seconds: how long a journey is kept (``WAPIPE_TRACE_RETENTION_HOURS``).
    """

    def __init__(self, journey_seconds: int = 72 * 3600) -> None:
        self.journey_seconds = journey_seconds

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if not message.failed:
            return
        permanent = isinstance(exception, PermanentFailure)
        retries = int(message.options.get("retries", 0))
        reason = describe(exception)
        if message.options.pop(ENQUEUE_LOST, False):
            reason = {
                "type": "RetryEnqueueLost",
                "message": "the worker stopped while Redis was unreachable to take the retry",
                "cause": reason,
            }
        record = {
            "message_id": message.message_id,
            "stage": message.actor_name,
            "queue": message.queue_name,
            "reason": reason,
            "attempts": retries + 1 if permanent else max(retries, 1),
            "failed_at": time.time(),
        }
        redis_message_id = str(message.options.get("redis_message_id"))
        assert isinstance(broker, RedisBroker)
        client = broker.client
        with contextlib.suppress(RedisStillDown):  # Dramatiq keeps the message; only the reason is lost
            wait_out_outage(lambda: record_reason(client, redis_message_id, record), "dead letter reason")
        with contextlib.suppress(RedisStillDown, RedisError):  # only GET /send's pointer is lost
            self._journey(client, message, redis_message_id, record, exception)
        # Lost, the order's bound lets the next message go; a user no key can name had no place.
        with contextlib.suppress(RedisStillDown, RedisError, ValueError):
            self._leave_order(client, message)
        fields: dict[str, Any] = {
            "actor": message.actor_name,
            "message_id": message.message_id,
            "attempts": record["attempts"],
            "reason": reason_line(exception) if exception is not None else reason["type"],
        }
        if exception is not None and not expected(exception):
            fields["traceback"] = traceback_lines(exception)
        log.warning("dead_lettered", extra=fields)

    def _leave_order(self, client: Any, message: dramatiq.MessageProxy) -> None:
        """The message ended: the user's next message need not wait for it."""
        found: tuple[str, str | None, str] | None = None
        try:
            if message.actor_name in (REPLY.name, FETCH_MEDIA.name):
                item = REPLY.decode(message.kwargs)
                found = (item.phone_number_id, item.user, item.id)
            elif message.actor_name == SEND.name:
                send = SEND.decode(message.kwargs)
                found = (send.phone_number_id, send.to, send.subject)
        except (ArgumentInvalid, TypeError):  # a message that never had a place
            return
        if found is None:
            return
        number, user, subject = found
        if user:
            wait_out_outage(lambda: order.leave(client, number, user, subject), "order release")

    def _journey(
        self,
        client: Any,
        message: dramatiq.MessageProxy,
        letter_id: str,
        record: dict[str, Any],
        exception: BaseException | None,
    ) -> None:
        """A business send's journey ends with its dead letter (``GET /send/{key}`` reads it)."""
        send = message.kwargs.get("send") if message.actor_name == SEND.name else None
        if not isinstance(send, dict) or not isinstance(send.get("key"), str):
            return
        event = journeys.event(
            SEND.name,
            "dead_lettered",
            record["attempts"],
            phone_number_id=send.get("phone_number_id"),
            letter=letter_id,
            error=reason_line(exception) if exception is not None else record["reason"]["type"],
        )
        the_journeys = journeys.Journeys(client, self.journey_seconds)
        wait_out_outage(lambda: the_journeys.add(f"send:{send['key']}", event), "dead letter journey")

"""reply: run the reply handler, mark the message read, send the replies at most once.

Queue ``wapipe``. Receives one ``item`` (the inbound message object, its ``phone_number_id`` and
contact, ``received_at``). The handler (the README's default reply table, or ``WAPIPE_HANDLER``) returns the
outbound messages; none means "handled without reply" and no read receipt. Otherwise the message
is marked read (a failure is logged and does not stop the reply), then each outbound message is
sent from the envelope's own ``phone_number_id``.

At most once: before each send a ledger key ``wapipe:reply:{phone_number_id}:{id}:{n}`` is claimed
in Redis. A send that surely did not happen (no connection, 5xx / 429, a Graph error) releases the
claim and is retried; a send that may have happened (timeout after the request went out, a worker
that died mid-send, any answer that is not a readable success or an error) keeps the claim and is
dead-lettered as "unknown outcome", never resent — unless an operator replays it with
``wapipe dlq replay --resend-unknown``, accepting that the user may get it twice. When
the message is done, ``wapipe:handled:{phone_number_id}:{id}`` records how many messages answered
it (``0``: handled without reply), written with the last ledger mark.

Graph errors (docs/whatsapp.md, *Error codes*): permanent codes are dead-lettered at once; throttling codes are
retried on their own schedule (``Retry-After`` when given, 4^X s for the pair limit 131056, 2 s
for the throughput limit 130429, 60 s for 131057, 80007 and 4), clamped to the ``WAPIPE_RETRY_*_BACKOFF_MS`` bounds; others
follow the exponential back-off. A refused token (190, 0) pauses sending for that number: its
messages wait (``WAPIPE_AUTH_PAUSE_MS``) without using up retries, one of them probes the Graph API
each period, and the first success resumes sending. Nothing is dead-lettered for a bad token.

Worst case per message: ``WAPIPE_RETRY_MAX + 1`` runs (default 6), each up to
``WAPIPE_GRAPH_ATTEMPTS`` calls (default 3) 0.1–2 s apart, each given up after
``WAPIPE_GRAPH_TIMEOUT_SECONDS`` (10 s) of silence; the runs separated by back-offs of 1–2, 2–4,
4–8, 8–16, 16–32 s: about 3 minutes in all.
"""

from __future__ import annotations

import logging
import time
from typing import Any, TypeVar

import dramatiq
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors import metrics, runtime
from actors.errors import GraphRejected, ItemRejected, OutcomeUnknown
from daemon import retrying
from daemon.dlq import RESEND_UNKNOWN
from daemon.envelope import handoff_problem
from daemon.graph import GraphError, GraphUnreachable, RequestInvalid, SendOutcomeUnknown
from daemon.handler import InboundMessage, Outbound, call_handler
from daemon.keys import handled_key, ledger_key

log = logging.getLogger(__name__)
RetryT = TypeVar("RetryT", bound=dramatiq.Retry)

ACTOR_NAME = "reply"
OPTIONS: dict[str, Any] = {}

#: Seconds to wait for each throttling code without a ``Retry-After`` (131056 grows as 4^X).
THROTTLE_SECONDS = {130429: 2.0, 131057: 60.0, 80007: 60.0, 4: 60.0}


class SendingPaused(dramatiq.Retry):
    """The access token is refused for this number: wait and try again, without using up retries."""


class SendDeferred(dramatiq.Retry):
    """An outbound rate limit puts the next slot further away than a thread should sleep."""


RETRY_FOREVER = (SendingPaused, SendDeferred)
#: The longest a send sleeps for its rate-limit slot; a longer wait goes back to the queue.
MAX_INLINE_WAIT_MS = 2_000

#: The reply ledger outlives the message dedup window by a day.
LEDGER_EXTRA_SECONDS = 86_400


def run(item: dict[str, Any]) -> None:
    rt = runtime.current()
    problem = handoff_problem(item)
    if problem is not None:
        raise ItemRejected(problem, envelope_id=item.get("envelope_id"))
    message = InboundMessage.from_item(item)
    fields = {"actor": ACTOR_NAME, "message_id": message.id, "type": message.type}
    # A sync handler runs in this worker thread; an async one on the worker's event loop.
    outbound = call_handler(rt.handler, message, rt.run)
    ttl = rt.settings.message_dedup_ttl_seconds + LEDGER_EXTRA_SECONDS
    if not outbound:
        _record(rt, [(handled_key(message.phone_number_id, message.id), "0")], ttl)
        log.info("handled_without_reply", extra=fields)
        return
    recipient = _recipient(message)
    probing = _wait_if_paused(rt, message.phone_number_id)
    _mark_read(rt, message, fields)
    # Only an operator's `dlq replay --resend-unknown` may send again what may have been delivered.
    take_over = bool(runtime.current_options().get(RESEND_UNKNOWN))
    for index, body in enumerate(outbound):
        done = (handled_key(message.phone_number_id, message.id), str(len(outbound)))
        _send_once(
            rt,
            message,
            index,
            {**recipient, **body, "messaging_product": "whatsapp"},
            take_over,
            also=[done] if index == len(outbound) - 1 else [],
        )
    if probing and rt.redis.delete(_paused_key(message.phone_number_id)):
        log.warning(
            "sending_resumed", extra={"actor": ACTOR_NAME, "phone_number_id": message.phone_number_id}
        )
    latency = time.time() - float(item["received_at"])
    metrics.current().reply_latency.observe(max(0.0, latency))
    log.info(
        "replied",
        extra={
            **fields,
            "replies": len(outbound),
            "latency_ms": round(latency * 1000),
        },
    )


def _paused_key(phone_number_id: str) -> str:
    return f"wapipe:paused:{phone_number_id}"


def _not_counted(retry: RetryT) -> RetryT:
    """Make ``retry`` not count as one of the message's retries (Retries adds one back)."""
    options = runtime.current_options()
    options["retries"] = int(options.get("retries", 0)) - 1
    return retry


def _pause_retry(rt: runtime.Runtime) -> SendingPaused:
    """A Retry after the pause period that does not count as one of the message's retries."""
    return _not_counted(SendingPaused(delay=rt.settings.auth_pause_ms))


def _wait_for_slot(rt: runtime.Runtime, message: InboundMessage, recipient: str) -> None:
    """Take a send slot under the per-number and per-recipient limits, sleeping briefly if needed."""
    slot = rt.limiter.reserve(message.phone_number_id, recipient, max_wait_ms=MAX_INLINE_WAIT_MS)
    if slot.wait_ms <= 0:
        return
    metrics.current().rate_limit_waits.labels(slot.limit).inc()
    if not slot.reserved:
        raise _not_counted(SendDeferred(delay=slot.wait_ms))
    time.sleep(slot.wait_ms / 1000)


def _wait_if_paused(rt: runtime.Runtime, phone_number_id: str) -> bool:
    """While the number is paused, only one message per period goes on, as the probe.

    Returns True for the probe (whose success lifts the pause), False when not paused.
    """
    if not rt.redis.exists(_paused_key(phone_number_id)):
        return False
    probe = rt.redis.set(f"wapipe:probe:{phone_number_id}", "1", nx=True, px=rt.settings.auth_pause_ms)
    if not probe:
        raise _pause_retry(rt)
    return True


def _throttle_delay_ms(rt: runtime.Runtime, error: GraphError) -> int | None:
    """How long to wait before retrying a throttled send, or None for the usual back-off."""
    retries = int(runtime.current_options().get("retries", 0))
    if error.retry_after is not None:
        seconds = error.retry_after
    elif error.code == 131056:
        seconds = 4.0**retries  # Meta: retry after 4^X seconds
    elif error.code in THROTTLE_SECONDS:
        seconds = THROTTLE_SECONDS[error.code]
    else:
        return None
    settings = rt.settings
    return int(min(max(seconds * 1000, settings.retry_min_backoff_ms), settings.retry_max_backoff_ms))


def _recipient(message: InboundMessage) -> dict[str, str]:
    if message.from_:
        return {"recipient_type": "individual", "to": "+" + message.from_}
    if message.from_user_id:
        return {"recipient_type": "individual", "recipient": message.from_user_id}
    raise ItemRejected("inbound message has neither from nor from_user_id", message_id=message.id)


def _mark_read(rt: runtime.Runtime, message: InboundMessage, fields: dict[str, Any]) -> None:
    try:
        rt.graph.mark_read(message.phone_number_id, message.id)
    except (GraphError, GraphUnreachable, SendOutcomeUnknown) as error:
        log.warning("mark_read_failed", extra={**fields, "error": str(error)[:200]})


def _send_once(
    rt: runtime.Runtime,
    message: InboundMessage,
    index: int,
    body: Outbound,
    take_over: bool,
    also: list[tuple[str, str]],
) -> None:
    """Claim the ledger entry, send, mark it sent (with the ``also`` keys, in the same round trip)."""
    key = ledger_key(message.phone_number_id, message.id, index)
    ttl = rt.settings.message_dedup_ttl_seconds + LEDGER_EXTRA_SECONDS
    recipient = str(body.get("to") or body.get("recipient"))
    _wait_for_slot(rt, message, recipient)
    claim = f"sending:{runtime.current_message_id()}:{time.time():.3f}"
    claimed = rt.redis.set(key, claim, nx=True, ex=ttl)
    if not claimed:
        stored = rt.redis.get(key) or b""
        state = stored.decode() if isinstance(stored, bytes) else str(stored)
        if state.startswith("sent"):
            rt.limiter.release(message.phone_number_id, recipient)  # nothing is sent now
            log.info(
                "reply_already_sent", extra={"actor": ACTOR_NAME, "message_id": message.id, "index": index}
            )
            if also:
                _record(rt, also, ttl)
            return
        if not take_over:
            rt.limiter.release(message.phone_number_id, recipient)
            raise OutcomeUnknown(
                "an earlier attempt started this send and never finished: it may have been delivered",
                message_id=message.id,
                index=index,
            )
        rt.redis.set(key, claim, ex=ttl)  # an operator's replay takes the send over
    try:
        result = rt.graph.send_message(message.phone_number_id, body, in_reply_to=message.id)
    except SendOutcomeUnknown as error:
        raise OutcomeUnknown(str(error), message_id=message.id, index=index) from None
    except GraphError as error:
        rt.redis.delete(key)
        rt.limiter.release(message.phone_number_id, recipient)
        if error.kind == "auth":
            _pause(rt, message.phone_number_id, error)
            raise _pause_retry(rt) from None
        if error.kind == "retry_later":
            delay = _throttle_delay_ms(rt, error)
            if delay is not None:
                log.warning(
                    "send_throttled",
                    extra={
                        "actor": ACTOR_NAME,
                        "message_id": message.id,
                        "code": error.code,
                        "delay_ms": delay,
                    },
                )
                raise dramatiq.Retry(str(error), delay=delay) from None
        if error.kind == "permanent":
            raise GraphRejected(
                error.message,
                code=error.code,
                http_status=error.http_status,
                details=error.details,
                fbtrace_id=error.fbtrace_id,
                message_id=message.id,
            ) from None
        raise
    except GraphUnreachable:
        rt.redis.delete(key)
        rt.limiter.release(message.phone_number_id, recipient)
        raise
    except RequestInvalid as error:
        rt.redis.delete(key)
        rt.limiter.release(message.phone_number_id, recipient)
        raise ItemRejected(str(error), message_id=message.id, index=index) from None
    _record(rt, [(key, f"sent:{result.message_id}"), *also], ttl)


#: SET each KEYS[i] to ARGV[i] with the TTL in the last ARGV: several keys in one command.
_SET_ALL = "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i], 'EX', ARGV[#ARGV]) end"


def _record(rt: runtime.Runtime, values: list[tuple[str, str]], ttl: int) -> None:
    """Set each key to its value, in one command. Used for a send that happened: worth waiting for
    Redis (up to 60 s) rather than leave it "in doubt"."""

    def write() -> None:
        if len(values) == 1:
            rt.redis.set(values[0][0], values[0][1], ex=ttl)
        else:
            rt.script(_SET_ALL)(keys=[key for key, _ in values], args=[*(value for _, value in values), ttl])

    retrying.call(
        write,
        on=(RedisConnectionError, RedisTimeoutError),
        attempts=None,
        timeout=60.0,
        wait_max=2.0,
    )


def _pause(rt: runtime.Runtime, phone_number_id: str, error: GraphError) -> None:
    """Pause sending for the number: loud, counted, lifted by the next success."""
    rt.redis.set(_paused_key(phone_number_id), str(error.code), ex=86_400)
    log.critical(
        "graph_token_refused_sending_paused",
        extra={
            "actor": ACTOR_NAME,
            "phone_number_id": phone_number_id,
            "code": error.code,
            "fbtrace_id": error.fbtrace_id,
            "hint": "renew WHATSAPP_ACCESS_TOKEN; messages wait and resume by themselves",
        },
    )

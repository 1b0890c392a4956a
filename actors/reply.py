"""reply: run the reply handler, mark the message read, send the replies at most once.

Queue ``wapipe``. Receives one :class:`~daemon.pipeline.MessageItem` (the inbound message object,
its ``phone_number_id`` and contact, ``received_at``). The handler (the README's default reply table, or ``WAPIPE_HANDLER``) returns the
outbound messages; none means "handled without reply" and no read receipt. Otherwise the message
is marked read (a failure is logged and does not stop the reply), then each outbound message is
sent from the envelope's own ``phone_number_id``.

At most once: before each send its entry of the reply ledger (:mod:`daemon.store.ledger`) is
claimed in Redis. A send that surely did not happen (no connection, 5xx / 429, a Graph error) releases the
claim and is retried; a send that may have happened (timeout after the request went out, a worker
that died mid-send, any answer that is not a readable success or an error) keeps the claim and is
dead-lettered as "unknown outcome", never resent — unless an operator replays it with
``wapipe dlq replay --resend-unknown``, accepting that the user may get it twice. When
the message is done, the ledger records how many messages answered it (``0``: handled without
reply), with the last send's mark.

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

import dramatiq

from actors.context import Context
from actors.errors import ConversationBusy, GraphRejected, ItemRejected, OutcomeUnknown
from daemon.conversation import WINDOW_SECONDS, Entry
from daemon.graph import GraphError, GraphUnreachable, RequestInvalid, SendOutcomeUnknown
from daemon.handler import InboundMessage, Outbound, call_handler, inbound_text
from daemon.messages import OUTSIDE_WINDOW, free_form, text_of
from daemon.pipeline import REPLY, MessageItem
from daemon.store.conversations import ConversationChanged
from daemon.store.ledger import Claim

log = logging.getLogger(__name__)

ACTOR_NAME = REPLY.name

#: Seconds to wait for each throttling code without a ``Retry-After`` (131056 grows as 4^X).
THROTTLE_SECONDS = {130429: 2.0, 131057: 60.0, 80007: 60.0, 4: 60.0}


#: Decisions made in a row for one message before it is retried later (another message of the
#: same user committed between loading the conversation and committing this one's turn).
DECIDE_ATTEMPTS = 5


class SendingPaused(dramatiq.Retry):
    """The access token is refused for this number: wait and try again, without using up retries."""


class SendDeferred(dramatiq.Retry):
    """An outbound rate limit puts the next slot further away than a thread should sleep."""


class OrderWait(dramatiq.Retry):
    """An earlier message of the same conversation is not decided yet: come back shortly."""


RETRY_FOREVER = (SendingPaused, SendDeferred, OrderWait)
#: How often a message waiting for an earlier one looks again, while it waits in the thread.
ORDER_POLL_SECONDS = 0.05
#: The longest a send sleeps for its rate-limit slot; a longer wait goes back to the queue.
MAX_INLINE_WAIT_MS = 2_000


def run(context: Context, item: MessageItem) -> None:
    message = InboundMessage.from_item(item)
    fields = {"actor": ACTOR_NAME, "message_id": message.id, "type": message.type}
    ledger = context.store.ledger
    outbound = _decide(context, message)
    if not outbound:
        ledger.handled(message.phone_number_id, message.id, 0)
        log.info("handled_without_reply", extra=fields)
        return
    recipient = _recipient(message)
    probing = _wait_if_paused(context, message.phone_number_id)
    _mark_read(context, message, fields)
    # Only an operator's `dlq replay --resend-unknown` may send again what may have been delivered.
    take_over = context.resend_unknown
    window_open = _window_open(context, message)
    for index, decided in enumerate(outbound):
        last = len(outbound) if index == len(outbound) - 1 else None
        body = _within_window(context, message, decided, window_open)
        if body is None:
            _refuse(context, message, index, last)
            continue
        _send_once(
            context, message, index, {**recipient, **body, "messaging_product": "whatsapp"}, take_over, last
        )
    if probing and context.store.pause.resume(message.phone_number_id):
        log.warning(
            "sending_resumed", extra={"actor": ACTOR_NAME, "phone_number_id": message.phone_number_id}
        )
    latency = time.time() - item.received_at
    context.metrics.reply_latency.observe(max(0.0, latency))
    log.info("replied", extra={**fields, "replies": len(outbound), "latency_ms": round(latency * 1000)})


def _decide(context: Context, message: InboundMessage) -> list[Outbound]:
    """The replies to ``message``. A sync handler runs in this worker thread, an async one on the
    worker's event loop. A handler that takes the conversation gets it loaded from Redis, and its
    replies are committed with the conversation's changes as this message's turn, once: a run
    that finds the turn committed (a retry, a redelivery, a replay) sends those replies again
    through the ledger, without running the bot. When another message of the user committed
    meanwhile, the bot decides again from the new state (it may run more than once; only one
    decision is kept and sent)."""
    if not context.conversational:
        return call_handler(context.handler, message, context.run_coroutine)
    conversations = context.store.conversations
    user = message.from_ or message.from_user_id
    if not user:
        raise ItemRejected("inbound message has neither from nor from_user_id", message_id=message.id)
    decided = conversations.decided(message.phone_number_id, message.id, user)
    if decided is not None:
        log.info("turn_already_decided", extra={"actor": ACTOR_NAME, "message_id": message.id})
        return decided
    _wait_for_earlier(context, message, user)
    inbound_at = _timestamp(message)
    for attempt in range(DECIDE_ATTEMPTS):
        conversation = conversations.load(message.phone_number_id, user)
        if inbound_at is not None:
            conversation.last_inbound_at = max(conversation.last_inbound_at or 0.0, inbound_at)
        outbound = call_handler(context.handler, message, context.run_coroutine, conversation)
        now = time.time()
        entries = [
            Entry("in", message.type, inbound_text(message), inbound_at or now, message.id),
            *(Entry("out", str(body.get("type")), text_of(body), now) for body in outbound),
        ]
        try:
            return conversations.commit(conversation, message.id, outbound, entries, inbound_at).outbound
        except TypeError as error:  # json.dumps: the bot put something that is not JSON in it
            raise ItemRejected(
                f"the conversation cannot be stored: {error}"[:300], message_id=message.id
            ) from None
        except ConversationChanged:
            log.info(
                "conversation_changed",
                extra={"actor": ACTOR_NAME, "message_id": message.id, "attempt": attempt},
            )
    raise ConversationBusy(f"the conversation kept changing during {DECIDE_ATTEMPTS} decisions")


def _wait_for_earlier(context: Context, message: InboundMessage, user: str) -> None:
    """Hold the message while an earlier message of its conversation is undecided (at most
    ``WAPIPE_ORDER_WAIT_SECONDS`` after that one was seen): briefly in this thread, then back in
    the queue without using up a retry."""
    bound_ms = int(context.settings.order_wait_seconds * 1000)
    deadline = time.monotonic() + MAX_INLINE_WAIT_MS / 1000
    counted = False
    while True:
        now_ms = int(time.time() * 1000)
        wait = context.store.conversations.wait_ms(
            message.phone_number_id, user, message.id, now_ms, bound_ms
        )
        if wait <= 0:
            return
        if not counted:
            context.metrics.ordering_waits.inc()
            log.info("ordering_wait", extra={"actor": ACTOR_NAME, "message_id": message.id, "wait_ms": wait})
            counted = True
        if time.monotonic() + ORDER_POLL_SECONDS >= deadline:
            raise context.not_counted(OrderWait(delay=min(wait, 1_000)))
        time.sleep(ORDER_POLL_SECONDS)


def _window_open(context: Context, message: InboundMessage) -> bool:
    """Whether the user's 24-hour customer-service window is open now, counted as Meta counts it:
    from the user's last message's own ``timestamp`` (this one, or a later one the bot saw). A
    message without a readable timestamp is taken as sent now."""
    last = _timestamp(message)
    user = message.from_ or message.from_user_id
    if context.conversational and user:
        stored = context.store.conversations.last_inbound(message.phone_number_id, user)
        if stored is not None:
            last = max(last or 0.0, stored)
    return last is None or time.time() - last < WINDOW_SECONDS


def _within_window(
    context: Context, message: InboundMessage, body: Outbound, window_open: bool
) -> Outbound | None:
    """What may be sent of ``body``: itself inside the window (or a template), else the template
    the handler gave for outside it, else None (refused)."""
    fallback = body.get(OUTSIDE_WINDOW)
    sendable = {key: value for key, value in body.items() if key != OUTSIDE_WINDOW}
    if window_open or not free_form(sendable):
        return sendable
    if isinstance(fallback, dict):
        context.metrics.outside_window.labels("template").inc()
        log.info("window_closed_template_sent", extra={"actor": ACTOR_NAME, "message_id": message.id})
        return fallback
    return None


def _refuse(context: Context, message: InboundMessage, index: int, replies: int | None) -> None:
    """A free-form reply due after the window closed, with no template to send instead: not sent
    (Meta would refuse it with 131047), counted, logged, recorded in the ledger so that a retry
    does not send it either."""
    ledger = context.store.ledger
    number = message.phone_number_id
    claim = ledger.claim(number, message.id, index, f"{context.message_id}:{time.time():.3f}")
    if claim is Claim.SENT:
        if replies is not None:
            ledger.handled(number, message.id, replies)
        return
    ledger.refused(number, message.id, index, "window", replies=replies)
    context.metrics.outside_window.labels("refused").inc()
    log.warning(
        "window_closed_reply_refused", extra={"actor": ACTOR_NAME, "message_id": message.id, "index": index}
    )


def _timestamp(message: InboundMessage) -> float | None:
    """Meta's timestamp of the message (Unix seconds), when it is one."""
    return float(message.timestamp) if message.timestamp and message.timestamp.isdigit() else None


def _pause_retry(context: Context) -> SendingPaused:
    """A Retry after the pause period that does not count as one of the message's retries."""
    return context.not_counted(SendingPaused(delay=context.settings.auth_pause_ms))


def _wait_for_slot(context: Context, message: InboundMessage, recipient: str) -> None:
    """Take a send slot under the per-number and per-recipient limits, sleeping briefly if needed."""
    slot = context.store.limiter.reserve(message.phone_number_id, recipient, max_wait_ms=MAX_INLINE_WAIT_MS)
    if slot.wait_ms <= 0:
        return
    context.metrics.rate_limit_waits.labels(slot.limit).inc()
    if not slot.reserved:
        raise context.not_counted(SendDeferred(delay=slot.wait_ms))
    time.sleep(slot.wait_ms / 1000)


def _wait_if_paused(context: Context, phone_number_id: str) -> bool:
    """While the number is paused, only one message per period goes on, as the probe.

    Returns True for the probe (whose success lifts the pause), False when not paused.
    """
    pause = context.store.pause
    if not pause.paused(phone_number_id):
        return False
    if not pause.take_probe(phone_number_id):
        raise _pause_retry(context)
    return True


def _throttle_delay_ms(context: Context, error: GraphError) -> int | None:
    """How long to wait before retrying a throttled send, or None for the usual back-off."""
    if error.retry_after is not None:
        seconds = error.retry_after
    elif error.code == 131056:
        seconds = 4.0**context.retries  # Meta: retry after 4^X seconds
    elif error.code in THROTTLE_SECONDS:
        seconds = THROTTLE_SECONDS[error.code]
    else:
        return None
    settings = context.settings
    return int(min(max(seconds * 1000, settings.retry_min_backoff_ms), settings.retry_max_backoff_ms))


def _recipient(message: InboundMessage) -> dict[str, str]:
    if message.from_:
        return {"recipient_type": "individual", "to": "+" + message.from_}
    if message.from_user_id:
        return {"recipient_type": "individual", "recipient": message.from_user_id}
    raise ItemRejected("inbound message has neither from nor from_user_id", message_id=message.id)


def _mark_read(context: Context, message: InboundMessage, fields: dict[str, str]) -> None:
    try:
        context.graph.mark_read(message.phone_number_id, message.id)
    except (GraphError, GraphUnreachable, SendOutcomeUnknown) as error:
        log.warning("mark_read_failed", extra={**fields, "error": str(error)[:200]})


def _send_once(
    context: Context,
    message: InboundMessage,
    index: int,
    body: Outbound,
    take_over: bool,
    replies: int | None,
) -> None:
    """Claim the ledger entry, send, mark it sent (with the message done when ``replies`` is
    given: the last send), in one round trip."""
    store = context.store
    number = message.phone_number_id
    recipient = str(body.get("to") or body.get("recipient"))
    _wait_for_slot(context, message, recipient)
    attempt = f"{context.message_id}:{time.time():.3f}"
    claim = store.ledger.claim(number, message.id, index, attempt)
    if claim is Claim.SENT:
        store.limiter.release(number, recipient)  # nothing is sent now
        log.info("reply_already_sent", extra={"actor": ACTOR_NAME, "message_id": message.id, "index": index})
        if replies is not None:
            store.ledger.handled(number, message.id, replies)
        return
    if claim is Claim.IN_DOUBT:
        if not take_over:
            store.limiter.release(number, recipient)
            raise OutcomeUnknown(
                "an earlier attempt started this send and never finished: it may have been delivered",
                message_id=message.id,
                index=index,
            )
        store.ledger.take_over(number, message.id, index, attempt)  # an operator's replay takes it over
    try:
        result = context.graph.send_message(number, body, in_reply_to=message.id)
    except SendOutcomeUnknown as error:
        raise OutcomeUnknown(str(error), message_id=message.id, index=index) from None
    except (GraphError, GraphUnreachable, RequestInvalid) as error:
        store.ledger.release(number, message.id, index)
        store.limiter.release(number, recipient)
        raise _not_sent(context, message, index, error) from None
    store.ledger.sent(number, message.id, index, str(result.message_id), replies=replies)


def _not_sent(
    context: Context,
    message: InboundMessage,
    index: int,
    error: GraphError | GraphUnreachable | RequestInvalid,
) -> BaseException:
    """What to raise for a send that surely did not happen: retried, paused or dead-lettered."""
    if isinstance(error, GraphUnreachable):
        return error
    if isinstance(error, RequestInvalid):
        return ItemRejected(str(error), message_id=message.id, index=index)
    if error.kind == "auth":
        _pause(context, message.phone_number_id, error)
        return _pause_retry(context)
    if error.kind == "retry_later":
        delay = _throttle_delay_ms(context, error)
        if delay is not None:
            log.warning(
                "send_throttled",
                extra={"actor": ACTOR_NAME, "message_id": message.id, "code": error.code, "delay_ms": delay},
            )
            return dramatiq.Retry(str(error), delay=delay)
    if error.kind == "permanent":
        return GraphRejected(
            error.message,
            code=error.code,
            http_status=error.http_status,
            details=error.details,
            fbtrace_id=error.fbtrace_id,
            message_id=message.id,
        )
    return error


def _pause(context: Context, phone_number_id: str, error: GraphError) -> None:
    """Pause sending for the number: loud, counted, lifted by the next success."""
    context.store.pause.pause(phone_number_id, error.code)
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

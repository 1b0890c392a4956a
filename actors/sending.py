"""Sending to a user, at most once: what ``reply`` and ``send`` (business-initiated messages) share.

Each outbound message has its entry in the reply ledger (:mod:`daemon.store.ledger`), under the
inbound message it answers or, for a business-initiated message, ``send:<idempotency key>``. Before
a send: the 24-hour window (a free-form message outside it becomes the template given with it, or
is refused and recorded so), the pause on a refused token, the outbound rate limits, the ledger
claim. After it: the ledger mark.

The rate limits (:mod:`daemon.store.ratelimit`): a send takes its slots, sleeping for a near one;
a far one is held and the message is delayed to it (:class:`SendDeferred`, once per send, not
counted as a retry), and the run that comes back sends on the slots it holds (:data:`HELD_SLOTS`).

Errors (docs/whatsapp.md, *Error codes*): a send that surely did not happen gives its claim and
rate-limit slots back and is retried on Meta's schedule for throttling codes (``Retry-After``, 4^X
s for 131056, 2 s for 130429, 60 s for 131057, 80007 and 4, clamped to
``WAPIPE_RETRY_*_BACKOFF_MS``), dead-lettered for permanent codes, or paused (190, 0: a refused
token) without using up retries; a send that may have happened keeps its claim and is
dead-lettered as "unknown outcome", never resent by itself.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dramatiq

from actors.context import Context
from actors.errors import GraphRejected, ItemRejected, OutcomeUnknown
from daemon.conversation import WINDOW_SECONDS
from daemon.graph import GraphError, GraphUnreachable, RequestInvalid, SendOutcomeUnknown
from daemon.handler import Outbound
from daemon.messages import OUTSIDE_WINDOW, free_form, has_uploads, with_uploads
from daemon.store.ledger import Claim, Journey, Subject

log = logging.getLogger(__name__)

#: Seconds to wait for each throttling code without a ``Retry-After`` (131056 grows as 4^X).
THROTTLE_SECONDS = {130429: 2.0, 131057: 60.0, 80007: 60.0, 4: 60.0}
#: The longest a send sleeps for its slots; a later slot is held and the message waits for it in
#: the delay queue.
MAX_INLINE_WAIT_MS = 2_000
#: The message option naming the slots a deferred send holds: ``{"index": n, "slots": {limit: µs}}``
#: (the ``n``-th message of the run; those before it were sent before it was deferred).
HELD_SLOTS = "wapipe_slots"


class SendingPaused(dramatiq.Retry):
    """The access token is refused for this number: wait and try again, without using up retries."""


class SendDeferred(dramatiq.Retry):
    """The send's slot under an outbound rate limit is further away than a thread should sleep:
    the slot is held (:data:`HELD_SLOTS`) and the message is delayed to it."""


#: Retries of these never use up a message's retries.
RETRY_FOREVER: tuple[type[dramatiq.Retry], ...] = (SendingPaused, SendDeferred)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a run's messages go and under which ledger entries."""

    phone_number_id: str
    #: The ledger's subject: the inbound message answered, or ``send:<idempotency key>``.
    ledger_id: str
    #: The inbound message answered (the sandbox records it with the send), if any.
    in_reply_to: str | None
    #: The stage sending (for log lines).
    actor: str
    #: The time the subject's record is filed by: Meta's timestamp of the inbound message, or the
    #: business send's request time (:mod:`daemon.store.records`).
    at: int
    #: The user it goes to (their wa_id or business-scoped id), recorded with each message sent.
    user: str | None = None
    #: Whether the subject holds a place in the user's order (:mod:`daemon.store.order`), which it
    #: leaves when it is done or deferred to a slot it holds.
    ordered: bool = False

    @property
    def subject(self) -> Subject:
        """The ledger's subject of the run's messages."""
        ordered_for = self.user if self.ordered else None
        return Subject(self.phone_number_id, self.ledger_id, self.at, ordered_for)


def window_open(last_inbound: float | None, now: float | None = None) -> bool:
    """Whether the 24-hour window is open: the user's last message (Meta's timestamp) is less than
    24 hours old. An unknown time is taken as now."""
    return last_inbound is None or (time.time() if now is None else now) - last_inbound < WINDOW_SECONDS


def within_window(context: Context, target: Target, body: Outbound, is_open: bool) -> Outbound | None:
    """What may be sent of ``body``: itself inside the window (or a template), else the template
    given with it for outside the window, else None (refused)."""
    fallback = body.get(OUTSIDE_WINDOW)
    sendable = {key: value for key, value in body.items() if key != OUTSIDE_WINDOW}
    if is_open or not free_form(sendable):
        return sendable
    if isinstance(fallback, dict):
        context.metrics.outside_window.labels("template").inc()
        log.info("window_closed_template_sent", extra={"actor": target.actor, "message_id": target.ledger_id})
        return fallback
    return None


def refuse(context: Context, target: Target, index: int, replies: int | None) -> None:
    """A free-form message due after the window closed, with no template to send instead: not sent
    (Meta would refuse it with 131047), counted, logged, recorded in the ledger so that a retry
    does not send it either."""
    ledger = context.store.ledger
    subject = target.subject
    claim = ledger.claim(subject, index)
    journey = _last_write(context, target, replies)
    if claim is Claim.SENT:
        if replies is not None:
            ledger.handled(subject, replies, journey=journey)
        return
    ledger.refused(subject, index, "window", replies=replies, journey=journey)
    context.metrics.outside_window.labels("refused").inc()
    log.warning(
        "window_closed_reply_refused", extra={"actor": target.actor, "message_id": subject.id, "index": index}
    )


def send_all(
    context: Context,
    target: Target,
    recipient: dict[str, str],
    outbound: list[Outbound],
    last_inbound: float | None,
) -> None:
    """Send each of ``outbound`` to ``recipient`` at most once, within the window; the subject is
    done (its handled mark) with the last one."""
    is_open = window_open(last_inbound)
    # Only an operator's `dlq replay --resend-unknown` may send again what may have been delivered.
    take_over = context.resend_unknown
    for index, decided in enumerate(outbound):
        last = len(outbound) if index == len(outbound) - 1 else None
        body = within_window(context, target, decided, is_open)
        if body is None:
            refuse(context, target, index, last)
            continue
        send_once(
            context, target, index, {**recipient, **body, "messaging_product": "whatsapp"}, take_over, last
        )


def wait_if_paused(context: Context, phone_number_id: str, paused: bool | None = None) -> bool:
    """While the number is paused, only one message per period goes on, as the probe. ``paused``:
    whether it is, when the caller read it a moment ago (else it is read now).

    Returns True for the probe (whose success lifts the pause), False when not paused.
    """
    pause = context.store.pause
    if not (pause.paused(phone_number_id) if paused is None else paused):
        return False
    if not pause.take_probe(phone_number_id):
        raise _pause_retry(context)
    return True


def resume_if_probing(context: Context, target: Target, probing: bool) -> None:
    """After the probe's sends succeeded: lift the number's pause."""
    if probing and context.store.pause.resume(target.phone_number_id):
        log.warning(
            "sending_resumed", extra={"actor": target.actor, "phone_number_id": target.phone_number_id}
        )


def send_once(
    context: Context,
    target: Target,
    index: int,
    body: Outbound,
    take_over: bool,
    replies: int | None,
) -> None:
    """Claim the ledger entry, send, mark it sent (with the subject done when ``replies`` is
    given: the last send), in one round trip."""
    store = context.store
    number, subject = target.phone_number_id, target.subject
    recipient = str(body.get("to") or body.get("recipient"))
    if has_uploads(body):  # before the claim: an upload that fails leaves nothing in doubt
        try:
            body = with_uploads(body, _uploader(context, target))
        except (GraphError, GraphUnreachable, RequestInvalid) as error:
            raise _not_sent(context, target, index, error) from None
    slotted = _wait_for_slot(context, target, recipient, index)
    claim = store.ledger.claim(subject, index)
    if claim is Claim.SENT:
        if slotted:
            store.limiter.release(number, recipient)  # nothing is sent now
        log.info(
            "reply_already_sent", extra={"actor": target.actor, "message_id": subject.id, "index": index}
        )
        if replies is not None:
            store.ledger.handled(subject, replies, journey=_last_write(context, target, replies))
        return
    if claim is Claim.IN_DOUBT:
        if not take_over:
            if slotted:
                store.limiter.release(number, recipient)
            raise OutcomeUnknown(
                "an earlier attempt started this send and never finished: it may have been delivered",
                message_id=subject.id,
                index=index,
            )
        store.ledger.take_over(subject, index)  # an operator's replay takes it over
    try:
        result = context.graph.send_message(number, body, in_reply_to=target.in_reply_to)
    except SendOutcomeUnknown as error:
        raise OutcomeUnknown(str(error), message_id=subject.id, index=index) from None
    except (GraphError, GraphUnreachable, RequestInvalid) as error:
        store.ledger.release(subject, index)
        if slotted:
            store.limiter.release(number, recipient)
        raise _not_sent(context, target, index, error) from None
    store.ledger.sent(
        subject,
        index,
        str(result.message_id),
        user=target.user,
        replies=replies,
        journey=_last_write(context, target, replies),
    )


def _last_write(context: Context, target: Target, replies: int | None) -> Journey | None:
    """With the subject's last ledger write (``replies`` given), the run's ``done`` event."""
    return None if replies is None else context.done(target.actor, target.ledger_id)


def _uploader(context: Context, target: Target) -> Callable[[dict[str, str]], str]:
    """Uploads a local file the message names (``POST /{phone_number_id}/media``) and gives its
    media id; the same content uploaded before from this number is not uploaded again."""
    number = target.phone_number_id

    def upload(spec: dict[str, str]) -> str:
        path = Path(str(spec.get("path", "")))
        try:
            content = path.read_bytes()
        except OSError as error:
            raise RequestInvalid(f"the file to upload cannot be read: {error.strerror}") from None
        digest = hashlib.sha256(content).hexdigest()
        uploads = context.store.uploads
        media_id = uploads.get(number, digest)
        if media_id is None:
            media_id = context.graph.upload_media(number, content, str(spec.get("mime_type")), path.name)
            uploads.put(number, digest, media_id)
            log.info(
                "media_uploaded",
                extra={"actor": target.actor, "message_id": target.ledger_id, "bytes": len(content)},
            )
        return media_id

    return upload


def _pause_retry(context: Context) -> SendingPaused:
    """A Retry after the pause period that does not count as one of the message's retries."""
    return context.not_counted(SendingPaused(delay=context.settings.auth_pause_ms))


def paced(context: Context) -> bool:
    """Whether this run comes back for slots an earlier run reserved (and was deferred for): that
    run did what comes before sending (the read receipt)."""
    return HELD_SLOTS in context.options


def _wait_for_slot(context: Context, target: Target, recipient: str, index: int) -> bool:
    """Take the ``index``-th send's slots under the per-number and per-recipient limits: sleep for
    a near one, or hold a far one and have the message delayed to it (:class:`SendDeferred`, one
    requeue, not counted as a retry). A message that comes back passes the slots it holds. A
    deferred message leaves its user's order: the user's next message takes the slots after it.

    Returns False when this send needs no slot: an earlier run sent it before being deferred.
    """
    phone_number_id = target.phone_number_id
    held = context.options.get(HELD_SLOTS)
    held_index = int(held["index"]) if isinstance(held, dict) else -1
    if index < held_index:
        return False
    mine = dict(held["slots"]) if isinstance(held, dict) and index == held_index else {}
    # A thread sleeping for one user's slot is a thread no other message gets: it sleeps at most
    # about the delay queue's own lateness (its consumer's idle poll), else the message waits in
    # the delay queue, and comes back a little early to sleep the rest (sent on time, not late).
    bound = min(context.settings.worker_poll_ms, MAX_INLINE_WAIT_MS)
    slot = context.store.limiter.reserve(phone_number_id, recipient, pair_max_wait_ms=bound, held=mine)
    if slot.wait_ms > 0 and slot.limit not in mine:
        context.metrics.rate_limit_waits.labels(slot.limit).inc()
    if slot.complete and slot.wait_ms <= MAX_INLINE_WAIT_MS:
        context.options.pop(HELD_SLOTS, None)  # in use now: a failed send gives them back
        if slot.wait_ms > 0:
            time.sleep(slot.wait_ms / 1000)
        return True
    context.options[HELD_SLOTS] = {"index": index, "slots": dict(slot.slots)}
    if target.ordered and target.user:
        context.store.order.leave(phone_number_id, target.user, target.ledger_id)
    delay = slot.wait_ms - bound * 3 // 4
    retry = SendDeferred(f"its {slot.limit} slot is {slot.wait_ms} ms away", delay=delay)
    raise context.not_counted(retry)


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


def _not_sent(
    context: Context, target: Target, index: int, error: GraphError | GraphUnreachable | RequestInvalid
) -> BaseException:
    """What to raise for a send that surely did not happen: retried, paused or dead-lettered."""
    if isinstance(error, GraphUnreachable):
        return error
    if isinstance(error, RequestInvalid):
        return ItemRejected(str(error), message_id=target.ledger_id, index=index)
    if error.kind == "auth":
        _pause(context, target, error)
        return _pause_retry(context)
    if error.kind == "retry_later":
        delay = _throttle_delay_ms(context, error)
        if delay is not None:
            log.warning(
                "send_throttled",
                extra={
                    "actor": target.actor,
                    "message_id": target.ledger_id,
                    "code": error.code,
                    "delay_ms": delay,
                },
            )
            return dramatiq.Retry(str(error), delay=delay)
    if error.kind == "permanent":
        return GraphRejected(
            error.message,
            code=error.code,
            http_status=error.http_status,
            details=error.details,
            fbtrace_id=error.fbtrace_id,
            message_id=target.ledger_id,
        )
    return error


def _pause(context: Context, target: Target, error: GraphError) -> None:
    """Pause sending for the number: loud, counted, lifted by the next success."""
    context.store.pause.pause(target.phone_number_id, error.code)
    log.critical(
        "graph_token_refused_sending_paused",
        extra={
            "actor": target.actor,
            "phone_number_id": target.phone_number_id,
            "code": error.code,
            "fbtrace_id": error.fbtrace_id,
            "hint": "renew WHATSAPP_ACCESS_TOKEN; messages wait and resume by themselves",
        },
    )

"""reply: run the reply handler, mark the message read, send the replies at most once.

Queue ``wapipe``. Receives one :class:`~daemon.pipeline.MessageItem` (the inbound message object,
its ``phone_number_id`` and contact, ``received_at``). The handler (the README's default reply table, or ``WAPIPE_HANDLER``) returns the
outbound messages; none means "handled without reply" and no read receipt. Otherwise the message
is marked read (a failure is logged and does not stop the reply), then each outbound message is
sent from the envelope's own ``phone_number_id``.

Each outbound message is sent at most once, within the user's 24-hour window, under the rate
limits and the pause on a refused token, with Meta's errors handled as :mod:`actors.sending`
says (shared with ``send``). When the message is done, the reply ledger records how many
messages answered it (``0``: handled without reply), with the last send's mark, and the message
leaves its user's order: a user's messages reach the handler and are answered one at a time, in
order (:mod:`actors.ordering`; ``WAPIPE_USER_ORDER``). A handler that takes the conversation
decides once per message (its turn).

Worst case per message: ``WAPIPE_RETRY_MAX + 1`` runs (default 6), each up to
``WAPIPE_GRAPH_ATTEMPTS`` calls (default 3) 0.1–2 s apart, each given up after
``WAPIPE_GRAPH_TIMEOUT_SECONDS`` (10 s) of silence; the runs separated by back-offs of 1–2, 2–4,
4–8, 8–16, 16–32 s: about 3 minutes in all.
"""

from __future__ import annotations

import logging
import time

from actors import ordering, sending
from actors.context import Context
from actors.errors import ItemRejected
from actors.sending import Target
from daemon.bot import Bot
from daemon.conversation import Conversation, Entry
from daemon.graph import GraphError, GraphUnreachable, SendOutcomeUnknown
from daemon.handler import InboundMessage, Outbound, call_handler, inbound_text
from daemon.messages import text_of
from daemon.pipeline import REPLY, MessageItem, window_time
from daemon.store.ledger import Subject

log = logging.getLogger(__name__)

ACTOR_NAME = REPLY.name

RETRY_FOREVER = (*sending.RETRY_FOREVER, ordering.OrderWait)


def run(context: Context, item: MessageItem) -> None:
    message = InboundMessage.from_item(item)
    fields = {"actor": ACTOR_NAME, "message_id": message.id, "type": message.type}
    ledger = context.store.ledger
    ordered_for = message.user if context.ordered else None
    outbound, paused = _decide(context, message, item.received_at)
    context.journal.fields["replies"] = len(outbound)
    if not outbound:
        subject = Subject(message.phone_number_id, message.id, item.at, ordered_for)
        ledger.handled(subject, 0, journey=context.done(ACTOR_NAME, message.id))
        log.info("handled_without_reply", extra=fields)
        return
    recipient = _recipient(message)
    target = Target(
        message.phone_number_id,
        message.id,
        in_reply_to=message.id,
        actor=ACTOR_NAME,
        at=item.at,
        user=message.user,
        ordered=ordered_for is not None,
    )
    probing = sending.wait_if_paused(context, message.phone_number_id, paused)
    # Marked read already: "typing…" before the bot ran, or by the run that was deferred for its
    # rate-limit slot.
    if not _typing(context) and not sending.paced(context):
        _mark_read(context, message, fields)
    sending.send_all(context, target, recipient, outbound, _last_inbound(context, message, item.received_at))
    sending.resume_if_probing(context, target, probing)
    latency = time.time() - item.received_at
    context.metrics.reply_latency.observe(max(0.0, latency))
    log.info("replied", extra={**fields, "replies": len(outbound), "latency_ms": round(latency * 1000)})


def _decide(
    context: Context, message: InboundMessage, received_at: float
) -> tuple[list[Outbound], bool | None]:
    """The replies to ``message``, once the user's earlier messages ended (:mod:`actors.ordering`).
    A sync handler runs in this worker thread, an async one on the worker's event loop. A handler
    that takes the conversation gets it loaded from Redis, and its replies are committed with the
    conversation's changes as this message's turn, once: a run that finds the turn committed (a
    retry, a redelivery, a replay) sends those replies again through the ledger, without running
    the bot. When another message of the user committed meanwhile, the bot decides again from the
    new state (it may run more than once; only one decision is kept and sent). Also returns
    whether sending from the number was paused, when a stateless handler's order check read it
    (else None: the caller reads it)."""
    user = message.user
    if not context.conversational:
        paused = None
        if context.ordered and user:
            paused = ordering.wait_for_earlier(context, message.phone_number_id, user, message.id, ACTOR_NAME)
        return call_handler(context.handler, message, context.run_coroutine), paused
    conversations = context.store.conversations
    if not user:
        raise ItemRejected("inbound message has neither from nor from_user_id", message_id=message.id)
    decided = conversations.decided(message.phone_number_id, message.id)
    if decided is not None:
        log.info("turn_already_decided", extra={"actor": ACTOR_NAME, "message_id": message.id})
        return decided, None
    # The pause read with the order is not kept: a conversation bot may take seconds to decide.
    ordering.wait_for_earlier(context, message.phone_number_id, user, message.id, ACTOR_NAME)
    if _typing(context):
        _mark_read(context, message, {"actor": ACTOR_NAME, "message_id": message.id}, typing=True)
    inbound_at = window_time(message.timestamp, received_at)

    def decide(conversation: Conversation) -> tuple[list[Outbound], list[Entry]]:
        conversation.last_inbound_at = max(conversation.last_inbound_at or 0.0, inbound_at)
        outbound = call_handler(context.handler, message, context.run_coroutine, conversation)
        now = time.time()
        entries = [
            Entry("in", message.type, inbound_text(message), inbound_at or now, message.id),
            *(
                Entry("out", str(body.get("type")), text_of(body), now, answers=message.id, index=index)
                for index, body in enumerate(outbound)
            ),
        ]
        return outbound, entries

    outbound = ordering.commit_turn(
        context, message.phone_number_id, user, message.id, decide, inbound_at, ACTOR_NAME
    )
    return outbound, None


def _last_inbound(context: Context, message: InboundMessage, received_at: float) -> float:
    """When the user's 24-hour window opened, as Meta counts it: their last message's own
    ``timestamp`` (never later than its receipt: :func:`daemon.pipeline.window_time`) — this one,
    or a later one parse recorded (looked up only when this one's window has closed: a webhook
    Meta delivered late)."""
    last = window_time(message.timestamp, received_at)
    user = message.user
    if not sending.window_open(last) and user:
        stored = context.store.conversations.last_inbound(message.phone_number_id, user)
        if stored is not None:
            last = max(last, stored)
    return last


def _recipient(message: InboundMessage) -> dict[str, str]:
    if message.from_:
        return {"recipient_type": "individual", "to": "+" + message.from_}
    if message.from_user_id:
        return {"recipient_type": "individual", "recipient": message.from_user_id}
    raise ItemRejected("inbound message has neither from nor from_user_id", message_id=message.id)


def _typing(context: Context) -> bool:
    """Whether the bot asked for a "typing…" indicator while it decides."""
    return context.conversational and isinstance(context.handler, Bot) and context.handler.typing_indicator


def _mark_read(
    context: Context, message: InboundMessage, fields: dict[str, str], *, typing: bool = False
) -> None:
    try:
        context.graph.mark_read(message.phone_number_id, message.id, typing_indicator=typing)
    except (GraphError, GraphUnreachable, SendOutcomeUnknown) as error:
        log.warning("mark_read_failed", extra={**fields, "error": str(error)[:200]})

"""send: messages the business sends a user on its own initiative (``wapipe send``, ``POST /send``).

Queue ``wapipe``. Receives an :class:`~daemon.pipeline.Outgoing`: the business number, the user,
the message bodies and the caller's idempotency key (the edge already made sure a key is
enqueued once). They go out as replies do (:mod:`actors.sending`): each at most once under the
ledger subject ``send:<key>``, under the rate limits and the pause on a refused token, and only
inside the user's 24-hour window — counted from their last message parse recorded; a user who
never wrote, or not in the last 24 hours, gets the template given with a free-form message
(``wapipe_outside_window``) or nothing (refused, counted, logged). Retries: as for replies.

When the bot takes conversations, a send is part of the user's conversation
(:mod:`actors.ordering`): it takes its place in the user's order when it first runs, waits for
the user's earlier messages to end (up to ``WAPIPE_ORDER_WAIT_SECONDS``), and is committed as a
turn — its messages appended to the history the bot sees, once — before it is sent; the user's
later messages wait for it the same way, until it is sent.
"""

from __future__ import annotations

import logging
import time

from actors import ordering, sending
from actors.context import Context
from actors.sending import Target
from daemon.conversation import Conversation, Entry
from daemon.handler import Outbound
from daemon.messages import text_of
from daemon.pipeline import SEND, Outgoing

log = logging.getLogger(__name__)

RETRY_FOREVER = (*sending.RETRY_FOREVER, ordering.OrderWait)


def run(context: Context, outgoing: Outgoing) -> None:
    to = outgoing.to
    target = Target(
        outgoing.phone_number_id,
        outgoing.subject,
        in_reply_to=None,
        actor=SEND.name,
        at=outgoing.at,
        user=to,
        ordered=context.conversational,
    )
    wa_id = to.isascii() and to.isdigit()
    recipient = {"recipient_type": "individual", **({"to": "+" + to} if wa_id else {"recipient": to})}
    conversations = context.store.conversations
    conversations.note(outgoing.phone_number_id, to, subject=target.ledger_id)  # for `wapipe forget`
    context.journal.fields["phone_number_id"] = outgoing.phone_number_id
    context.journal.fields["messages"] = len(outgoing.messages)
    context.journal.fields["record_at"] = outgoing.at
    messages = list(outgoing.messages)
    if context.conversational:
        messages = _in_conversation(context, outgoing)
    # Read after waiting its turn: the user's message decided meanwhile may have opened the window.
    last_inbound = conversations.last_inbound(outgoing.phone_number_id, to)
    probing = sending.wait_if_paused(context, outgoing.phone_number_id)
    # No record of the user writing: the window is closed (only templates go out).
    sending.send_all(context, target, recipient, messages, last_inbound or 0.0)
    sending.resume_if_probing(context, target, probing)
    log.info("sent", extra={"actor": SEND.name, "key": outgoing.key, "messages": len(outgoing.messages)})


def _in_conversation(context: Context, outgoing: Outgoing) -> list[Outbound]:
    """Take the send's place in the user's conversation, after their earlier messages, and record
    its messages in the history, once (a retry finds them recorded and sends them as they are)."""
    conversations = context.store.conversations
    number, user, subject = outgoing.phone_number_id, outgoing.to, outgoing.subject
    decided = conversations.decided(number, subject)
    if decided is not None:
        return decided
    context.store.order.enter(number, user, subject, time.time())
    ordering.wait_for_earlier(context, number, user, subject, SEND.name)

    def decide(conversation: Conversation) -> tuple[list[Outbound], list[Entry]]:
        now = time.time()
        bodies = list(outgoing.messages)
        return bodies, [
            Entry("out", str(body.get("type")), text_of(body), now, answers=subject, index=index)
            for index, body in enumerate(bodies)
        ]

    return ordering.commit_turn(context, number, user, subject, decide, None, SEND.name)

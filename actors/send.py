"""send: messages the business sends a user on its own initiative (``wapipe send``, ``POST /send``).

Queue ``wapipe``. Receives an :class:`~daemon.pipeline.Outgoing`: the business number, the user,
the message bodies and the caller's idempotency key (the edge already made sure a key is
enqueued once). They go out as replies do (:mod:`actors.sending`): each at most once under the
ledger subject ``send:<key>``, under the rate limits and the pause on a refused token, and only
inside the user's 24-hour window — counted from their last message parse recorded; a user who
never wrote, or not in the last 24 hours, gets the template given with a free-form message
(``wapipe_outside_window``) or nothing (refused, counted, logged). Retries: as for replies.
"""

from __future__ import annotations

import logging

from actors import sending
from actors.context import Context
from actors.sending import Target
from daemon.pipeline import SEND, Outgoing

log = logging.getLogger(__name__)

RETRY_FOREVER = sending.RETRY_FOREVER


def run(context: Context, outgoing: Outgoing) -> None:
    to = outgoing.to
    target = Target(outgoing.phone_number_id, outgoing.subject, in_reply_to=None, actor=SEND.name, user=to)
    recipient = {"recipient_type": "individual", **({"to": "+" + to} if to.isdigit() else {"recipient": to})}
    conversations = context.store.conversations
    conversations.note(outgoing.phone_number_id, to, subject=target.ledger_id)  # for `wapipe forget`
    last_inbound = conversations.last_inbound(outgoing.phone_number_id, to)
    context.journal["messages"] = len(outgoing.messages)
    probing = sending.wait_if_paused(context, outgoing.phone_number_id)
    # No record of the user writing: the window is closed (only templates go out).
    sending.send_all(context, target, recipient, list(outgoing.messages), last_inbound or 0.0)
    sending.resume_if_probing(context, target, probing)
    log.info("sent", extra={"actor": SEND.name, "key": outgoing.key, "messages": len(outgoing.messages)})

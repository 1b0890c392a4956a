"""One conversation at a time: what ``reply`` and ``send`` share when the bot takes conversations.

A user's messages, and the business's sends to them, reach the conversation one at a time in the
order they took their places (parse gives an inbound message its place; ``send`` takes one when
it first runs). :func:`wait_for_earlier` holds one back while an earlier one, younger than
``WAPIPE_ORDER_WAIT_SECONDS``, is not decided; :func:`commit_turn` records what was decided for
it — the replies, or the business's messages — with the conversation's changes and history, once,
which also takes it out of the order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import dramatiq

from actors.context import Context
from actors.errors import ConversationBusy, ItemRejected
from daemon.conversation import Conversation, Entry
from daemon.handler import Outbound
from daemon.store.conversations import ConversationChanged, StateTooLarge

log = logging.getLogger(__name__)

#: Decisions made in a row for one message before it is retried later (another message of the
#: same user committed between loading the conversation and committing this one's turn).
DECIDE_ATTEMPTS = 5
#: How often a message waiting for an earlier one looks again, while it waits in the thread.
ORDER_POLL_SECONDS = 0.05
#: The longest a message waits in the thread for an earlier one before going back to the queue.
MAX_INLINE_WAIT_MS = 2_000

#: What a turn is: given the conversation as loaded, the messages to send and the history entries.
Decide = Callable[[Conversation], tuple[Sequence[Outbound], Sequence[Entry]]]


class OrderWait(dramatiq.Retry):
    """An earlier message of the same conversation is not decided yet: come back shortly."""


def wait_for_earlier(context: Context, phone_number_id: str, user: str, subject: str, actor: str) -> None:
    """Hold ``subject`` while an earlier message of its conversation is undecided (at most
    ``WAPIPE_ORDER_WAIT_SECONDS`` after that one took its place): briefly in this thread, then
    back in the queue without using up a retry."""
    bound_ms = int(context.settings.order_wait_seconds * 1000)
    deadline = time.monotonic() + MAX_INLINE_WAIT_MS / 1000
    counted = False
    while True:
        now_ms = int(time.time() * 1000)
        wait = context.store.conversations.wait_ms(phone_number_id, user, subject, now_ms, bound_ms)
        if wait <= 0:
            return
        if not counted:
            context.metrics.ordering_waits.inc()
            log.info("ordering_wait", extra={"actor": actor, "message_id": subject, "wait_ms": wait})
            counted = True
        if time.monotonic() + ORDER_POLL_SECONDS >= deadline:
            raise context.not_counted(OrderWait(delay=min(wait, 1_000)))
        time.sleep(ORDER_POLL_SECONDS)


def commit_turn(
    context: Context,
    phone_number_id: str,
    user: str,
    subject: str,
    decide: Decide,
    inbound_at: float | None,
    actor: str,
) -> list[Outbound]:
    """Decide ``subject``'s turn on the conversation as it is and commit it, once; when another
    turn of the user committed meanwhile, decide again from the new state. Returns what to send."""
    conversations = context.store.conversations
    for attempt in range(DECIDE_ATTEMPTS):
        conversation = conversations.load(phone_number_id, user)
        outbound, entries = decide(conversation)
        try:
            return conversations.commit(conversation, subject, outbound, entries, inbound_at).outbound
        except TypeError as error:  # json.dumps: the bot put something that is not JSON in it
            raise ItemRejected(
                f"the conversation cannot be stored: {error}"[:300], message_id=subject
            ) from None
        except StateTooLarge as error:  # the previous state stays: nothing was committed
            raise ItemRejected(f"the conversation cannot be stored: {error}", message_id=subject) from None
        except ConversationChanged:
            log.info(
                "conversation_changed", extra={"actor": actor, "message_id": subject, "attempt": attempt}
            )
    raise ConversationBusy(f"the conversation kept changing during {DECIDE_ATTEMPTS} decisions")

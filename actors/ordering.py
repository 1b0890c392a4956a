"""One message of a user at a time: what ``reply`` and ``send`` share.

A user's messages reach the handler, and are answered, one at a time in the order they took their
places (:mod:`daemon.store.order`: parse gives an inbound message its place; a business send to a
conversation bot's user takes one when it first runs). :func:`wait_for_earlier` holds one back
while an earlier one has not ended (answered, dead-lettered, or deferred to a rate-limit slot it
holds), for at most ``WAPIPE_ORDER_WAIT_SECONDS``. When the bot takes conversations,
:func:`commit_turn` records what was decided for a message — the replies, or the business's
messages — with the conversation's changes and history, once.
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
#: How often a message waiting in its thread for the running one before it looks again: first soon
#: (that one is most often being sent, a few milliseconds), then up to every 10 ms (one message of a
#: user waits so at a time: the others wait in the queue).
FIRST_POLL_SECONDS = 0.002
MAX_POLL_SECONDS = 0.01
#: The longest a message waits in the thread for an earlier one before going back to the queue.
MAX_INLINE_WAIT_MS = 2_000
#: How long a message waits in the queue for an earlier one that is not running yet (queued,
#: downloading, waiting for a retry) — a thread waiting for it could be the thread it needs: at
#: least this, and :data:`AHEAD_DELAY_MS` per message ahead of it (about what a user's message
#: takes when their messages are answered one after the other), so that a message far back in a
#: flood of one user comes back about when its turn is near, not once a second.
QUEUED_DELAY_MS = 50
AHEAD_DELAY_MS = 15
#: The message option holding when it started waiting for an earlier one (Unix seconds), so that
#: its requeues count towards the bound.
WAITING_SINCE = "wapipe_order_since"

#: What a turn is: given the conversation as loaded, the messages to send and the history entries.
Decide = Callable[[Conversation], tuple[Sequence[Outbound], Sequence[Entry]]]


class OrderWait(dramatiq.Retry):
    """An earlier message of the same user has not ended yet: come back shortly."""


def wait_for_earlier(context: Context, phone_number_id: str, user: str, subject: str, actor: str) -> bool:
    """Hold ``subject`` while an earlier message of its user has not ended, for at most
    ``WAPIPE_ORDER_WAIT_SECONDS`` in all (counted in the message's options across its requeues;
    then the earlier ones lose their place): in this thread while the one just before it is
    running and nothing else is ahead, else back in the queue without using up a retry. Returns
    whether sending from the number was paused when it went (read in the same call)."""
    bound_ms = int(context.settings.order_wait_seconds * 1000)
    deadline = time.monotonic() + MAX_INLINE_WAIT_MS / 1000
    poll = FIRST_POLL_SECONDS
    since = context.options.get(WAITING_SINCE)
    counted = isinstance(since, (int, float))
    started = float(since) if isinstance(since, (int, float)) else time.time()
    mark = (phone_number_id, user, subject)
    order = context.store.order
    while True:
        waited_ms = max(0, int((time.time() - started) * 1000))
        wait = order.wait(phone_number_id, user, subject, waited_ms, bound_ms)
        if wait.dropped:
            context.metrics.ordering_dropped.inc(wait.dropped)
            log.warning(
                "ordering_gave_up",
                extra={
                    "actor": actor,
                    "message_id": subject,
                    "dropped": wait.dropped,
                    "waited_ms": waited_ms,
                },
            )
        if (wait.left_ms <= 0 or wait.running) and mark not in context.running:
            context.running.append(mark)
        if wait.left_ms <= 0:
            context.options.pop(WAITING_SINCE, None)
            return wait.paused
        if not counted:
            context.metrics.ordering_waits.inc()
            log.info("ordering_wait", extra={"actor": actor, "message_id": subject, "wait_ms": wait.left_ms})
            counted = True
        if not (wait.running and wait.ahead == 1):  # queued, downloading, retried, or further back
            context.options[WAITING_SINCE] = started
            delay = max(QUEUED_DELAY_MS, AHEAD_DELAY_MS * wait.ahead)
            raise context.not_counted(OrderWait(delay=min(wait.left_ms, delay)))
        if time.monotonic() + poll >= deadline:
            context.options[WAITING_SINCE] = started
            raise context.not_counted(OrderWait(delay=min(wait.left_ms, 1_000)))
        time.sleep(min(poll, wait.left_ms / 1000))
        poll = min(poll * 2, MAX_POLL_SECONDS)


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

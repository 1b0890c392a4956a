"""Each user's order: their messages reach the handler, and are answered, one at a time.

A user's order is a sorted set (:func:`daemon.store.keys.order`) of the ids of their messages that
have not ended, scored by their place: the time their webhook was received (µs) plus their
position among the user's messages of that webhook (Meta's timestamps order them), so that the
webhooks' order holds whichever parse runs first. Parse gives every fresh inbound message its place
in the envelope's one script (``claim.lua``); a business send to a conversation bot's user takes
one, the time it first ran, when it first runs (:meth:`Order.enter`).

A message **ends**, and leaves the order, with its last ledger write (its replies sent or refused,
or handled without reply: ``record.lua``), when it is dead-lettered (at once or after its retries),
and when its send is deferred to a rate-limit slot it holds (the user's next message reserves the
slot after it, so the answers still go out in order, but for a reply of several messages, whose
later ones reserve after the next message's). Until then it holds the user's later
messages back, but a message waits at most ``WAPIPE_ORDER_WAIT_SECONDS``: then the earlier ones
lose their place (stuck in a slow download, a retry's back-off, lost), so
that no later message waits for them again (``order_wait.lua``). The set exists only while a
message of the user is in it.

A message past its wait is marked **running** (a hash beside the set, :func:`keys.order_running`)
until it ends or fails (then it waits for its retry): the next message waits in its thread only
for a running one, which ends within milliseconds most often; for one that is queued, downloading
or waiting for a retry it goes back to the queue, so that waiting messages never hold the threads
the earlier ones need.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from daemon.store import keys, scripts

#: An order outlives any bound on waiting in it (a message that never ends leaves with the set).
ORDER_TTL_SECONDS = 86_400


@dataclass(frozen=True, slots=True)
class Wait:
    """What :meth:`Order.wait` found."""

    #: The most the message must still wait (ms); 0: it goes (and is marked running).
    left_ms: int
    #: How many earlier messages lost their place, the message having waited the bound for them.
    dropped: int = 0
    #: How many earlier messages of the user are in the order (when it must wait).
    ahead: int = 0
    #: Whether the one just before it is running now (it should end soon: worth waiting for in the
    #: thread); else it is queued, downloading or waiting for a retry, and a thread waiting for it
    #: would be a thread it may need.
    running: bool = False
    #: Whether sending from the business number is paused (read in the same call).
    paused: bool = False


class Order:
    """The users' orders on one Redis client (one worker thread's)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._wait = scripts.register(client, "order_wait")
        self._enter = scripts.register(client, "order_enter")

    def enter(self, phone_number_id: str, user: str, message_id: str, now: float) -> None:
        """Give ``message_id`` (a business send) its place in the user's order at ``now`` (Unix
        seconds), unless it has one: it goes after the webhooks received before, and holds back
        what comes after it."""
        place = int(now * 1_000_000)
        self._enter(keys=[keys.order(phone_number_id, user)], args=[message_id, place, ORDER_TTL_SECONDS])

    def wait(self, phone_number_id: str, user: str, message_id: str, waited_ms: int, bound_ms: int) -> Wait:
        """Whether ``message_id``, which has waited ``waited_ms`` already, must still wait for the
        user's earlier messages: while one has not ended, up to ``bound_ms`` in all; then every
        earlier one loses its place. One that goes, or waits for a running one (in its thread), is
        marked running. Also says whether sending from the number is paused, which the caller would
        ask next (a round trip less)."""
        names = (
            keys.order(phone_number_id, user),
            keys.order_running(phone_number_id, user),
            keys.paused(phone_number_id),
        )
        values = (message_id, waited_ms, bound_ms, ORDER_TTL_SECONDS)
        left, dropped, ahead, running, paused = scripts.call(self._client, self._wait, names, values)
        return Wait(int(left), int(dropped), int(ahead), bool(running), bool(paused))

    def stopped(self, phone_number_id: str, user: str, message_id: str) -> None:
        """``message_id`` is no longer running but has not ended (it waits for a retry): it keeps
        its place, and the user's next message no longer waits for it in a thread."""
        self._client.hdel(keys.order_running(phone_number_id, user), message_id)

    def leave(self, phone_number_id: str, user: str, message_id: str) -> None:
        """``message_id`` ended without a last ledger write (dead-lettered, or deferred to a slot it
        holds): the user's next message may go."""
        leave(self._client, phone_number_id, user, message_id)


def leave(client: redis.Redis, phone_number_id: str, user: str, message_id: str) -> None:
    """Take ``message_id`` out of its user's order, on any client (the dead-letter recorder's)."""
    with client.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.order(phone_number_id, user), message_id)
        pipe.hdel(keys.order_running(phone_number_id, user), message_id)
        pipe.execute()

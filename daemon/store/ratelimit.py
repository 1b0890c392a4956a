"""Outbound rate limits shared by every worker, in Redis (docs/whatsapp.md, *Limits*).

- per business number: ``WAPIPE_SEND_RATE`` sends per second (Meta's default tier is 80; over it
  Meta answers 130429);
- per business number × recipient (the "pair" limit): one message per 6 s on average, with a small
  burst, as Meta allows bursts that borrow future quota (over it Meta answers 131056).

Both use GCRA (the generic cell rate algorithm) in one Lua script (``reserve.lua``) on Redis's own
clock, so every worker on every host shares one schedule. A caller *reserves* a slot on each limit
and is told how long to wait for it. A reserved slot is the caller's, however far away it is: the
schedule moves on by one interval for it, so the next caller gets the slot after it, and a caller
deferred to its slot finds it waiting when it comes back (it passes the slots it holds, which are
kept as they are). The pair limit is reserved first, and the per-number slot only once the pair
slot is near: a message waiting minutes for its recipient never holds the number's schedule, which
every other recipient shares. A short wait is slept, a long one is spent in Dramatiq's delay queue
(:mod:`actors.sending`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis

from daemon.store import keys, scripts

#: A wait bound no wait reaches (µs: about 142 years).
NO_BOUND_US = 2**52


@dataclass(frozen=True, slots=True)
class Reservation:
    """The slots one send holds, how long until the send may go, and which limit imposed the wait.

    When ``complete`` is False the first limits' wait was longer than the caller's bound for them:
    their slots are held (``slots``), the later limits' are not reserved yet; the caller comes
    back after ``wait_ms`` with ``slots`` and reserves the rest then.
    """

    #: Until the send may go (from now).
    wait_ms: int
    #: The limit whose slot is the latest ("" when there is no wait).
    limit: str
    #: The slot held on each limit, in µs on Redis's clock, by limit name.
    slots: Mapping[str, int]
    #: Every limit's slot is held.
    complete: bool


class SendLimiter:
    """Reserve send slots per business number and per recipient.

    Args:
        client: a (thread-safe) redis-py client owned by the caller.
        per_number_rate: sends per second per business number; 0 disables that limit.
        pair_interval_ms: average spacing of messages to one recipient; 0 disables that limit.
        pair_burst: messages to one recipient allowed back to back.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        per_number_rate: int,
        pair_interval_ms: int,
        pair_burst: int,
    ) -> None:
        self._script = scripts.register(client, "reserve")
        self._release = scripts.register(client, "release")
        self.per_number_rate = per_number_rate
        self.pair_interval_ms = pair_interval_ms
        self.pair_burst = pair_burst

    def reserve(
        self,
        phone_number_id: str,
        recipient: str,
        *,
        pair_max_wait_ms: int | None = None,
        held: Mapping[str, int] | None = None,
    ) -> Reservation:
        """Reserve a slot for one send on every limit it does not already hold (``held``: the
        slots a :class:`Reservation` gave before). When the pair slot is more than
        ``pair_max_wait_ms`` away (None: no bound), only that one is reserved now."""
        limiters, args, names = self._limits(phone_number_id, recipient)
        if not limiters:
            return Reservation(0, "", {}, complete=True)
        held = held or {}
        argv: list[int] = []
        for index, name in enumerate(names):
            bound = pair_max_wait_ms if name == "pair" else None
            argv += [*args[2 * index : 2 * index + 2], int(held.get(name, 0))]
            argv.append(NO_BOUND_US if bound is None else bound * 1000)
        wait_us, by, *slots = self._script(keys=limiters, args=argv)
        wait_ms = -(-int(wait_us) // 1000)
        limit = names[int(by) - 1] if int(by) > 0 and wait_ms > 0 else ""
        taken = {name: int(slot) for name, slot in zip(names, slots, strict=True) if int(slot) > 0}
        return Reservation(wait_ms, limit, taken, complete=len(taken) == len(names))

    def release(self, phone_number_id: str, recipient: str) -> None:
        """Give back the slots of a send that surely did not happen (refused, unreachable,
        already sent): the schedule moves back one interval on each limit."""
        limiters, args, _ = self._limits(phone_number_id, recipient)
        if limiters:
            self._release(keys=limiters, args=args[0::2])

    def _limits(self, phone_number_id: str, recipient: str) -> tuple[list[str], list[int], list[str]]:
        """The limiter keys, their (interval µs, burst) pairs and names, for one send, in the
        order they are reserved: the pair limit first."""
        limiters: list[str] = []
        args: list[int] = []
        names: list[str] = []
        if self.pair_interval_ms > 0:
            limiters.append(keys.rate_pair(phone_number_id, recipient))
            args += [self.pair_interval_ms * 1000, max(0, self.pair_burst - 1)]
            names.append("pair")
        if self.per_number_rate > 0:
            # Evenly spaced, no burst: never over the rate in any window (up to clock jitter).
            limiters.append(keys.rate_number(phone_number_id))
            args += [-(-1_000_000 // self.per_number_rate), 0]
            names.append("per_number")
        return limiters, args, names


class SendPause:
    """Sending paused per business number after Meta refused its access token (190, 0).

    While paused, one message per ``period_ms`` probes the Graph API; its success resumes sending.
    """

    def __init__(self, client: redis.Redis, period_ms: int) -> None:
        self._client = client
        self.period_ms = period_ms

    def paused(self, phone_number_id: str) -> bool:
        return bool(self._client.exists(keys.paused(phone_number_id)))

    def take_probe(self, phone_number_id: str) -> bool:
        """True for the one caller per period that may try a send while paused."""
        return bool(self._client.set(keys.probe(phone_number_id), "1", nx=True, px=self.period_ms))

    def pause(self, phone_number_id: str, code: object) -> None:
        self._client.set(keys.paused(phone_number_id), str(code), ex=86_400)

    def resume(self, phone_number_id: str) -> bool:
        """Lift the pause; True when it was paused."""
        return bool(self._client.delete(keys.paused(phone_number_id)))

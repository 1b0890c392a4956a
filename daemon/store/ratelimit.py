"""Outbound rate limits shared by every worker, in Redis (docs/whatsapp.md, *Limits*).

- per business number: ``WAPIPE_SEND_RATE`` sends per second (Meta's default tier is 80; over it
  Meta answers 130429);
- per business number × recipient (the "pair" limit): one message per 6 s on average, with a small
  burst, as Meta allows bursts that borrow future quota (over it Meta answers 131056).

Both use GCRA (the generic cell rate algorithm) in one Lua script (``reserve.lua``) on Redis's own clock, so every
worker on every host shares one schedule. A caller *reserves* the next slot and is told how long
to wait for it; a short wait is slept, a long one goes back to the queue (``dramatiq.Retry``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from daemon.store import keys, scripts


@dataclass(frozen=True, slots=True)
class Reservation:
    """How long to wait, which limit imposed it ("" when none), and whether the slot is held.

    When ``reserved`` is False the wait was longer than the caller would sleep: nothing was taken,
    and the caller should come back after ``wait_ms``.
    """

    wait_ms: int
    limit: str
    reserved: bool


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

    def reserve(self, phone_number_id: str, recipient: str, *, max_wait_ms: int) -> Reservation:
        """Reserve the next slot for one send if it comes within ``max_wait_ms``."""
        limiters, args, names = self._limits(phone_number_id, recipient)
        if not limiters:
            return Reservation(0, "", reserved=True)
        wait_us, by, reserved = self._script(keys=limiters, args=[max_wait_ms * 1000, *args])
        wait_ms = -(-int(wait_us) // 1000)
        limit = names[int(by) - 1] if int(by) > 0 and wait_ms > 0 else ""
        return Reservation(wait_ms, limit, reserved=bool(int(reserved)))

    def release(self, phone_number_id: str, recipient: str) -> None:
        """Give back a reserved slot whose send surely did not happen (refused, unreachable)."""
        limiters, args, _ = self._limits(phone_number_id, recipient)
        if limiters:
            self._release(keys=limiters, args=args[0::2])

    def _limits(self, phone_number_id: str, recipient: str) -> tuple[list[str], list[int], list[str]]:
        """The limiter keys, their (interval µs, burst) pairs and names, for one send."""
        limiters: list[str] = []
        args: list[int] = []
        names: list[str] = []
        if self.per_number_rate > 0:
            # Evenly spaced, no burst: never over the rate in any window (up to clock jitter).
            limiters.append(keys.rate_number(phone_number_id))
            args += [-(-1_000_000 // self.per_number_rate), 0]
            names.append("per_number")
        if self.pair_interval_ms > 0:
            limiters.append(keys.rate_pair(phone_number_id, recipient))
            args += [self.pair_interval_ms * 1000, max(0, self.pair_burst - 1)]
            names.append("pair")
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

"""Outbound rate limits shared by every worker, in Redis (docs/whatsapp.md, *Limits*).

- per business number: ``WAPIPE_SEND_RATE`` sends per second (Meta's default tier is 80; over it
  Meta answers 130429);
- per business number × recipient (the "pair" limit): one message per 6 s on average, with a small
  burst, as Meta allows bursts that borrow future quota (over it Meta answers 131056).

Both use GCRA (the generic cell rate algorithm) in one Lua script on Redis's own clock, so every
worker on every host shares one schedule. A caller *reserves* the next slot and is told how long
to wait for it; a short wait is slept, a long one goes back to the queue (``dramatiq.Retry``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

#: KEYS: the limiter keys. ARGV: the longest wait worth reserving (µs), then per key its interval
#: (µs) and burst (slots allowed ahead of time). Reserves one slot on every key at the same
#: instant, unless the wait is longer than allowed, and returns
#: {wait in µs, 1-based index of the key that imposed it (0: none), 1 if reserved else 0}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait, by = 0, 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local this_wait = tat - interval * burst - now
  if this_wait > wait then wait, by = this_wait, i end
end
if wait > tonumber(ARGV[1]) then return {wait, by, 0} end
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now + wait)
  redis.call('SET', key, string.format('%d', tat + interval), 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
end
return {wait, by, 1}
"""

#: Give a slot back (a send that did not happen). KEYS: the limiter keys. ARGV: their intervals (µs).
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat > now then
    redis.call('SET', key, string.format('%d', math.max(now, tat - tonumber(ARGV[i]))), 'KEEPTTL')
  end
end
return 1
"""

#: Meta's pair limit: one message per 6 s to the same user, on average.
PAIR_INTERVAL_MS = 6000
#: Messages to one user that may go out back to back before the 6 s spacing applies (Meta allows 45).
PAIR_BURST = 20


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
        pair_interval_ms: int = PAIR_INTERVAL_MS,
        pair_burst: int = PAIR_BURST,
    ) -> None:
        self._script = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)
        self.per_number_rate = per_number_rate
        self.pair_interval_ms = pair_interval_ms
        self.pair_burst = pair_burst

    def reserve(self, phone_number_id: str, recipient: str, *, max_wait_ms: int) -> Reservation:
        """Reserve the next slot for one send if it comes within ``max_wait_ms``."""
        keys, args, names = self._limits(phone_number_id, recipient)
        if not keys:
            return Reservation(0, "", reserved=True)
        wait_us, by, reserved = self._script(keys=keys, args=[max_wait_ms * 1000, *args])
        wait_ms = -(-int(wait_us) // 1000)
        limit = names[int(by) - 1] if int(by) > 0 and wait_ms > 0 else ""
        return Reservation(wait_ms, limit, reserved=bool(int(reserved)))

    def release(self, phone_number_id: str, recipient: str) -> None:
        """Give back a reserved slot whose send surely did not happen (refused, unreachable)."""
        keys, args, _ = self._limits(phone_number_id, recipient)
        if keys:
            self._release(keys=keys, args=args[0::2])

    def _limits(self, phone_number_id: str, recipient: str) -> tuple[list[str], list[int], list[str]]:
        """The limiter keys, their (interval µs, burst) pairs and names, for one send."""
        keys: list[str] = []
        args: list[int] = []
        names: list[str] = []
        if self.per_number_rate > 0:
            # Evenly spaced, no burst: never over the rate in any window (up to clock jitter).
            keys.append(f"wapipe:rate:number:{phone_number_id}")
            args += [-(-1_000_000 // self.per_number_rate), 0]
            names.append("per_number")
        if self.pair_interval_ms > 0:
            keys.append(f"wapipe:rate:pair:{phone_number_id}:{recipient}")
            args += [self.pair_interval_ms * 1000, max(0, self.pair_burst - 1)]
            names.append("pair")
        return keys, args, names

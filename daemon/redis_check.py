"""Start-up checks of the Redis a worker uses: is it reachable, does it keep what it acknowledges?"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Persistence:
    aof: bool
    snapshots: bool | None  # None: the server would not say (CONFIG disabled)


def persistence(client: redis.Redis) -> Persistence:
    """Read AOF and snapshot settings, falling back to INFO where CONFIG is disabled."""
    try:
        appendonly = client.config_get("appendonly").get("appendonly", "no")
        save = client.config_get("save").get("save", "")
        return Persistence(aof=str(appendonly).lower() == "yes", snapshots=bool(str(save).strip()))
    except redis.ResponseError:
        info = client.info("persistence")
        return Persistence(aof=bool(int(info.get("aof_enabled", 0))), snapshots=None)


class VolatileRedis(Exception):
    """Redis keeps neither an AOF nor snapshots: an acknowledged webhook would not survive a restart."""


def check_persistence(client: redis.Redis, *, allow_volatile: bool) -> Persistence:
    """Refuse a Redis with no persistence (unless allowed); warn about snapshots only.

    Raises:
        VolatileRedis: neither AOF nor snapshots, and ``allow_volatile`` is False.
    """
    found = persistence(client)
    if found.aof:
        return found
    if found.snapshots is False:
        if not allow_volatile:
            raise VolatileRedis(
                "Redis has neither AOF nor snapshots: webhooks acknowledged with 200 would be lost on a "
                "restart. Turn on appendonly, or set WAPIPE_ALLOW_VOLATILE_REDIS=1 to accept that."
            )
        log.warning("redis_volatile_allowed")
    else:
        log.warning(
            "redis_snapshots_only",
            extra={"hint": "without AOF a Redis crash loses what was acknowledged since the last snapshot"},
        )
    return found

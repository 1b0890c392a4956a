"""The message records: what must be remembered of each message for its window, in ~30 bytes.

For every inbound message (and business send, ``send:<key>``) wapipe must remember, as long as
Meta may deliver it again and an operator may replay it: which parse attempt claimed it (dedup), the
state of each message sent in answer (the reply ledger: at most once), and whether it is done (how
many messages answered it). A key per fact costs Redis ~100 bytes of bookkeeping each; instead,
each message has one *record* — an 8-byte digest of its number and id, mapped to a few characters —
in a small hash chosen by the message's own time:

- the bucket: ``floor(time / 600)``, ``time`` being Meta's ``timestamp`` of the message (the same
  in every redelivery of it) or a business send's request time;
- the shard: the digest's first 4 bytes modulo the bucket's shard count, which the bucket gets
  with its first record, from the previous bucket's number of records, so that each shard holds
  about 48 records (Redis keeps such a hash in its compact encoding: ~25 bytes a record);
- the record: ``<owner>|<handled>|<states>`` (see ``lua/records.lua``).

A bucket's keys expire the record TTL (the dedup window plus a day) after the later of the bucket's
end and its last new record. Records hold no content and no user number; ``wapipe forget`` leaves
them, as they are what keeps a redelivered message from being answered again.

Every write is made in a Lua script prefixed with ``lua/records.lua``; :func:`read` is the one
reader in Python (``wapipe trace``, ``wapipe simulate``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from daemon.store import keys

#: Records outlive the message dedup window by a day (the reply ledger's lifetime).
EXTRA_SECONDS = 86_400
#: A bucket covers this many seconds of messages (``REC_BUCKET_SECONDS`` in ``lua/records.lua``).
BUCKET_SECONDS = 600
#: What each state character means (``lua/records.lua``).
STATES = {"s": "sending", "S": "sent", "R": "refused", ".": None}


def digest(phone_number_id: str, subject: str) -> bytes:
    """The record's field: 8 bytes of BLAKE2b of the number and the subject."""
    return hashlib.blake2b(f"{phone_number_id}\n{subject}".encode(), digest_size=8).digest()


@dataclass(frozen=True, slots=True)
class Record:
    """One message's record."""

    #: The tag of the parse attempt that claimed it ('' for none: a business send, a replay).
    owner: str
    #: How many messages answered it, once it is done; None before.
    handled: int | None
    #: The state of each message sent in answer, by index: "sending", "sent", "refused" or None.
    states: tuple[str | None, ...]


def read(client: redis.Redis, phone_number_id: str, subject: str, at: int) -> Record | None:
    """The record of ``subject`` (whose time is ``at``), or None when there is none."""
    bucket, field = at // BUCKET_SECONDS, digest(phone_number_id, subject)
    shards = client.hget(keys.record_bucket(bucket), "s")
    if shards is None:
        return None
    return parsed(client.hget(_shard(bucket, field, shards), field))


async def read_async(client: aioredis.Redis, phone_number_id: str, subject: str, at: int) -> Record | None:
    """:func:`read` through ``redis.asyncio`` (``wapipe simulate``)."""
    bucket, field = at // BUCKET_SECONDS, digest(phone_number_id, subject)
    shards = await client.hget(keys.record_bucket(bucket), "s")
    if shards is None:
        return None
    return parsed(await client.hget(_shard(bucket, field, shards), field))


def _shard(bucket: int, field: bytes, shards: bytes | str) -> str:
    return keys.record_shard(bucket, int.from_bytes(field[:4], "big") % int(shards))


def parsed(value: bytes | str | None) -> Record | None:
    """A record from its stored value (None for none)."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else value
    owner, handled, states = text.split("|", 2)
    return Record(owner, int(handled) if handled else None, tuple(STATES[c] for c in states))

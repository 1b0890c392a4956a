"""The state store: everything wapipe keeps in Redis (and its media files on disk).

One module per concern, every key layout in :mod:`daemon.store.keys`, every Lua script in
``lua/`` (:mod:`daemon.store.scripts`):

- :mod:`~daemon.store.queues`: the pipeline's queues (Dramatiq's format) and their figures;
- :mod:`~daemon.store.dedup`: seen marks, and parse's one write per envelope;
- :mod:`~daemon.store.statuses`: delivery statuses, kept monotonic;
- :mod:`~daemon.store.ledger`: the reply ledger (at most one send per outbound message);
- :mod:`~daemon.store.conversations`: conversations and the turn of each inbound message;
- :mod:`~daemon.store.order`: each user's messages one at a time, in order;
- :mod:`~daemon.store.ratelimit`: outbound rate limits and the pause on a refused token;
- :mod:`~daemon.store.deadletters`: dead letters, their reasons, replay and retention;
- :mod:`~daemon.store.media`: inbound media files;
- :mod:`~daemon.store.uploads`: the media ids of files the business uploaded;
- :mod:`~daemon.store.journeys`: each message's way through the pipeline (``wapipe trace``).

:class:`Store` is what a stage uses: these, on the calling thread's own Redis connection.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from daemon.config import Settings
from daemon.store.conversations import Conversations
from daemon.store.journeys import Journeys
from daemon.store.ledger import ReplyLedger
from daemon.store.order import Order
from daemon.store.queues import Queue
from daemon.store.ratelimit import SendLimiter, SendPause
from daemon.store.uploads import Uploads


@dataclass(frozen=True, slots=True)
class Store:
    """The state store on one Redis client (one worker thread's)."""

    client: redis.Redis
    queue: Queue
    ledger: ReplyLedger
    limiter: SendLimiter
    pause: SendPause
    conversations: Conversations
    order: Order
    uploads: Uploads
    journeys: Journeys

    @classmethod
    def on(cls, client: redis.Redis, settings: Settings) -> Store:
        traced = settings.trace_retention_hours * 3600
        ledger = ReplyLedger(client, settings.message_dedup_ttl_seconds, traced)
        return cls(
            client=client,
            queue=Queue(client),
            ledger=ledger,
            limiter=SendLimiter(
                client,
                per_number_rate=settings.send_rate,
                pair_interval_ms=settings.pair_interval_ms,
                pair_burst=settings.pair_burst,
            ),
            pause=SendPause(client, settings.auth_pause_ms),
            conversations=Conversations(
                client,
                history_messages=settings.history_messages,
                history_characters=settings.history_characters,
                max_state_bytes=settings.max_state_bytes,
                ttl_seconds=settings.conversation_ttl_seconds,
                turn_ttl_seconds=ledger.ttl_seconds,
            ),
            order=Order(client),
            uploads=Uploads(client),
            journeys=Journeys(client, traced),
        )

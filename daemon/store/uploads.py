"""Media the business uploaded, by content: a file sent again is not uploaded again.

Meta keeps an uploaded file 30 days; wapipe reuses its media id for :data:`UPLOAD_TTL_SECONDS`,
well within that, under ``wapipe:uploaded:<phone_number_id>:<sha256 hex>`` (media ids belong to the
number that uploaded them).
"""

from __future__ import annotations

import redis

from daemon.store import keys

#: How long an upload's media id is reused (Meta keeps it 30 days).
UPLOAD_TTL_SECONDS = 7 * 86_400


class Uploads:
    """The upload cache on one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def get(self, phone_number_id: str, sha256_hex: str) -> str | None:
        """The media id of this content uploaded from ``phone_number_id``, if still reusable."""
        value = self._client.get(keys.uploaded(phone_number_id, sha256_hex))
        return value.decode() if isinstance(value, bytes) else value

    def put(self, phone_number_id: str, sha256_hex: str, media_id: str) -> None:
        self._client.set(keys.uploaded(phone_number_id, sha256_hex), media_id, ex=UPLOAD_TTL_SECONDS)

"""fetch_media: download, verify and store what users send, then hand the message to reply.

Queue ``wapipe_media`` (slow media never delays text replies). Receives the same
:class:`~daemon.pipeline.MessageItem` reply does, for image, video, audio, document and sticker
messages.

1. The webhook's media ``url`` is used only when its host is in ``WHATSAPP_MEDIA_HOSTS`` (in sandbox
   mode: only the emulator's own address); otherwise (or when it is absent or has expired)
   ``GET /{media_id}`` gives a fresh one.
2. The file streams into a temporary file beside its destination, hashed as it comes, refused
   past ``WAPIPE_MEDIA_MAX_BYTES``. A 404 on the URL (they live 5 minutes) gets a fresh URL.
3. It is stored atomically as ``{phone_number_id}/{sha256 hex}{ext}`` (extension from the mime
   type), or under ``{phone_number_id}/unverified/`` when its SHA-256 does not match the
   webhook's; that is counted (``wapipe_media_downloads_total{outcome="unverified"}``), logged, and
   still answered.
4. ``reply`` receives the item with ``stored_media`` (path, mime type, size, whether the hash
   matched). When the file cannot be had — a permanent refusal at once, a transient failure after
   ``MEDIA_MAX_RETRIES`` (3) retries — ``reply`` receives it without, and says it could not
   download it.

Worst case: ``(MEDIA_MAX_RETRIES + 1)`` runs × (up to ``WAPIPE_GRAPH_ATTEMPTS`` lookups and downloads,
and one URL refresh) spaced by the Dramatiq back-off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from actors.context import Context
from daemon.graph import (
    AnswerCut,
    GraphError,
    GraphUnreachable,
    MediaExpired,
    MediaRefused,
    RequestInvalid,
    SendOutcomeUnknown,
)
from daemon.pipeline import FETCH_MEDIA, MEDIA_MAX_RETRIES, REPLY, MessageItem, StoredMedia
from daemon.store.media import MediaNotStored, TempFile, expected_digest, phone_dir

log = logging.getLogger(__name__)

ACTOR_NAME = FETCH_MEDIA.name

#: Retried (SendOutcomeUnknown covers a cut download and one under the rate floor).
_TRANSIENT = (GraphUnreachable, SendOutcomeUnknown, MediaExpired)
#: Everything a fetch can fail with that still lets the message be answered (a file the media
#: directory cannot take, too: at once, for the user should not wait on a full disk).
_FAILURES = (MediaRefused, RequestInvalid, GraphError, MediaNotStored, *_TRANSIENT)


def run(context: Context, item: MessageItem) -> None:
    kind = item.type
    found = item.message.get(kind)
    media: dict[str, Any] = found if isinstance(found, dict) else {}
    fields = {"actor": ACTOR_NAME, "message_id": item.id, "type": kind}
    stored: StoredMedia | None
    try:
        stored = _fetch(context, item.phone_number_id, media)
    except _FAILURES as error:
        last_try = context.retries >= MEDIA_MAX_RETRIES
        transient = isinstance(error, _TRANSIENT) or (
            isinstance(error, GraphError) and error.kind != "permanent"
        )
        if transient and not last_try:
            raise
        log.log(
            logging.ERROR if isinstance(error, MediaNotStored) else logging.WARNING,
            "media_unavailable",
            extra={**fields, "error": type(error).__name__, "detail": str(error)[:200]},
        )
        context.metrics.media_downloads.labels("failed").inc()
        context.journal.fields["media"] = {"stored": False, "error": type(error).__name__}
        stored = None
    if stored is not None:
        context.journal.fields["media"] = {
            "stored": True,
            "bytes": stored.size,
            "mime_type": stored.mime_type,
            "verified": stored.sha256_ok,
            "file": Path(stored.path).name,
        }
    if stored is not None and item.user is not None:
        context.store.conversations.note(
            item.phone_number_id, item.user, media=stored.path
        )  # for `wapipe forget`
    context.store.queue.send(REPLY, item if stored is None else item.with_file(stored))


def _fetch(context: Context, phone_number_id: str, media: dict[str, Any]) -> StoredMedia:
    """Look up, download and store the file."""
    settings = context.settings
    graph = context.graph
    media_id = _text(media.get("id"))
    url = _text(media.get("url"))
    if url is not None and not graph.media_allowed(url):
        log.info(
            "media_url_ignored", extra={"actor": ACTOR_NAME, "reason": "host not in WHATSAPP_MEDIA_HOSTS"}
        )
        url = None
    info: dict[str, Any] = {}
    folder = phone_dir(settings.media_dir, phone_number_id)
    try:
        sink = TempFile(folder)
    except OSError as error:
        raise MediaNotStored(error) from None
    try:
        for refresh in range(2):
            if url is None:
                if not media_id:
                    raise MediaRefused("the message has neither a usable url nor a media id")
                info = graph.media_info(str(media_id), phone_number_id)
                url = _text(info.get("url")) or ""
            try:
                content_type = graph.download(url, sink, max_bytes=settings.media_max_bytes)
                break
            except MediaExpired:
                if refresh:
                    raise
                url = None  # ask the Graph API for a fresh URL
        mime = (
            _text(media.get("mime_type"))
            or _text(info.get("mime_type"))
            or content_type
            or "application/octet-stream"
        )
        expected = expected_digest(_text(media.get("sha256")), _text(info.get("sha256")))
        announced = _size(info.get("file_size"))
        if expected is not None and sink.digest != expected and announced not in (None, sink.size):
            # Neither the hash nor the size the Graph API announced: a cut file, not another one.
            raise AnswerCut(f"downloaded {sink.size} bytes of the {announced} announced")
        stored = sink.store(folder, mime, expected)
    except OSError as error:  # writing, flushing or renaming the file: the download itself maps its own
        raise MediaNotStored(error) from None
    finally:
        sink.discard()
    families = context.metrics
    families.media_downloads.labels("stored" if stored.verified else "unverified").inc()
    families.media_bytes.inc(stored.size)
    if not stored.verified:
        log.warning("media_hash_mismatch", extra={"actor": ACTOR_NAME, "stored_as": str(stored.path.name)})
    log.info("media_stored", extra={"actor": ACTOR_NAME, "bytes": stored.size, "verified": stored.verified})
    return StoredMedia(
        path=str(stored.path), mime_type=str(mime), size=stored.size, sha256_ok=stored.verified
    )


def _text(value: object) -> str | None:
    """A string from the webhook or the Graph API, or None for a value of any other JSON type."""
    return value if isinstance(value, str) and value else None


def _size(value: object) -> int | None:
    """``file_size`` as Meta sends it (a number or a string of digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None

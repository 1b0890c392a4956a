"""Where and how inbound media is stored (the README's *Media*).

Files land atomically at ``$WAPIPE_MEDIA_DIR/{phone_number_id}/{sha256 hex}{ext}``; a file whose
hash does not match the webhook's goes under ``{phone_number_id}/unverified/`` instead. The
extension comes from a fixed table of mime types, never from the sender's filename.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

#: The only extensions wapipe writes. Unknown types are stored as ``.bin``.
EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "video/3gpp": ".3gp",
    "audio/aac": ".aac",
    "audio/amr": ".amr",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/ogg": ".ogg",
    "text/plain": ".txt",
    "application/pdf": ".pdf",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.ms-powerpoint": ".ppt",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
}
DEFAULT_EXTENSION = ".bin"
_SAFE_SEGMENT = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def extension_for(mime_type: str | None) -> str:
    """``audio/ogg; codecs=opus`` → ``.ogg``; anything not in the table → ``.bin``."""
    if not mime_type:
        return DEFAULT_EXTENSION
    return EXTENSIONS.get(mime_type.split(";", 1)[0].strip().lower(), DEFAULT_EXTENSION)


def host_allowed(url: str, hosts: tuple[str, ...]) -> bool:
    """True when ``url`` is http(s) on a host named in ``WHATSAPP_MEDIA_HOSTS`` (any port)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and (parts.hostname or "").lower() in hosts


def expected_digest(webhook_b64: str | None, graph_hex: str | None) -> bytes | None:
    """The SHA-256 the file should have: the webhook's base64 value, else the Graph API's hex value."""
    if webhook_b64:
        try:
            digest = base64.b64decode(webhook_b64, validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) == 32:
            return digest
    if graph_hex:
        try:
            digest = bytes.fromhex(graph_hex)
        except ValueError:
            return None
        return digest if len(digest) == 32 else None
    return None


def phone_dir(media_dir: Path, phone_number_id: str) -> Path:
    """The per-number folder; an id that is not a plain token never becomes a path."""
    segment = phone_number_id if _SAFE_SEGMENT.match(phone_number_id) else "_invalid"
    return media_dir / segment


@dataclass(frozen=True, slots=True)
class Stored:
    path: Path
    size: int
    sha256_hex: str
    verified: bool


PART_PREFIX = ".part-"
#: A partial file this young is never taken for abandoned (its writer may not have locked it yet).
PART_GRACE_SECONDS = 10.0


class MediaNotStored(Exception):
    """The media directory cannot take the file (disk full, a quota, no permission, read-only);
    the message says which, by its ``errno`` name, never the path's content."""

    def __init__(self, error: OSError) -> None:
        name = errno.errorcode.get(error.errno or 0, type(error).__name__)
        super().__init__(f"the media directory cannot store the file: {name}")
        self.errno_name = name


class TempFile:
    """A temporary file beside the destination, hashed while written; removed unless stored.

    Its writer holds an exclusive ``flock`` on it, so :func:`remove_abandoned_parts` can tell a
    download in progress (in any process) from the leftover of a killed one.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=PART_PREFIX, dir=directory)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def reset(self) -> None:
        """Start over (a new download attempt)."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self.size = 0

    @property
    def digest(self) -> bytes:
        return self._hash.digest()

    def store(self, folder: Path, mime_type: str | None, expected: bytes | None) -> Stored:
        """fsync and rename into ``folder``; under ``folder/unverified`` when the hash does not match (or
        there was no hash to check against)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = self.digest
        verified = expected is not None and expected == digest
        target_dir = folder if verified else folder / "unverified"
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{digest.hex()}{extension_for(mime_type)}"
        os.replace(self.path, target)
        return Stored(path=target, size=self.size, sha256_hex=digest.hex(), verified=verified)

    def discard(self) -> None:
        """Close and remove the partial file (closing a full disk's file fails: it goes all the same)."""
        try:
            if not self._file.closed:
                self._file.close()
        except OSError:
            pass  # its buffered bytes had nowhere to go: the file is removed below
        finally:
            self.path.unlink(missing_ok=True)


def remove_abandoned_parts(media_dir: Path) -> int:
    """Delete the partial downloads nobody is writing (left by a killed worker); return how many.

    Run when a worker starts. A partial file is abandoned when no process holds its lock and it is
    older than :data:`PART_GRACE_SECONDS`.
    """
    removed = 0
    now = time.time()
    for part in media_dir.glob(f"*/{PART_PREFIX}*"):
        try:
            if now - part.stat().st_mtime < PART_GRACE_SECONDS:
                continue
            with part.open("rb") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a download in progress
                part.unlink()
                removed += 1
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return removed


def remove_expired(media_dir: Path, older_than_seconds: float, now: float | None = None) -> int:
    """Delete the stored media files (verified or not) last written more than ``older_than_seconds``
    ago; return how many. A file stored again (the same content arrived anew) counts from then.
    Partial downloads are :func:`remove_abandoned_parts`' business."""
    cutoff = (time.time() if now is None else now) - older_than_seconds
    removed = 0
    for pattern in ("*/*", "*/unverified/*"):
        for path in media_dir.glob(pattern):
            if path.name.startswith(PART_PREFIX):
                continue
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:  # gone meanwhile
                continue
    return removed

"""Erasure: ``wapipe forget PHONE_NUMBER_ID USER`` removes everything wapipe keeps of one user.

It follows the user's index (every inbound message id parse saw from them, every business send to
them, every media file they sent; :mod:`daemon.store.conversations`) and removes: the conversation
(state, variables, history, order, index), each message's dedup mark, turn, journey, reply ledger
entries, handled mark, and the statuses and links of the messages sent in answer, the per-recipient rate limit, the
dead letters of their messages, the sandbox outbox entries to or about them, what the sandbox chat
page keeps of them (their stream, the media they attached), and the media files.

Messages still queued or in flight when it runs are not touched: run it when the user's messages
have been handled (an erasure request is not that urgent), or run it again afterwards.

Removing keys does not remove them from Redis's own files: the append-only file keeps every
command that wrote them until it is rewritten, a snapshot what was there when it was taken.
:func:`rewrite_files` has Redis rewrite both, and says so (a managed Redis may refuse; then the
files keep copies until the service rewrites them). Replicas and backups keep theirs until they
are rewritten or expire.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from daemon.store import deadletters, keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Erased:
    """What was removed."""

    keys: int
    dead_letters: int
    outbox_entries: int
    media_files: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def forget(client: redis.Redis, phone_number_id: str, user: str, media_dir: Path) -> Erased:
    """Remove everything kept of ``user`` on ``phone_number_id``; return what was removed."""
    index = keys.user_messages(phone_number_id, user)
    # A sorted set since the index keeps a window; an earlier release's plain set until it is added to.
    listed: Any = client.smembers(index) if client.type(index) == b"set" else client.zrange(index, 0, -1)
    subjects = {_text(member) for member in listed}
    media = {_text(m) for m in client.smembers(keys.user_media(phone_number_id, user))}
    doomed: set[str] = {
        keys.conversation(phone_number_id, user),
        keys.history(phone_number_id, user),
        keys.order(phone_number_id, user),
        keys.order_running(phone_number_id, user),
        keys.order_since(phone_number_id, user),
        keys.order_counter(phone_number_id, user),
        keys.user_messages(phone_number_id, user),
        keys.user_media(phone_number_id, user),
        keys.rate_pair(phone_number_id, "+" + user),
        keys.rate_pair(phone_number_id, user),
    }
    for subject in subjects:
        if subject.startswith("send:"):
            doomed.add(keys.seen_send(phone_number_id, subject.removeprefix("send:")))
        else:
            doomed.add(keys.seen_message(subject))
        doomed |= {
            keys.turn(phone_number_id, subject),
            keys.handled(phone_number_id, subject),
            keys.journey(subject),
        }
        for raw in client.scan_iter(
            match=_glob(keys.ledger(phone_number_id, subject, 0)[:-1]) + "*", count=100
        ):
            ledger_key = _text(raw)
            doomed.add(ledger_key)
            value = _text(client.get(ledger_key) or b"")
            if value.startswith("sent:"):
                outbound_id = value.removeprefix("sent:")
                doomed |= {keys.status(outbound_id), keys.outbound(outbound_id)}
                doomed |= {
                    _text(mark)
                    for mark in client.scan_iter(
                        match=_glob(keys.seen_status(outbound_id, "")) + "*", count=100
                    )
                }
    doomed |= _sandbox_chat(client, user)
    removed_keys = int(client.delete(*doomed)) if doomed else 0
    client.zrem(keys.ACTIVE_CONVERSATIONS, f"{phone_number_id}:{user}")
    client.hdel(keys.SANDBOX_CHAT_USERS, user)
    letters = 0
    for letter in deadletters.all_letters(client):
        if _concerns(letter.message.get("kwargs") or {}, phone_number_id, user, subjects):
            deadletters.remove(client, letter)
            letters += 1
    entries = _forget_outbox(client, phone_number_id, user, subjects)
    files = 0
    root = media_dir.resolve()
    for path in media:
        file = Path(path).resolve()
        if file.is_relative_to(root) and file.is_file():
            file.unlink()
            files += 1
    erased = Erased(removed_keys, letters, entries, files)
    log.info(
        "user_forgotten",
        extra={
            "keys": erased.keys,
            "dead_letters": erased.dead_letters,
            "outbox_entries": erased.outbox_entries,
            "media_files": erased.media_files,
        },
    )
    return erased


def _sandbox_chat(client: redis.Redis, user: str) -> set[str]:
    """The sandbox chat page's keys of ``user``: their stream, who sent each of their messages,
    and the media they attached (the stream names them)."""
    stream = keys.sandbox_chat(user)
    found: set[str] = {stream}
    events: Any = client.xrange(stream)
    for _, fields in events:
        event = json.loads(fields[b"e"])
        if event.get("kind") != "in":
            continue
        found.add(keys.sandbox_chat_sender(str(event.get("id"))))
        message = event.get("message") or {}
        part = message.get(message.get("type"))
        if isinstance(part, dict) and isinstance(part.get("id"), str):
            found.add(keys.sandbox_media(part["id"]))
    return found


def _glob(text: str) -> str:
    """``text`` with Redis's glob characters escaped."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _concerns(kwargs: dict[str, object], phone_number_id: str, user: str, subjects: set[str]) -> bool:
    """Whether a dead letter's arguments are one of the user's messages or sends."""
    item = kwargs.get("item")
    if isinstance(item, dict) and item.get("phone_number_id") == phone_number_id:
        message = item.get("message")
        if isinstance(message, dict):
            return user in (message.get("from"), message.get("from_user_id")) or message.get("id") in subjects
    send = kwargs.get("send")
    if isinstance(send, dict):
        return send.get("phone_number_id") == phone_number_id and send.get("to") == user
    return False


def _forget_outbox(client: redis.Redis, phone_number_id: str, user: str, subjects: set[str]) -> int:
    """Remove the sandbox outbox entries sent to the user or about their messages."""
    removed = 0
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(keys.SANDBOX_OUTBOX)  # type: ignore[no-untyped-call]
        entries = [_text(raw) for raw in pipe.lrange(keys.SANDBOX_OUTBOX, 0, -1)]
        kept: list[str] = []
        for raw in entries:
            entry = json.loads(raw)
            sent = entry.get("message") or {}
            about = entry.get("in_reply_to") in subjects or entry.get("message_id") in subjects
            to_user = str(sent.get("to") or "").lstrip("+") == user or sent.get("recipient") == user
            if entry.get("phone_number_id") == phone_number_id and (about or to_user):
                removed += 1
            else:
                kept.append(raw)
        if removed:
            pipe.multi()
            pipe.delete(keys.SANDBOX_OUTBOX)
            if kept:
                pipe.rpush(keys.SANDBOX_OUTBOX, *kept)
            pipe.execute()
    return removed


#: How long ``wapipe forget`` waits for Redis to rewrite its files.
REWRITE_WAIT_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class Rewritten:
    """What Redis's own files became after an erasure: a line per file kind, and whether every file
    that may hold the user was rewritten."""

    lines: tuple[str, ...]
    complete: bool


def rewrite_files(client: redis.Redis, wait_seconds: float = REWRITE_WAIT_SECONDS) -> Rewritten:
    """Have Redis rewrite the files that may still hold what :func:`forget` removed: the
    append-only file (``BGREWRITEAOF``: a new one holding only today's data, the old ones deleted)
    and, where it keeps them, its snapshot (``BGSAVE``). Waits for each to finish."""
    lines: list[str] = []
    complete = True
    try:
        persistence = client.info("persistence")
    except redis.ResponseError as error:
        return Rewritten((f"Redis refused INFO persistence ({error}): its files may keep copies",), False)
    if int(persistence.get("aof_enabled", 0)):
        done, line = _background(
            client, "BGREWRITEAOF", "aof_rewrite_in_progress", "aof_last_bgrewrite_status", wait_seconds
        )
        lines.append(f"append-only file: {line}")
        complete &= done
    try:
        schedule = client.config_get("save").get("save", "")
    except redis.ResponseError:
        schedule = "unknown"  # a managed Redis may refuse CONFIG: take a snapshot anyway
    if schedule:
        done, line = _background(
            client, "BGSAVE", "rdb_bgsave_in_progress", "rdb_last_bgsave_status", wait_seconds
        )
        lines.append(f"snapshot: {line}")
        complete &= done
    if not lines:
        lines.append("Redis keeps no files (no append-only file, no snapshots)")
    return Rewritten(tuple(lines), complete)


def _background(
    client: redis.Redis, command: str, in_progress: str, last_status: str, wait_seconds: float
) -> tuple[bool, str]:
    """Run ``command`` (a background rewrite) once none is in progress, and wait for it."""
    deadline = time.monotonic() + wait_seconds
    started = False
    while time.monotonic() < deadline:
        info = client.info("persistence")
        busy = int(info.get(in_progress, 0)) or int(info.get("aof_rewrite_scheduled", 0))
        if started and not busy:
            status = str(info.get(last_status, "ok"))
            return (status == "ok", "rewritten" if status == "ok" else f"Redis's rewrite failed ({status})")
        if not started and not busy:
            try:
                if command == "BGREWRITEAOF":
                    client.bgrewriteaof()
                else:
                    client.bgsave()
            except redis.ResponseError as error:
                if "in progress" not in str(error):  # another one running: wait for it, then ours
                    return False, f"Redis refused {command} ({error})"
            else:
                started = True
        time.sleep(0.05)
    return False, f"not finished within {wait_seconds:g} s ({command} still running)"

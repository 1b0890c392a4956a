"""Every Redis key wapipe reads or writes, in one place.

The layouts are a contract between releases: a message queued, a dedup mark, a ledger entry or a
dead letter written by one release is read by the next (``tests/test_upgrade.py`` holds the
previous release's formats). Change a layout only with a migration.

Dramatiq's own layout (its Redis broker, namespace ``dramatiq``): ``dramatiq:<queue>`` is the list
of ready message ids, ``dramatiq:<queue>.msgs`` the hash id → encoded message,
``dramatiq:<queue>.DQ`` the delay queue, and ``dramatiq:<queue>.XQ`` the dead letters (a sorted set
scored by the time they failed, with their messages in ``dramatiq:<queue>.XQ.msgs``). What one
worker process fetched and has not acked is the set ``dramatiq:__acks__.<broker id>.<queue>``, and
``dramatiq:__heartbeats__`` scores each broker id by the time of its last command.

Every part a builder puts into a name passes through :func:`part`: what keys held before (digits,
letters, the base64 of Meta's ids, ``.`` ``_`` ``-`` ``=`` ``+`` ``/``) stays as it is, anything else
(``:``, ``{``, ``}``, ``%``, ``*``, spaces, any non-ASCII character) is percent-encoded. So a caller's
or a user's string can never reach into another key (``to: "447700900077:history"`` names no
history), no two inputs share a name, and the keys of an earlier release keep theirs.
"""

from __future__ import annotations

import re

#: Dramatiq's key namespace (the broker is built with it).
NAMESPACE = "dramatiq"
#: Dramatiq's heartbeats: a sorted set of broker ids (one per worker process) by the time (ms) of
#: their last command.
HEARTBEATS = f"{NAMESPACE}:__heartbeats__"
#: Producers publish a queue's name here after enqueueing onto it when it was empty.
WAKEUP_CHANNEL = "wapipe:wakeup"
#: Dead-letter id → the JSON record of why it failed (stage, reason, attempts, time).
DEAD_LETTER_REASONS = "wapipe:dlq:reasons"
#: Sandbox: what the emulated Graph API was sent (a capped list of JSON entries).
SANDBOX_OUTBOX = "wapipe:sandbox:outbox"
#: Sandbox: the running emulator's address and token.
SANDBOX_EMULATOR = "wapipe:sandbox:emulator"
#: Sandbox chat page: simulated user's number → their name.
SANDBOX_CHAT_USERS = "wapipe:sandbox:chat:users"
#: Conversations by the time of their user's last message: ``<phone_number_id>:<user>`` → Unix s.
ACTIVE_CONVERSATIONS = "wapipe:active"
#: Stands in for the dedup mark of an item without an id (never read or written).
UNMARKED = "wapipe:seen:-"

#: What a part of a key name may hold as it is (everything else is percent-encoded).
_KEPT = re.compile(r"[A-Za-z0-9+/=._-]*", re.ASCII)
_KEPT_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=._-")
#: A business send's ledger subject: ``send:<key>`` (the prefix is part of the layout).
SEND_SUBJECT = "send:"


def part(value: object) -> str:
    """``value`` as one part of a key name: itself when it holds only what keys held before, else
    with every other character percent-encoded as UTF-8, ``%`` included, so that the encoding never
    maps two values to one name.

    Raises:
        UnicodeEncodeError: a lone surrogate (no valid Unicode: Redis could not take it either).
    """
    text = str(value)
    if _KEPT.fullmatch(text):
        return text
    return "".join(
        c if c in _KEPT_CHARACTERS else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text
    )


def subject_part(subject: str) -> str:
    """A ledger subject as part of a key name: an inbound message's id, or ``send:<key>``, whose
    key is encoded after the prefix it has always had."""
    if subject.startswith(SEND_SUBJECT):
        return SEND_SUBJECT + part(subject[len(SEND_SUBJECT) :])
    return part(subject)


def queue(name: str) -> str:
    """The list of ready message ids of queue ``name`` (``name.DQ`` for its delay queue)."""
    return f"{NAMESPACE}:{part(name)}"


def queue_messages(name: str) -> str:
    """The hash of queue ``name``'s messages, by Redis message id."""
    return f"{NAMESPACE}:{part(name)}.msgs"


def fetched(broker_id: str, name: str) -> str:
    """The set of the Redis message ids that the worker process whose broker is ``broker_id``
    fetched from queue ``name`` and has not acked (Dramatiq's ``__acks__`` set)."""
    return f"{NAMESPACE}:__acks__.{part(broker_id)}.{part(name)}"


def dead_letters(name: str) -> str:
    """The sorted set of queue ``name``'s dead letters (its messages: :func:`dead_letter_messages`)."""
    return f"{NAMESPACE}:{part(name)}.XQ"


def dead_letter_messages(name: str) -> str:
    return f"{NAMESPACE}:{part(name)}.XQ.msgs"


def record_bucket(bucket: int) -> str:
    """A bucket of message records (:mod:`daemon.store.records`): a hash of its shard count (``s``)
    and its number of records (``n``)."""
    return f"wapipe:rec:{bucket}"


def record_shard(bucket: int, shard: int) -> str:
    """One shard of a bucket of message records: a hash of record digest → record."""
    return f"wapipe:rec:{bucket}:{shard}"


def seen_message(message_id: str) -> str:
    """The dedup mark of an inbound message as releases before the message records wrote it (its
    value: the parse attempt that claimed it). Read, never written, until the last expires."""
    return f"wapipe:seen:msg:{part(message_id)}"


def seen_status(status_id: str, status: object) -> str:
    """The dedup mark of one status (``sent``, ``delivered``…) of an outbound message."""
    return f"wapipe:seen:status:{part(status_id)}:{part(status)}"


def seen_send(phone_number_id: str, key: str) -> str:
    """The mark of a business-initiated send's idempotency key: a second request is a duplicate."""
    return f"wapipe:seen:send:{part(phone_number_id)}:{part(key)}"


def status(status_id: str) -> str:
    """The hash holding an outbound message's latest status (``status``, ``rank``, ``timestamp``)."""
    return f"wapipe:status:{part(status_id)}"


def handled(phone_number_id: str, message_id: str) -> str:
    """Releases before the message records set it when an inbound message was done (its value:
    the number of messages sent in answer). Read, never written, until the last expires."""
    return f"wapipe:handled:{part(phone_number_id)}:{subject_part(message_id)}"


def ledger(phone_number_id: str, message_id: str, index: int) -> str:
    """What became of the ``index``-th outbound message answering ``message_id``: ``sent:<outbound
    id>`` once Meta accepted it, ``refused:<why>`` when it was refused for good (the message record
    holds the state; this keeps the id, for ``wapipe trace`` and the conversation's history).
    Releases before the message records also wrote ``sending:<attempt>:<time>`` here, and their
    entries are read as the state when a record has none."""
    return f"wapipe:reply:{part(phone_number_id)}:{subject_part(message_id)}:{index}"


def paused(phone_number_id: str) -> str:
    """Present while sending from the number is paused (its token was refused)."""
    return f"wapipe:paused:{part(phone_number_id)}"


def probe(phone_number_id: str) -> str:
    """Held by the one message per pause period that probes whether the token works again."""
    return f"wapipe:probe:{part(phone_number_id)}"


def rate_number(phone_number_id: str) -> str:
    """The per-number send limiter (GCRA: the theoretical arrival time, µs)."""
    return f"wapipe:rate:number:{part(phone_number_id)}"


def rate_pair(phone_number_id: str, recipient: str) -> str:
    """The per-recipient send limiter of one business number."""
    return f"wapipe:rate:pair:{part(phone_number_id)}:{part(recipient)}"


def sandbox_media(media_id: str) -> str:
    """Sandbox: an uploaded file (content, mime type, hash, size)."""
    return f"wapipe:sandbox:media:{part(media_id)}"


def conversation(phone_number_id: str, user: str) -> str:
    """A conversation's hash: ``state`` and ``variables`` (JSON), ``last_inbound`` (Unix seconds)."""
    return f"wapipe:conv:{part(phone_number_id)}:{part(user)}"


def history(phone_number_id: str, user: str) -> str:
    """A conversation's context window: a list of JSON entries, oldest first."""
    return f"wapipe:conv:{part(phone_number_id)}:{part(user)}:history"


def turn(phone_number_id: str, message_id: str) -> str:
    """What the bot decided for one inbound message (its replies), kept with its state change."""
    return f"wapipe:turn:{part(phone_number_id)}:{subject_part(message_id)}"


def order(phone_number_id: str, user: str) -> str:
    """A user's messages that have not ended, in the order they took their places: a sorted set of
    message ids scored by their place: when their webhook was received, µs (:mod:`daemon.store.order`)."""
    return f"wapipe:order:{part(phone_number_id)}:{part(user)}"


def order_running(phone_number_id: str, user: str) -> str:
    """Which of a user's messages in their order are running now (past their wait, not ended, not
    waiting for a retry): message id → ``1``. A message waits in its thread only for one of these."""
    return f"wapipe:order:{part(phone_number_id)}:{part(user)}:running"


def order_since(phone_number_id: str, user: str) -> str:
    """Earlier releases: when each waiting message was seen by parse (message id → Unix ms). No
    longer written; `wapipe forget` removes what is left of it."""
    return f"wapipe:order:{part(phone_number_id)}:{part(user)}:since"


def order_counter(phone_number_id: str, user: str) -> str:
    """Earlier releases: the last place given in a conversation's order (no longer written)."""
    return f"wapipe:order:{part(phone_number_id)}:{part(user)}:counter"


def user_messages(phone_number_id: str, user: str) -> str:
    """The recent ledger subjects of a user (their inbound message ids, ``send:<key>``), for
    erasure: a sorted set by when each was added, trimmed on each add (``lua/index.lua``)."""
    return f"wapipe:conv:{part(phone_number_id)}:{part(user)}:messages"


def user_media(phone_number_id: str, user: str) -> str:
    """The paths of the media files a user sent, for erasure."""
    return f"wapipe:conv:{part(phone_number_id)}:{part(user)}:media"


def uploaded(phone_number_id: str, sha256_hex: str) -> str:
    """The media id of a file the business uploaded from ``phone_number_id``, by its content."""
    return f"wapipe:uploaded:{part(phone_number_id)}:{part(sha256_hex)}"


def journey(subject: str) -> str:
    """What happened to one inbound message (or business send, ``send:<key>``) on its way through
    the pipeline: a list of JSON events, oldest first (``wapipe trace``)."""
    return f"wapipe:journey:{subject_part(subject)}"


def outbound(outbound_id: str) -> str:
    """What a message wapipe sent answered: its number, ledger subject, index and user (JSON)."""
    return f"wapipe:outbound:{part(outbound_id)}"


def sandbox_chat(user: str) -> str:
    """Sandbox chat page: the stream of what ``user`` sent and received, as the page shows it."""
    return f"wapipe:sandbox:chat:{part(user)}"


def sandbox_chat_sender(message_id: str) -> str:
    """Sandbox chat page: which simulated user sent inbound ``message_id`` (for its read ticks)."""
    return f"wapipe:sandbox:chat:from:{part(message_id)}"

"""Every Redis key wapipe reads or writes, in one place.

The layouts are a contract between releases: a message queued, a dedup mark, a ledger entry or a
dead letter written by one release is read by the next (``tests/test_upgrade.py`` holds the
previous release's formats). Change a layout only with a migration.

Dramatiq's own layout (its Redis broker, namespace ``dramatiq``): ``dramatiq:<queue>`` is the list
of ready message ids, ``dramatiq:<queue>.msgs`` the hash id → encoded message,
``dramatiq:<queue>.DQ`` the delay queue, and ``dramatiq:<queue>.XQ`` the dead letters (a sorted set
scored by the time they failed, with their messages in ``dramatiq:<queue>.XQ.msgs``).
"""

from __future__ import annotations

#: Dramatiq's key namespace (the broker is built with it).
NAMESPACE = "dramatiq"
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


def queue(name: str) -> str:
    """The list of ready message ids of queue ``name`` (``name.DQ`` for its delay queue)."""
    return f"{NAMESPACE}:{name}"


def queue_messages(name: str) -> str:
    """The hash of queue ``name``'s messages, by Redis message id."""
    return f"{NAMESPACE}:{name}.msgs"


def dead_letters(name: str) -> str:
    """The sorted set of queue ``name``'s dead letters (its messages: :func:`dead_letter_messages`)."""
    return f"{NAMESPACE}:{name}.XQ"


def dead_letter_messages(name: str) -> str:
    return f"{NAMESPACE}:{name}.XQ.msgs"


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
    return f"wapipe:seen:msg:{message_id}"


def seen_status(status_id: str, status: object) -> str:
    """The dedup mark of one status (``sent``, ``delivered``…) of an outbound message."""
    return f"wapipe:seen:status:{status_id}:{status}"


def seen_send(phone_number_id: str, key: str) -> str:
    """The mark of a business-initiated send's idempotency key: a second request is a duplicate."""
    return f"wapipe:seen:send:{phone_number_id}:{key}"


def status(status_id: str) -> str:
    """The hash holding an outbound message's latest status (``status``, ``rank``, ``timestamp``)."""
    return f"wapipe:status:{status_id}"


def handled(phone_number_id: str, message_id: str) -> str:
    """Releases before the message records set it when an inbound message was done (its value:
    the number of messages sent in answer). Read, never written, until the last expires."""
    return f"wapipe:handled:{phone_number_id}:{message_id}"


def ledger(phone_number_id: str, message_id: str, index: int) -> str:
    """What became of the ``index``-th outbound message answering ``message_id``: ``sent:<outbound
    id>`` once Meta accepted it, ``refused:<why>`` when it was refused for good (the message record
    holds the state; this keeps the id, for ``wapipe trace`` and the conversation's history).
    Releases before the message records also wrote ``sending:<attempt>:<time>`` here, and their
    entries are read as the state when a record has none."""
    return f"wapipe:reply:{phone_number_id}:{message_id}:{index}"


def paused(phone_number_id: str) -> str:
    """Present while sending from the number is paused (its token was refused)."""
    return f"wapipe:paused:{phone_number_id}"


def probe(phone_number_id: str) -> str:
    """Held by the one message per pause period that probes whether the token works again."""
    return f"wapipe:probe:{phone_number_id}"


def rate_number(phone_number_id: str) -> str:
    """The per-number send limiter (GCRA: the theoretical arrival time, µs)."""
    return f"wapipe:rate:number:{phone_number_id}"


def rate_pair(phone_number_id: str, recipient: str) -> str:
    """The per-recipient send limiter of one business number."""
    return f"wapipe:rate:pair:{phone_number_id}:{recipient}"


def sandbox_media(media_id: str) -> str:
    """Sandbox: an uploaded file (content, mime type, hash, size)."""
    return f"wapipe:sandbox:media:{media_id}"


def conversation(phone_number_id: str, user: str) -> str:
    """A conversation's hash: ``state`` and ``variables`` (JSON), ``last_inbound`` (Unix seconds)."""
    return f"wapipe:conv:{phone_number_id}:{user}"


def history(phone_number_id: str, user: str) -> str:
    """A conversation's context window: a list of JSON entries, oldest first."""
    return f"wapipe:conv:{phone_number_id}:{user}:history"


def turn(phone_number_id: str, message_id: str) -> str:
    """What the bot decided for one inbound message (its replies), kept with its state change."""
    return f"wapipe:turn:{phone_number_id}:{message_id}"


def order(phone_number_id: str, user: str) -> str:
    """A conversation's messages waiting for the bot, in the order parse saw them: a sorted set of
    message ids scored by their place (see :func:`order_since` and :func:`order_counter`)."""
    return f"wapipe:order:{phone_number_id}:{user}"


def order_since(phone_number_id: str, user: str) -> str:
    """When each waiting message was seen by parse (message id → Unix ms)."""
    return f"wapipe:order:{phone_number_id}:{user}:since"


def order_counter(phone_number_id: str, user: str) -> str:
    """The last place given in a conversation's order."""
    return f"wapipe:order:{phone_number_id}:{user}:counter"


def user_messages(phone_number_id: str, user: str) -> str:
    """The recent ledger subjects of a user (their inbound message ids, ``send:<key>``), for
    erasure: a sorted set by when each was added, trimmed on each add (``lua/index.lua``)."""
    return f"wapipe:conv:{phone_number_id}:{user}:messages"


def user_media(phone_number_id: str, user: str) -> str:
    """The paths of the media files a user sent, for erasure."""
    return f"wapipe:conv:{phone_number_id}:{user}:media"


def uploaded(phone_number_id: str, sha256_hex: str) -> str:
    """The media id of a file the business uploaded from ``phone_number_id``, by its content."""
    return f"wapipe:uploaded:{phone_number_id}:{sha256_hex}"


def journey(subject: str) -> str:
    """What happened to one inbound message (or business send, ``send:<key>``) on its way through
    the pipeline: a list of JSON events, oldest first (``wapipe trace``)."""
    return f"wapipe:journey:{subject}"


def outbound(outbound_id: str) -> str:
    """What a message wapipe sent answered: its number, ledger subject, index and user (JSON)."""
    return f"wapipe:outbound:{outbound_id}"


def sandbox_chat(user: str) -> str:
    """Sandbox chat page: the stream of what ``user`` sent and received, as the page shows it."""
    return f"wapipe:sandbox:chat:{user}"


def sandbox_chat_sender(message_id: str) -> str:
    """Sandbox chat page: which simulated user sent inbound ``message_id`` (for its read ticks)."""
    return f"wapipe:sandbox:chat:from:{message_id}"

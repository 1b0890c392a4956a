"""The pipeline's vocabulary: its stages, the queue and options of each, and what each receives.

::

    web edge ──Webhook──▶ verify ──Envelope──▶ parse ──MessageItem──▶ fetch_media ──▶ reply
                                                  └─────────MessageItem─────────────────▶ reply
    POST /send, wapipe send ──Outgoing──▶ send

A stage's argument is a frozen dataclass here; it crosses Redis as the keyword arguments of a
Dramatiq message (:meth:`to_kwargs`, :meth:`from_kwargs`), in the same layout every release has
written, so that messages queued before an upgrade are still understood after it. A stage is
one table line (:data:`STAGES`) naming its module in ``actors/``, which defines
``run(context, argument)``; :func:`message` is the only way a message for a stage is made, and
:class:`daemon.store.queues.Queue` (or its async twin) the only way one is written.

Queue layout: the text path (verify → parse → reply) shares one queue, so that a hop never waits
for another queue's idle poll; media downloads have their own, so that slow media never delays
text replies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from dramatiq import Message

from daemon.envelope import Item, handoff_problem

PIPELINE_QUEUE = "wapipe"
MEDIA_QUEUE = "wapipe_media"
QUEUES = (PIPELINE_QUEUE, MEDIA_QUEUE)


class ArgumentInvalid(ValueError):
    """A message's arguments are not what its stage takes (a message not written by wapipe, or
    an item that cannot be handled); the message is dead-lettered with this reason."""


def _text(kwargs: Mapping[str, Any], name: str) -> str:
    value = kwargs.get(name)
    if not isinstance(value, str):
        raise ArgumentInvalid(f"{name} must be a string, not {type(value).__name__}")
    return value


def _number(kwargs: Mapping[str, Any], name: str) -> float:
    value = kwargs.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentInvalid(f"{name} must be a number, not {type(value).__name__}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Webhook:
    """``verify``'s argument: a webhook delivery exactly as it arrived."""

    body: str
    #: The ``X-Hub-Signature-256`` header.
    signature: str
    #: When the edge accepted it (Unix seconds).
    received_at: float

    def to_kwargs(self) -> dict[str, Any]:
        return {"body": self.body, "signature": self.signature, "received_at": self.received_at}

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Webhook:
        return cls(_text(kwargs, "body"), _text(kwargs, "signature"), _number(kwargs, "received_at"))


@dataclass(frozen=True, slots=True)
class Envelope:
    """``parse``'s argument: a verified webhook body."""

    body: str
    received_at: float
    #: ``verify``'s Dramatiq message id: names the delivery in logs and dead letters.
    envelope_id: str

    def to_kwargs(self) -> dict[str, Any]:
        return {"body": self.body, "received_at": self.received_at, "envelope_id": self.envelope_id}

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Envelope:
        return cls(_text(kwargs, "body"), _number(kwargs, "received_at"), _text(kwargs, "envelope_id"))


@dataclass(frozen=True, slots=True)
class StoredMedia:
    """An inbound media file ``fetch_media`` stored (see :mod:`daemon.store.media`)."""

    path: str
    mime_type: str
    size: int
    #: Whether its SHA-256 matched the webhook's (else it is under ``unverified/``).
    sha256_ok: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "mime_type": self.mime_type,
            "size": self.size,
            "sha256_ok": self.sha256_ok,
        }


def timestamp_of(value: object) -> int:
    """Meta's ``timestamp`` (a string of Unix seconds) as a number; 0 when it is missing or not one."""
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else 0


def window_time(value: object, received_at: float) -> float:
    """When a message counts as written, for the user's 24-hour window: Meta's ``timestamp``, but
    never later than when wapipe received it (a signed timestamp 30 days ahead would keep the window
    open for a month); a missing, negative or zero one is taken as the receive time."""
    written = timestamp_of(value)
    return float(written) if 0 < written <= received_at else received_at


@dataclass(frozen=True, slots=True)
class MessageItem:
    """``fetch_media``'s and ``reply``'s argument: one inbound message and where it came from."""

    #: The message object exactly as Meta sent it (its ``id`` and ``type`` are checked strings).
    message: dict[str, Any]
    #: The business number it was sent to; replies go out from it.
    phone_number_id: str
    #: The sender's entry of the webhook's ``contacts``, when there was one.
    contact: dict[str, Any] | None
    display_phone_number: str | None
    received_at: float
    envelope_id: str | None
    #: Set by ``fetch_media`` once the file is stored.
    stored_media: StoredMedia | None = None

    @property
    def id(self) -> str:
        return str(self.message["id"])

    @property
    def subject(self) -> str:
        """What its ledger entries and journey are kept under: the message id."""
        return self.id

    @property
    def at(self) -> int:
        """The time its record is filed by (:mod:`daemon.store.records`): Meta's ``timestamp``."""
        return timestamp_of(self.message.get("timestamp"))

    @property
    def type(self) -> str:
        return str(self.message.get("type"))

    @property
    def user(self) -> str | None:
        """Who the message is from, as conversations are keyed: its ``from`` (wa_id), else its
        ``from_user_id`` (business-scoped id); None when it has neither."""
        for field_name in ("from", "from_user_id"):
            value = self.message.get(field_name)
            if isinstance(value, str) and value:
                return value
        return None

    @classmethod
    def from_item(cls, item: Item, received_at: float, envelope_id: str) -> MessageItem:
        """The hand-off of a message ``parse`` split from an envelope."""
        return cls(
            message=item.data,
            phone_number_id=str(item.phone_number_id),
            contact=item.contact,
            display_phone_number=item.display_phone_number,
            received_at=received_at,
            envelope_id=envelope_id,
        )

    def with_file(self, stored: StoredMedia) -> MessageItem:
        return MessageItem(
            self.message,
            self.phone_number_id,
            self.contact,
            self.display_phone_number,
            self.received_at,
            self.envelope_id,
            stored,
        )

    def to_kwargs(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "message": self.message,
            "contact": self.contact,
            "phone_number_id": self.phone_number_id,
            "display_phone_number": self.display_phone_number,
            "received_at": self.received_at,
            "envelope_id": self.envelope_id,
        }
        if self.stored_media is not None:
            item["stored_media"] = self.stored_media.to_json()
        return {"item": item}

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> MessageItem:
        item = kwargs.get("item")
        if not isinstance(item, dict):
            raise ArgumentInvalid("the message has no item object")
        problem = handoff_problem(item)
        if problem is not None:
            raise ArgumentInvalid(problem)
        contact = item.get("contact")
        display = item.get("display_phone_number")
        envelope_id = item.get("envelope_id")
        return cls(
            message=item["message"],
            phone_number_id=str(item["phone_number_id"]),
            contact=contact if isinstance(contact, dict) else None,
            display_phone_number=display if isinstance(display, str) else None,
            received_at=_number(item, "received_at"),
            envelope_id=envelope_id if isinstance(envelope_id, str) else None,
            stored_media=_stored_file(item.get("stored_media")),
        )


def _stored_file(value: object) -> StoredMedia | None:
    if not isinstance(value, dict):
        return None
    try:
        return StoredMedia(
            path=str(value["path"]),
            mime_type=str(value["mime_type"]),
            size=int(value["size"]),
            sha256_ok=bool(value["sha256_ok"]),
        )
    except (KeyError, TypeError, ValueError):
        raise ArgumentInvalid("stored_media is not a stored file") from None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """``send``'s argument: messages the business sends a user on its own initiative (an agent, an
    order system), through ``wapipe send`` or ``POST /send``."""

    phone_number_id: str
    #: The user: their wa_id (digits) or business-scoped user id.
    to: str
    #: The message bodies (as :func:`daemon.messages.body_of` makes them).
    messages: tuple[dict[str, Any], ...]
    #: The caller's idempotency key: a second request with it sends nothing.
    key: str
    requested_at: float

    @property
    def subject(self) -> str:
        """What its ledger entries and journey are kept under: ``send:<key>``."""
        return f"send:{self.key}"

    @property
    def at(self) -> int:
        """The time its record is filed by (:mod:`daemon.store.records`): when it was requested."""
        return int(self.requested_at)

    def to_kwargs(self) -> dict[str, Any]:
        return {
            "send": {
                "phone_number_id": self.phone_number_id,
                "to": self.to,
                "messages": list(self.messages),
                "key": self.key,
                "requested_at": self.requested_at,
            }
        }

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Outgoing:
        send = kwargs.get("send")
        if not isinstance(send, dict):
            raise ArgumentInvalid("the message has no send object")
        messages = send.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(body, dict) and isinstance(body.get("type"), str) for body in messages)
        ):
            raise ArgumentInvalid("messages must be a non-empty list of bodies with a type")
        return cls(
            _text(send, "phone_number_id"),
            _text(send, "to"),
            tuple(messages),
            _text(send, "key"),
            _number(send, "requested_at"),
        )


A = TypeVar("A", Webhook, Envelope, MessageItem, Outgoing)


@dataclass(frozen=True, slots=True)
class Stage(Generic[A]):
    """One stage: its actor name, queue, argument type, Dramatiq options and module."""

    name: str
    queue: str
    argument: type[A]
    #: The module in ``actors/`` that defines ``run(context, argument)``.
    module: str
    #: Dramatiq actor options beyond the retry policy every stage gets (``max_retries``,
    #: ``time_limit``…).
    options: Mapping[str, Any] = field(default_factory=dict)

    def decode(self, kwargs: Mapping[str, Any]) -> A:
        """The argument of a message for this stage.

        Raises:
            ArgumentInvalid: the keyword arguments are not this stage's argument.
        """
        decoded: A = self.argument.from_kwargs(kwargs)
        return decoded


#: A 100 MB file on a slow link takes minutes; the download's own timeouts bound each read.
MEDIA_TIME_LIMIT_MS = 15 * 60 * 1000
#: Retries of a transient media failure before the reply goes out without the file.
MEDIA_MAX_RETRIES = 3

VERIFY = Stage("verify", PIPELINE_QUEUE, Webhook, "actors.verify")
PARSE = Stage("parse", PIPELINE_QUEUE, Envelope, "actors.parse")
FETCH_MEDIA = Stage(
    "fetch_media",
    MEDIA_QUEUE,
    MessageItem,
    "actors.fetch_media",
    {"max_retries": MEDIA_MAX_RETRIES, "time_limit": MEDIA_TIME_LIMIT_MS},
)
REPLY = Stage("reply", PIPELINE_QUEUE, MessageItem, "actors.reply")
SEND = Stage("send", PIPELINE_QUEUE, Outgoing, "actors.send")

#: Every stage, in pipeline order. The only list of them.
STAGES: tuple[Stage[Any], ...] = (VERIFY, PARSE, FETCH_MEDIA, REPLY, SEND)
STAGE_NAMES = tuple(stage.name for stage in STAGES)
_BY_NAME = {stage.name: stage for stage in STAGES}


def stage_named(name: str) -> Stage[Any]:
    """The stage called ``name``.

    Raises:
        KeyError: no stage has that name.
    """
    return _BY_NAME[name]


def message(stage: Stage[A], argument: A, options: Mapping[str, Any] | None = None) -> Message[Any]:
    """A Dramatiq message for ``stage`` with ``argument``, a fresh id and timestamp."""
    if not isinstance(argument, stage.argument):
        raise TypeError(f"{stage.name} takes {stage.argument.__name__}, not {type(argument).__name__}")
    return Message(
        queue_name=stage.queue,
        actor_name=stage.name,
        args=(),
        kwargs=argument.to_kwargs(),
        options=dict(options or {}),
    )

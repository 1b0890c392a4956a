"""A conversation: what the bot remembers of one user on one business number.

The handler receives it loaded from Redis and may change :attr:`Conversation.state` and
:attr:`Conversation.variables`; wapipe keeps the changes with the reply decided for that message,
once (:mod:`daemon.store.conversations`). :attr:`Conversation.history` is the context window: the
last ``WAPIPE_HISTORY_MESSAGES`` messages in and out (oldest first, at most
``WAPIPE_HISTORY_CHARACTERS`` characters of text), ready to be given to a language model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: How long the customer-service window stays open after the user's last message (Meta's rule).
WINDOW_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of the context window."""

    direction: Literal["in", "out"]
    #: The message's type (``text``, ``image``, ``interactive``…).
    type: str
    #: Its text (a text body, a caption, a button title, an interactive body); "" when it has none.
    text: str
    #: Unix seconds: Meta's timestamp of an inbound message, the send time of an outbound one.
    at: float
    #: The WhatsApp message id: an inbound message's, or an outbound one's once it was sent.
    id: str | None = None
    #: An outbound message's delivery: ``sent``, ``delivered``, ``read``, ``played`` or ``failed``
    #: (the furthest Meta reported, whatever order its statuses came in); None before the first.
    status: str | None = None
    #: Why Meta could not deliver it (the error code of a ``failed`` status).
    error_code: int | None = None
    #: What an outbound message answered: the inbound message id, or ``send:<key>`` for a
    #: business send; with :attr:`index`, its place among those messages (its ledger entry).
    answers: str | None = None
    index: int = 0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "direction": self.direction,
            "type": self.type,
            "text": self.text,
            "at": self.at,
            "id": self.id,
        }
        if self.status is not None:
            data["status"] = self.status
        if self.error_code is not None:
            data["error_code"] = self.error_code
        if self.answers is not None:
            data["answers"], data["index"] = self.answers, self.index
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        direction: Literal["in", "out"] = "out" if data.get("direction") == "out" else "in"
        return cls(
            direction,
            str(data.get("type", "")),
            str(data.get("text", "")),
            float(data.get("at", 0)),
            data.get("id"),
            answers=data.get("answers"),
            index=int(data.get("index", 0)),
        )


@dataclass
class Conversation:
    """One user's conversation with one business number."""

    phone_number_id: str
    #: The user: their ``wa_id`` (phone number), or their business-scoped user id.
    user: str
    #: The state machine's state; None for a conversation that has none yet.
    state: str | None = None
    #: The bot's own variables (JSON values).
    variables: dict[str, Any] = field(default_factory=dict)
    #: The context window, oldest first (not changed by the handler: wapipe appends to it).
    history: tuple[Entry, ...] = ()
    #: Meta's timestamp of the user's last message (Unix seconds), None when unknown.
    last_inbound_at: float | None = None
    #: How many turns changed it: a turn commits only onto the version it was decided from.
    version: int = 0

    def window_open(self, now: float) -> bool:
        """Whether free-form messages may be sent at ``now``: the user wrote in the last 24 hours."""
        return self.last_inbound_at is not None and now - self.last_inbound_at < WINDOW_SECONDS

    def reset(self) -> None:
        """Forget the state and the variables (the history stays)."""
        self.state = None
        self.variables = {}

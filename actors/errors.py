"""Failures that end a message's run at once: they are in every actor's ``throws=``.

A :class:`PermanentFailure` is never retried; the message goes to the dead letters with
:attr:`reason`, which the dead-letter recorder stores beside it.
"""

from __future__ import annotations

from typing import Any


class PermanentFailure(Exception):
    """Retrying cannot help; dead-letter the message with this reason."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details

    @property
    def reason(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": str(self), **self.details}


class EnvelopeRejected(PermanentFailure):
    """A stored webhook failed the re-check of its signature or its shape."""


class ItemRejected(PermanentFailure):
    """One item of a webhook cannot be processed (e.g. a message with no id)."""


class OutcomeUnknown(PermanentFailure):
    """A send may or may not have reached the Graph API; it is not resent automatically."""


class GraphRejected(PermanentFailure):
    """The Graph API refused a request with a permanent error code."""


class ConversationBusy(Exception):
    """Other messages of the user kept changing the conversation while the bot decided: the
    message is retried later (not a permanent failure)."""

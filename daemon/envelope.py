"""The webhook envelope: its shape check and its split into items (docs/whatsapp.md, *Payload shape*).

Pure functions over parsed JSON. ``envelope_problem`` is what ``verify`` refuses; ``split``
yields every entry × change × message / status / error, which ``parse`` routes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

WABA_OBJECT = "whatsapp_business_account"
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
#: Webhook fields an app can subscribe to besides ``messages`` (counted by name; others as "other").
OTHER_FIELDS = (
    "account_alerts", "account_review_update", "account_update", "automatic_events",
    "business_capability_update", "business_username_update", "calls", "flows",
    "group_lifecycle_update", "group_participants_update", "group_settings_update", "history",
    "message_template_components_update", "message_template_quality_update",
    "message_template_status_update", "partner_solutions", "payment_configuration_update",
    "phone_number_name_update", "phone_number_quality_update", "security", "smb_app_state_sync",
    "smb_message_echoes", "template_category_update", "user_preferences",
)  # fmt: skip


class NotStandardJSON(ValueError):
    """The body is not standard JSON (RFC 8259): NaN, Infinity, a number out of range, too deep."""


def _constant(name: str) -> float:
    raise NotStandardJSON(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise NotStandardJSON("a number out of range")
    return number


def loads(text: str) -> object:
    """Parse standard JSON only: ``NaN``, ``Infinity`` and numbers that overflow a float (``1e999``)
    are refused, and so is nesting deep enough to exhaust the parser.

    Raises:
        ValueError: not JSON, or not standard JSON (:class:`NotStandardJSON`).
    """
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise NotStandardJSON("nested too deeply") from None


def envelope_problem(envelope: object) -> str | None:
    """Why ``envelope`` is not a WhatsApp Business Account webhook, or None when it is.

    Only what wapipe relies on is checked: unknown keys and unknown fields are accepted.
    """
    if not isinstance(envelope, dict):
        return f"envelope is a JSON {type(envelope).__name__}, not an object"
    if envelope.get("object") != WABA_OBJECT:
        return f"object is {str(envelope.get('object'))[:64]!r}, not {WABA_OBJECT!r}"
    entries = envelope.get("entry", [])
    if not isinstance(entries, list):
        return "entry is not a list"
    for e, entry in enumerate(entries):
        if not isinstance(entry, dict):
            return f"entry[{e}] is not an object"
        changes = entry.get("changes", [])
        if not isinstance(changes, list):
            return f"entry[{e}].changes is not a list"
        for c, change in enumerate(changes):
            where = f"entry[{e}].changes[{c}]"
            if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
                return f"{where} has no value object"
            if change.get("field") == "messages":
                problem = _messages_value_problem(change["value"])
                if problem:
                    return f"{where}.value {problem}"
    return None


def _messages_value_problem(value: dict[str, Any]) -> str | None:
    metadata = value.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("phone_number_id"), str):
        return "has no metadata.phone_number_id"
    for key in ("messages", "statuses", "errors", "contacts"):
        items = value.get(key, [])
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            return f"has a {key} that is not a list of objects"
    return None


def count_changes(envelope: dict[str, Any]) -> int:
    return sum(len(entry.get("changes", [])) for entry in envelope.get("entry", []))


@dataclass(frozen=True, slots=True)
class Item:
    """One unit of work split from an envelope.

    ``kind`` is ``message``, ``status``, ``error`` (value-level) or ``field`` (a change of a field
    other than ``messages``, kept only as its name).
    """

    kind: str
    field: str
    phone_number_id: str | None = None
    display_phone_number: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    contact: dict[str, Any] | None = None


def split(envelope: dict[str, Any]) -> Iterator[Item]:
    """Every item of a shape-checked envelope, in order."""
    for entry in envelope.get("entry", []):
        for change in entry.get("changes", []):
            name = str(change.get("field"))
            value = change["value"]
            if name != "messages":
                yield Item(kind="field", field=name)
                continue
            metadata = value["metadata"]
            phone_number_id = metadata["phone_number_id"]
            display = metadata.get("display_phone_number")
            contacts = _Contacts(value.get("contacts", []))
            for message in value.get("messages", []):
                yield Item(
                    kind="message",
                    field=name,
                    phone_number_id=phone_number_id,
                    display_phone_number=display,
                    data=message,
                    contact=contacts.of(message),
                )
            for status in value.get("statuses", []):
                yield Item("status", name, phone_number_id, display, status)
            for error in value.get("errors", []):
                yield Item("error", name, phone_number_id, display, error)


class _Contacts:
    """A value's contacts, found by ``wa_id`` or ``user_id`` in constant time (a batch can hold
    thousands of messages and contacts); the first contact of an id wins."""

    def __init__(self, contacts: list[dict[str, Any]]) -> None:
        self.only = contacts[0] if len(contacts) == 1 else None
        self.by_wa_id: dict[str, dict[str, Any]] = {}
        self.by_user_id: dict[str, dict[str, Any]] = {}
        for contact in contacts:
            for key, index in (("wa_id", self.by_wa_id), ("user_id", self.by_user_id)):
                found = contact.get(key)
                if isinstance(found, str) and found:
                    index.setdefault(found, contact)

    def of(self, message: dict[str, Any]) -> dict[str, Any] | None:
        sender, sender_user = message.get("from"), message.get("from_user_id")
        if isinstance(sender, str) and sender in self.by_wa_id:
            return self.by_wa_id[sender]
        if isinstance(sender_user, str) and sender_user in self.by_user_id:
            return self.by_user_id[sender_user]
        return self.only


#: The longest id taken from a webhook (Meta's are well under 100 characters).
MAX_ID_LENGTH = 512


def _text_problem(name: str, value: object, *, required: bool) -> str | None:
    if value is None:
        return f"{name} is missing" if required else None
    if not isinstance(value, str):
        return f"{name} is a JSON {type(value).__name__}, not a string"
    if required and not value:
        return f"{name} is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{name} is longer than {MAX_ID_LENGTH} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} is not valid Unicode (a lone surrogate)"
    return None


def item_problem(item: Item) -> str | None:
    """Why a message or status item cannot be handled, or None. Checked in ``parse`` (so that a bad
    item is dead-lettered alone) and again where an item is used."""
    data = item.data
    problems = [
        _text_problem("phone_number_id", item.phone_number_id, required=True),
        _text_problem("id", data.get("id"), required=True),
    ]
    if item.kind == "message":
        problems.append(_text_problem("type", data.get("type"), required=False))
        problems.append(_text_problem("from", data.get("from"), required=False))
        problems.append(_text_problem("from_user_id", data.get("from_user_id"), required=False))
        if not data.get("from") and not data.get("from_user_id"):
            problems.append("neither from nor from_user_id: there is no one to answer")
    else:
        problems.append(_text_problem("status", data.get("status"), required=True))
    return next((problem for problem in problems if problem is not None), None)


def handoff_problem(item: dict[str, Any]) -> str | None:
    """:func:`item_problem` for the item a stage receives from ``parse`` (or from a replay)."""
    message = item.get("message")
    if not isinstance(message, dict):
        return "the item has no message object"
    phone_number_id = item.get("phone_number_id")
    return item_problem(Item("message", "messages", phone_number_id, None, message))

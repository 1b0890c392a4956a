"""Meta's checks of a ``POST /{phone_number_id}/messages`` body, as the emulated Graph API makes them.

The sandbox must refuse what Meta refuses, with Meta's error codes, or a bot passes the sandbox
and fails in production. :func:`refusal` walks a send (or read receipt / typing indicator) body
and returns the first rule it breaks, as Meta words it (docs/whatsapp.md, *What the emulator
refuses*): ``131008`` for a missing parameter, ``131009`` for a value out of its range (counts,
lengths of interactive parts), ``100`` for an unknown type or a field over its length.

The limits are Meta's own; where the builders in :mod:`daemon.messages` enforce a stricter
reading (a list's body), the emulator takes Meta's, so that every body Meta takes passes here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daemon import messages as m

#: The message types a send may have.
TYPES = frozenset(
    {"audio", "contacts", "document", "image", "interactive", "location", "reaction",
     "sticker", "template", "text", "video"}
)  # fmt: skip
MEDIA = frozenset({"audio", "document", "image", "sticker", "video"})
#: Interactive types Meta takes; only the first three are checked in depth.
INTERACTIVE_TYPES = frozenset(
    {"button", "list", "cta_url", "location_request_message", "flow", "product", "product_list",
     "catalog_message", "address_message", "call_permission_request"}
)  # fmt: skip
#: A list's body may be 4,096 characters on Meta's list page (other interactive bodies 1,024).
LIST_BODY_MAX = 4096
#: A template's name (Meta's template manager takes 512 characters) and language code (``en_US``).
TEMPLATE_NAME_MAX, TEMPLATE_LANGUAGE_MAX = 512, 16


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused call: the HTTP status, Meta's code, its title and ``error_data.details``."""

    status: int
    code: int
    message: str
    details: str | None = None


def _missing(name: str) -> Refusal:
    return Refusal(400, 131008, "Required parameter is missing", f"Parameter '{name}' is required.")


def _invalid(details: str) -> Refusal:
    return Refusal(400, 131009, "Parameter value is not valid", details)


def _too_long(name: str, maximum: int) -> Refusal:
    return Refusal(400, 100, f"Param {name} must be at most {maximum} characters long.")


def _text(
    part: Mapping[str, Any], key: str, name: str, maximum: int, *, required: bool = True, code: int = 100
) -> Refusal | None:
    """``part[key]``: a string of 1 to ``maximum`` characters (or absent, when not ``required``)."""
    value = part.get(key)
    if value is None:
        return _missing(name) if required else None
    if not isinstance(value, str):
        return Refusal(400, 100, f"Param {name} must be a string.")
    if (required and not value) or len(value) > maximum:
        if code == 100:
            return _too_long(name, maximum) if value else _missing(name)
        return _invalid(f"{name} length invalid. Min length: 1, Max length: {maximum}")
    return None


def refusal(body: object) -> Refusal | None:
    """The first of Meta's rules ``body`` breaks, or None when Meta would accept it."""
    if not isinstance(body, Mapping) or body.get("messaging_product") != "whatsapp":
        return Refusal(400, 100, "The parameter messaging_product is required.")
    if body.get("status") is not None:
        return _receipt(body)
    if not (body.get("to") or body.get("recipient")):
        return _missing("to")
    callback = body.get("biz_opaque_callback_data")
    if callback is not None and (not isinstance(callback, str) or len(callback) > m.CALLBACK_DATA_MAX):
        return _too_long("biz_opaque_callback_data", m.CALLBACK_DATA_MAX)
    kind = body.get("type", "text")
    if kind not in TYPES:
        names = ", ".join(sorted(name.upper() for name in TYPES))
        return Refusal(400, 100, f'Param type must be one of {{{names}}} - got "{kind}".')
    part = body.get(kind)
    if kind == "contacts":
        return _contacts(part)
    if not isinstance(part, Mapping):
        return _missing(kind)
    if kind == "text":
        return _text(part, "body", "text['body']", m.TEXT_MAX)
    if kind in MEDIA:
        return _media(kind, part)
    if kind == "location":
        return _location(part)
    if kind == "reaction":
        if not part.get("message_id"):
            return _missing("reaction['message_id']")
        return None if isinstance(part.get("emoji"), str) else _missing("reaction['emoji']")
    if kind == "template":
        language = part.get("language")
        if not part.get("name"):
            return _missing("template['name']")
        if not isinstance(language, Mapping) or not language.get("code"):
            return _missing("template['language']['code']")
        components = part.get("components")
        if components is not None and (not isinstance(components, Sequence) or isinstance(components, str)):
            return Refusal(400, 100, "Param template['components'] must be an array.")
        return _text(part, "name", "template['name']", TEMPLATE_NAME_MAX) or _text(
            language, "code", "template['language']['code']", TEMPLATE_LANGUAGE_MAX
        )
    return _interactive(part)


def _receipt(body: Mapping[str, Any]) -> Refusal | None:
    if body.get("status") != "read":
        return _invalid(f"status must be read, not {body.get('status')!r}")
    if not body.get("message_id"):
        return _missing("message_id")
    indicator = body.get("typing_indicator")
    if indicator is not None and (not isinstance(indicator, Mapping) or indicator.get("type") != "text"):
        return _invalid("typing_indicator['type'] must be text")
    return None


def _media(kind: str, part: Mapping[str, Any]) -> Refusal | None:
    if not part.get("id") and not part.get("link"):
        return _missing(f"{kind}['id'] or {kind}['link']")
    if part.get("id") and part.get("link"):
        return Refusal(400, 100, f"Param {kind} must have either id or link, not both.")
    link = part.get("link")
    if link is not None and (not isinstance(link, str) or not link.startswith(("http://", "https://"))):
        return Refusal(400, 100, f"Param {kind}['link'] must be an HTTP or HTTPS URL.")
    return _text(part, "caption", f"{kind}['caption']", m.CAPTION_MAX, required=False)


def _location(part: Mapping[str, Any]) -> Refusal | None:
    for name, limit in (("latitude", 90), ("longitude", 180)):
        value = part.get(name)
        if value is None:
            return _missing(f"location['{name}']")
        if isinstance(value, bool):
            return Refusal(400, 100, f"Param location['{name}'] must be a number.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            return Refusal(400, 100, f"Param location['{name}'] must be a number.")
        if not -limit <= number <= limit:
            return _invalid(f"location['{name}'] must be between -{limit} and {limit}")
    return None


def _contacts(part: object) -> Refusal | None:
    if not isinstance(part, Sequence) or isinstance(part, str):
        return _missing("contacts")
    if not m.CONTACTS_MIN <= len(part) <= m.CONTACTS_MAX:
        return _invalid(
            f"Contacts count is invalid. Min count: {m.CONTACTS_MIN}, Max count: {m.CONTACTS_MAX}"
        )
    for contact in part:
        name = contact.get("name") if isinstance(contact, Mapping) else None
        if not isinstance(name, Mapping) or not name.get("formatted_name"):
            return _missing("contacts['name']['formatted_name']")
    return None


def _interactive(part: Mapping[str, Any]) -> Refusal | None:
    kind = part.get("type")
    if kind not in INTERACTIVE_TYPES:
        return _invalid(f"Interactive type is not supported: {kind!r}")
    action = part.get("action")
    if not isinstance(action, Mapping):
        return _missing("interactive['action']")
    body = part.get("body")
    if kind in ("button", "list", "cta_url", "location_request_message"):
        if not isinstance(body, Mapping):
            return _missing("interactive['body']")
        maximum = LIST_BODY_MAX if kind == "list" else m.INTERACTIVE_BODY_MAX
        if refused := _text(body, "text", "interactive['body']['text']", maximum):
            return refused
    for name in ("header", "footer"):
        piece = part.get(name)
        if isinstance(piece, Mapping) and (name == "footer" or piece.get("type") == "text"):
            maximum = m.HEADER_MAX if name == "header" else m.FOOTER_MAX
            if refused := _text(piece, "text", f"interactive['{name}']['text']", maximum):
                return refused
    if kind == "button":
        return _buttons(action)
    if kind == "list":
        return _list(action)
    if kind == "cta_url":
        parameters = action.get("parameters")
        if not isinstance(parameters, Mapping):
            return _missing("interactive['action']['parameters']")
        if refused := _text(parameters, "display_text", "Display text", m.CTA_DISPLAY_TEXT_MAX, code=131009):
            return refused
        url = parameters.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return _invalid("URL is invalid: it must start with http:// or https://")
    return None


def _buttons(action: Mapping[str, Any]) -> Refusal | None:
    buttons = action.get("buttons")
    if not isinstance(buttons, Sequence) or isinstance(buttons, str):
        return _missing("interactive['action']['buttons']")
    if not m.BUTTONS_MIN <= len(buttons) <= m.BUTTONS_MAX:
        return _invalid(f"Buttons count is invalid. Min count: {m.BUTTONS_MIN}, Max count: {m.BUTTONS_MAX}")
    titles: set[str] = set()
    ids: set[str] = set()
    for button in buttons:
        reply = button.get("reply") if isinstance(button, Mapping) else None
        if not isinstance(reply, Mapping) or button.get("type") != "reply":
            return _missing("interactive['action']['buttons'][]['reply']")
        if refused := _text(reply, "title", "Button title", m.BUTTON_TITLE_MAX, code=131009):
            return refused
        if refused := _text(reply, "id", "Button id", m.BUTTON_ID_MAX, code=131009):
            return refused
        if reply["title"] in titles:
            return _invalid("Button title is not unique")
        if reply["id"] in ids:
            return _invalid("Button id is not unique")
        titles.add(reply["title"])
        ids.add(reply["id"])
    return None


def _list(action: Mapping[str, Any]) -> Refusal | None:
    if refused := _text(action, "button", "Button label", m.LIST_BUTTON_MAX, code=131009):
        return refused
    sections = action.get("sections")
    if not isinstance(sections, Sequence) or isinstance(sections, str) or not sections:
        return _missing("interactive['action']['sections']")
    if len(sections) > m.SECTIONS_MAX:
        return _invalid(f"Sections count is invalid. Min count: 1, Max count: {m.SECTIONS_MAX}")
    ids: set[str] = set()
    count = 0
    for section in sections:
        rows = section.get("rows") if isinstance(section, Mapping) else None
        if (
            not isinstance(section, Mapping)
            or not isinstance(rows, Sequence)
            or isinstance(rows, str)
            or not rows
        ):
            return _missing("interactive['action']['sections'][]['rows']")
        titled = len(sections) > 1  # several sections need titles
        if refused := _text(
            section, "title", "Section title", m.SECTION_TITLE_MAX, required=titled, code=131009
        ):
            return refused
        for row in rows:
            if not isinstance(row, Mapping):
                return _missing("interactive['action']['sections'][]['rows'][]")
            for key, name, maximum, required in (
                ("id", "Row id", m.ROW_ID_MAX, True),
                ("title", "Row title", m.ROW_TITLE_MAX, True),
                ("description", "Row description", m.ROW_DESCRIPTION_MAX, False),
            ):
                if refused := _text(row, key, name, maximum, required=required, code=131009):
                    return refused
            if row["id"] in ids:
                return _invalid("Row id is not unique")
            ids.add(row["id"])
            count += 1
    if count > m.ROWS_MAX:
        return _invalid(f"Total row count exceed max allowed count: {m.ROWS_MAX}")
    return None

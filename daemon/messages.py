"""Typed builders for every outbound message kind of the Cloud API (docs/whatsapp.md, *Sending*).

A handler returns these (or plain dicts, as before). Each builder checks Meta's limits when it is
made, so a bot gets a :class:`MessageInvalid` naming the field where it built the message, not a
400 from Meta minutes later; :meth:`Outbound.to_body` is the type-specific part of the
``POST /{phone_number_id}/messages`` body (wapipe adds ``messaging_product`` and the recipient).

Where Meta's documents disagree on a limit, the stricter figure is enforced (a list's body: 1,024
characters, not 4,096). Lengths are counted in Unicode code points, as Meta counts them.

::

    from daemon.messages import Button, Buttons, Text

    Text("Your order ships today: https://example.com/t/77", preview_url=True)
    Buttons("Confirm your slot?", [Button("yes_77", "Yes"), Button("no_77", "No")])
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

#: Text message body.
TEXT_MAX = 4096
#: Caption of an image, video or document.
CAPTION_MAX = 1024
#: Body of an interactive message (reply buttons, list, CTA URL, location request).
INTERACTIVE_BODY_MAX = 1024
#: Header text and footer of an interactive message.
HEADER_MAX = 60
FOOTER_MAX = 60
#: Reply buttons: how many, and each one's title and id.
BUTTONS_MIN, BUTTONS_MAX = 1, 3
BUTTON_TITLE_MAX = 20
BUTTON_ID_MAX = 256
#: Lists: sections, rows in all, and their texts.
SECTIONS_MAX = 10
ROWS_MAX = 10
ROW_ID_MAX = 200
ROW_TITLE_MAX = 24
ROW_DESCRIPTION_MAX = 72
SECTION_TITLE_MAX = 24
LIST_BUTTON_MAX = 20
#: A CTA URL button's label.
CTA_DISPLAY_TEXT_MAX = 20
#: Contacts in one contacts message.
CONTACTS_MIN, CONTACTS_MAX = 1, 5
#: Echoed in the statuses of the message.
CALLBACK_DATA_MAX = 512


#: The key of a body holding the template to send instead outside the window (never sent to Meta).
OUTSIDE_WINDOW = "wapipe_outside_window"
#: The key of a media object naming a local file that wapipe uploads before the send
#: (``{"path": …, "mime_type": …}``), replaced by the uploaded media's ``id``.
UPLOAD = "wapipe_upload"

MB = 1_000_000
#: What may be uploaded, by kind: file suffix → MIME type, and the largest file (Meta's "5 MB" taken
#: as 5,000,000 bytes: the stricter reading).
UPLOAD_TYPES: dict[str, dict[str, str]] = {
    "image": {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"},
    "video": {".mp4": "video/mp4", ".3gp": "video/3gpp", ".3gpp": "video/3gpp"},
    "audio": {
        ".aac": "audio/aac",
        ".amr": "audio/amr",
        ".mp3": "audio/mpeg",
        ".m4a": "audio/mp4",
        ".ogg": "audio/ogg",
        ".opus": "audio/ogg",
    },
    "document": {
        ".txt": "text/plain",
        ".pdf": "application/pdf",
        ".doc": "application/msword",
        ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ".xls": "application/vnd.ms-excel",
        ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ".ppt": "application/vnd.ms-powerpoint",
        ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    },
    "sticker": {".webp": "image/webp"},
}
UPLOAD_MAX_BYTES = {"image": 5 * MB, "video": 16 * MB, "audio": 16 * MB, "document": 100 * MB}
#: Stickers: an animated WebP may be 500 KB, a static one 100 KB.
STICKER_MAX_BYTES, ANIMATED_STICKER_MAX_BYTES = 100_000, 500_000


class MessageInvalid(ValueError):
    """An outbound message breaks one of Meta's rules; the message names the field and the limit."""


def _text(name: str, value: object, maximum: int, *, minimum: int = 1) -> str:
    if not isinstance(value, str):
        raise MessageInvalid(f"{name} must be a string, not {type(value).__name__}")
    if len(value) < minimum:
        raise MessageInvalid(f"{name} must not be empty")
    if len(value) > maximum:
        raise MessageInvalid(f"{name} is {len(value)} characters; the most is {maximum}")
    return value


def _optional(name: str, value: str | None, maximum: int) -> str | None:
    return None if value is None else _text(name, value, maximum)


def _link(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MessageInvalid(f"{name} must be an http(s) URL")
    return value


@dataclass(frozen=True, kw_only=True)
class Outbound:
    """What every outbound message may carry besides its own fields."""

    #: Quote this inbound message (``context.message_id``).
    reply_to: str | None = None
    #: Opaque data Meta echoes in this message's statuses (at most 512 characters).
    callback_data: str | None = None
    #: What to send instead when the user's 24-hour window has closed (only a template may go
    #: out then); without it, a free-form message outside the window is not sent.
    outside_window: Template | None = None

    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.callback_data is not None:
            _text("callback_data", self.callback_data, CALLBACK_DATA_MAX)
        if self.reply_to is not None:
            _text("reply_to", self.reply_to, 512)

    def payload(self) -> Any:
        """The object under the message's ``type`` key."""
        raise NotImplementedError

    def to_body(self) -> dict[str, Any]:
        """The type-specific part of the ``/messages`` body."""
        body: dict[str, Any] = {"type": self.kind, self.kind: self.payload()}
        if self.reply_to is not None:
            body["context"] = {"message_id": self.reply_to}
        if self.callback_data is not None:
            body["biz_opaque_callback_data"] = self.callback_data
        if self.outside_window is not None:
            body[OUTSIDE_WINDOW] = self.outside_window.to_body()
        return body

    @property
    def free_form(self) -> bool:
        """Whether Meta allows it only inside the 24-hour customer-service window."""
        return True


# --- text and media --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text(Outbound):
    """A text message; ``preview_url`` renders a preview of its first http(s) URL."""

    body: str
    preview_url: bool = False
    kind: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        super().__post_init__()
        _text("text body", self.body, TEXT_MAX)

    def payload(self) -> dict[str, Any]:
        text: dict[str, Any] = {"body": self.body}
        if self.preview_url:
            text["preview_url"] = True
        return text


@dataclass(frozen=True)
class _Media(Outbound):
    """Media by an uploaded (or received) media ``id``, by a public ``link``, or a local ``file``
    that wapipe uploads (``POST /{phone_number_id}/media``) when it sends: exactly one.

    A ``file`` is checked when the message is built (a regular file, a type Meta takes for this
    kind by its suffix, within Meta's size limit) and read when it is sent, by the worker sending
    it: every worker must see it at the same path. Its upload is kept for a week, by content, so
    a menu sent to a thousand users is uploaded once."""

    id: str | None = None
    link: str | None = None
    file: str | os.PathLike[str] | None = None
    #: The checked upload of :attr:`file` (its absolute path and MIME type), made once when built.
    _checked_file: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)
    captioned: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if sum(value is not None for value in (self.id, self.link, self.file)) != 1:
            raise MessageInvalid(f"{self.kind} needs exactly one of id, link and file")
        if self.id is not None:
            _text(f"{self.kind} id", self.id, 256)
        if self.link is not None:
            _link(f"{self.kind} link", self.link)
        if self.file is not None:
            object.__setattr__(self, "_checked_file", _upload(self.kind, self.file))

    def payload(self) -> dict[str, Any]:
        if self._checked_file is not None:
            return {UPLOAD: dict(self._checked_file)}
        return {"id": self.id} if self.id is not None else {"link": self.link}


@dataclass(frozen=True)
class _Captioned(_Media):
    caption: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _optional(f"{self.kind} caption", self.caption, CAPTION_MAX)

    def payload(self) -> dict[str, Any]:
        media = super().payload()
        if self.caption is not None:
            media["caption"] = self.caption
        return media


@dataclass(frozen=True)
class Image(_Captioned):
    kind: ClassVar[str] = "image"


@dataclass(frozen=True)
class Video(_Captioned):
    kind: ClassVar[str] = "video"


@dataclass(frozen=True)
class Document(_Captioned):
    filename: str | None = None
    kind: ClassVar[str] = "document"

    def __post_init__(self) -> None:
        super().__post_init__()
        _optional("document filename", self.filename, 240)

    def payload(self) -> dict[str, Any]:
        media = super().payload()
        if self.filename is not None:
            media["filename"] = self.filename
        return media


@dataclass(frozen=True)
class Audio(_Media):
    """Audio; ``voice`` only for an OGG/OPUS voice note (shown with a microphone, "played" status)."""

    voice: bool = False
    kind: ClassVar[str] = "audio"

    def payload(self) -> dict[str, Any]:
        media = super().payload()
        if self.voice:
            media["voice"] = True
        return media


@dataclass(frozen=True)
class Sticker(_Media):
    kind: ClassVar[str] = "sticker"


# --- location and contacts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Location(Outbound):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    kind: ClassVar[str] = "location"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, bound in (("latitude", self.latitude, 90), ("longitude", self.longitude, 180)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise MessageInvalid(f"{name} must be a number")
            if abs(value) > bound:
                raise MessageInvalid(f"{name} must be between -{bound} and {bound}")
        _optional("location name", self.name, 1000)
        _optional("location address", self.address, 1000)

    def payload(self) -> dict[str, Any]:
        location: dict[str, Any] = {"latitude": self.latitude, "longitude": self.longitude}
        if self.name is not None:
            location["name"] = self.name
        if self.address is not None:
            location["address"] = self.address
        return location


@dataclass(frozen=True)
class Contact:
    """One contact card: a formatted name and, optionally, phones and emails (``(value, type)``)."""

    formatted_name: str
    first_name: str | None = None
    last_name: str | None = None
    phones: Sequence[tuple[str, str]] = ()
    emails: Sequence[tuple[str, str]] = ()
    organization: str | None = None

    def __post_init__(self) -> None:
        _text("contact formatted_name", self.formatted_name, 1000)

    def to_json(self) -> dict[str, Any]:
        name: dict[str, Any] = {"formatted_name": self.formatted_name}
        if self.first_name:
            name["first_name"] = self.first_name
        if self.last_name:
            name["last_name"] = self.last_name
        card: dict[str, Any] = {"name": name}
        if self.phones:
            card["phones"] = [{"phone": phone, "type": kind} for phone, kind in self.phones]
        if self.emails:
            card["emails"] = [{"email": email, "type": kind} for email, kind in self.emails]
        if self.organization:
            card["org"] = {"company": self.organization}
        return card


@dataclass(frozen=True)
class Contacts(Outbound):
    contacts: Sequence[Contact]
    kind: ClassVar[str] = "contacts"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not CONTACTS_MIN <= len(self.contacts) <= CONTACTS_MAX:
            raise MessageInvalid(
                f"contacts holds {CONTACTS_MIN} to {CONTACTS_MAX} cards, not {len(self.contacts)}"
            )

    def payload(self) -> list[dict[str, Any]]:
        return [contact.to_json() for contact in self.contacts]


# --- interactive ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """An interactive message's header: ``text`` (at most 60 characters) or one media object."""

    text: str | None = None
    media: Image | Video | Document | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.media is None):
            raise MessageInvalid("a header has exactly one of text and media")
        _optional("header text", self.text, HEADER_MAX)

    def to_json(self) -> dict[str, Any]:
        if self.text is not None:
            return {"type": "text", "text": self.text}
        assert self.media is not None
        return {"type": self.media.kind, self.media.kind: self.media.payload()}


@dataclass(frozen=True)
class _Interactive(Outbound):
    body: str
    header: Header | str | None = field(default=None, kw_only=True)
    footer: str | None = field(default=None, kw_only=True)
    kind: ClassVar[str] = "interactive"
    interactive_type: ClassVar[str] = ""
    text_headers_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _text(f"{self.interactive_type} body", self.body, INTERACTIVE_BODY_MAX)
        _optional("footer", self.footer, FOOTER_MAX)
        header = self._header()
        if header is not None and header.media is not None and self.text_headers_only:
            raise MessageInvalid(f"a {self.interactive_type} message takes a text header only")

    def _header(self) -> Header | None:
        return Header(text=self.header) if isinstance(self.header, str) else self.header

    def action(self) -> dict[str, Any]:
        raise NotImplementedError

    def payload(self) -> dict[str, Any]:
        interactive: dict[str, Any] = {"type": self.interactive_type}
        header = self._header()
        if header is not None:
            interactive["header"] = header.to_json()
        interactive["body"] = {"text": self.body}
        if self.footer is not None:
            interactive["footer"] = {"text": self.footer}
        interactive["action"] = self.action()
        return interactive


@dataclass(frozen=True)
class Button:
    """A reply button: its ``id`` comes back in the user's ``button_reply``."""

    id: str
    title: str

    def __post_init__(self) -> None:
        _text("button id", self.id, BUTTON_ID_MAX)
        _text("button title", self.title, BUTTON_TITLE_MAX)


@dataclass(frozen=True)
class Buttons(_Interactive):
    """Up to three reply buttons under a body."""

    buttons: Sequence[Button] = ()
    interactive_type: ClassVar[str] = "button"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not BUTTONS_MIN <= len(self.buttons) <= BUTTONS_MAX:
            raise MessageInvalid(f"reply buttons: {BUTTONS_MIN} to {BUTTONS_MAX}, not {len(self.buttons)}")
        _unique("button title", [button.title for button in self.buttons])
        _unique("button id", [button.id for button in self.buttons])

    def action(self) -> dict[str, Any]:
        return {"buttons": [{"type": "reply", "reply": {"id": b.id, "title": b.title}} for b in self.buttons]}


@dataclass(frozen=True)
class Row:
    """A list row: its ``id`` comes back in the user's ``list_reply``."""

    id: str
    title: str
    description: str | None = None

    def __post_init__(self) -> None:
        _text("row id", self.id, ROW_ID_MAX)
        _text("row title", self.title, ROW_TITLE_MAX)
        _optional("row description", self.description, ROW_DESCRIPTION_MAX)

    def to_json(self) -> dict[str, Any]:
        row = {"id": self.id, "title": self.title}
        if self.description is not None:
            row["description"] = self.description
        return row


@dataclass(frozen=True)
class Section:
    rows: Sequence[Row]
    title: str | None = None

    def __post_init__(self) -> None:
        _optional("section title", self.title, SECTION_TITLE_MAX)
        if not self.rows:
            raise MessageInvalid("a section needs at least one row")

    def to_json(self) -> dict[str, Any]:
        section: dict[str, Any] = {}
        if self.title is not None:
            section["title"] = self.title
        section["rows"] = [row.to_json() for row in self.rows]
        return section


@dataclass(frozen=True)
class ListMessage(_Interactive):
    """A list: a ``button`` that opens up to 10 sections of up to 10 rows in all."""

    button: str = ""
    sections: Sequence[Section] = ()
    interactive_type: ClassVar[str] = "list"
    text_headers_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _text("list button", self.button, LIST_BUTTON_MAX)
        if not 1 <= len(self.sections) <= SECTIONS_MAX:
            raise MessageInvalid(f"a list has 1 to {SECTIONS_MAX} sections, not {len(self.sections)}")
        rows = [row for section in self.sections for row in section.rows]
        if len(rows) > ROWS_MAX:
            raise MessageInvalid(f"a list has at most {ROWS_MAX} rows in all, not {len(rows)}")
        if len(self.sections) > 1 and any(section.title is None for section in self.sections):
            raise MessageInvalid("each section of a list with several sections needs a title")
        _unique("row id", [row.id for row in rows])

    def action(self) -> dict[str, Any]:
        return {"button": self.button, "sections": [section.to_json() for section in self.sections]}


@dataclass(frozen=True)
class CtaUrl(_Interactive):
    """A call-to-action button that opens ``url``."""

    display_text: str = ""
    url: str = ""
    interactive_type: ClassVar[str] = "cta_url"

    def __post_init__(self) -> None:
        super().__post_init__()
        _text("display_text", self.display_text, CTA_DISPLAY_TEXT_MAX)
        _link("url", self.url)

    def action(self) -> dict[str, Any]:
        return {"name": "cta_url", "parameters": {"display_text": self.display_text, "url": self.url}}


@dataclass(frozen=True)
class LocationRequest(_Interactive):
    """Asks the user to share their location (a "Send location" button)."""

    interactive_type: ClassVar[str] = "location_request_message"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.header is not None or self.footer is not None:
            raise MessageInvalid("a location request has a body only")

    def action(self) -> dict[str, Any]:
        return {"name": "send_location"}


# --- templates, reactions, read receipts ------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """A template parameter: ``Parameter.text("77")``, ``Parameter.payload("READY_77")``, or a
    media header (``Parameter.media(Image(link=...))``)."""

    json: dict[str, Any]

    @classmethod
    def text(cls, value: str, name: str | None = None) -> Parameter:
        _text("template parameter", value, 32768)
        parameter: dict[str, Any] = {"type": "text", "text": value}
        if name is not None:
            parameter["parameter_name"] = name
        return cls(parameter)

    @classmethod
    def payload(cls, value: str) -> Parameter:
        return cls({"type": "payload", "payload": _text("button payload", value, 1000)})

    @classmethod
    def media(cls, media: Image | Video | Document) -> Parameter:
        return cls({"type": media.kind, media.kind: media.payload()})

    @classmethod
    def currency(cls, fallback: str, code: str, amount_1000: int) -> Parameter:
        return cls(
            {
                "type": "currency",
                "currency": {"fallback_value": fallback, "code": code, "amount_1000": amount_1000},
            }
        )

    @classmethod
    def date_time(cls, fallback: str) -> Parameter:
        return cls({"type": "date_time", "date_time": {"fallback_value": fallback}})


@dataclass(frozen=True)
class Component:
    """A template component: ``header``, ``body``, or a ``button`` (with ``sub_type`` and ``index``)."""

    type: Literal["header", "body", "button"]
    parameters: Sequence[Parameter] = ()
    sub_type: Literal["quick_reply", "url", "copy_code"] | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        if self.type == "button" and (self.sub_type is None or self.index is None):
            raise MessageInvalid("a button component needs its sub_type and index")
        if self.index is not None and not 0 <= self.index <= 9:
            raise MessageInvalid("a button component's index is 0 to 9")

    def to_json(self) -> dict[str, Any]:
        component: dict[str, Any] = {"type": self.type}
        if self.sub_type is not None:
            component["sub_type"] = self.sub_type
            component["index"] = str(self.index)
        component["parameters"] = [parameter.json for parameter in self.parameters]
        return component


@dataclass(frozen=True)
class Template(Outbound):
    """A pre-approved template: the only kind Meta delivers outside the 24-hour window."""

    name: str
    language: str = "en_US"
    components: Sequence[Component] = field(default_factory=tuple)
    kind: ClassVar[str] = "template"

    def __post_init__(self) -> None:
        super().__post_init__()
        _text("template name", self.name, 512)
        _text("template language", self.language, 16)

    def payload(self) -> dict[str, Any]:
        template: dict[str, Any] = {"name": self.name, "language": {"code": self.language}}
        if self.components:
            template["components"] = [component.to_json() for component in self.components]
        return template

    @property
    def free_form(self) -> bool:
        return False


@dataclass(frozen=True)
class Reaction(Outbound):
    """React to a message the user sent; an empty ``emoji`` removes the reaction."""

    message_id: str
    emoji: str
    kind: ClassVar[str] = "reaction"

    def __post_init__(self) -> None:
        super().__post_init__()
        _text("reaction message_id", self.message_id, 512)
        _text("reaction emoji", self.emoji, 16, minimum=0)

    def payload(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "emoji": self.emoji}


def mark_read(message_id: str, *, typing_indicator: bool = False) -> dict[str, Any]:
    """The whole body that marks ``message_id`` (and the earlier ones) read; with
    ``typing_indicator``, shows "typing…" until the reply or for 25 s."""
    body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}
    if typing_indicator:
        body["typing_indicator"] = {"type": "text"}
    return body


def _upload(kind: str, file: str | os.PathLike[str]) -> dict[str, str]:
    """The upload of ``file`` as ``kind``: its absolute path and MIME type, checked against Meta's
    types and sizes."""
    path = Path(file).absolute()
    types = UPLOAD_TYPES[kind]
    mime_type = types.get(path.suffix.lower())
    if mime_type is None:
        raise MessageInvalid(f"{kind} file must end in one of {', '.join(sorted(types))}: {path.name!r}")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise MessageInvalid(f"{kind} file cannot be read: {error.strerror}: {path}") from None
    if not path.is_file():
        raise MessageInvalid(f"{kind} file is not a regular file: {path}")
    maximum = UPLOAD_MAX_BYTES.get(kind) or _sticker_max(path)
    if size > maximum:
        raise MessageInvalid(f"{kind} file is {size} bytes; the most Meta takes is {maximum}")
    if size == 0:
        raise MessageInvalid(f"{kind} file is empty: {path}")
    return {"path": str(path), "mime_type": mime_type}


def _sticker_max(path: Path) -> int:
    """An animated WebP (a ``VP8X`` header with the animation flag) may be larger than a static one."""
    with path.open("rb") as file:
        header = file.read(21)
    animated = header[12:16] == b"VP8X" and len(header) == 21 and bool(header[20] & 0x02)
    return ANIMATED_STICKER_MAX_BYTES if animated else STICKER_MAX_BYTES


def with_uploads(body: Any, upload: Callable[[dict[str, str]], str]) -> Any:
    """``body`` with each local file to upload (a media object's :data:`UPLOAD`, at any depth:
    a message's media, a template header's) replaced by the ``id`` that ``upload(spec)`` gives."""
    if isinstance(body, list):
        return [with_uploads(value, upload) for value in body]
    if not isinstance(body, dict):
        return body
    spec = body.get(UPLOAD)
    resolved = {key: with_uploads(value, upload) for key, value in body.items() if key != UPLOAD}
    if isinstance(spec, dict):
        resolved["id"] = upload(spec)
    return resolved


def has_uploads(body: Any) -> bool:
    """Whether ``body`` names a local file to upload, at any depth."""
    if isinstance(body, list):
        return any(has_uploads(value) for value in body)
    return isinstance(body, dict) and (UPLOAD in body or any(has_uploads(v) for v in body.values()))


def _unique(name: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise MessageInvalid(f"{name} {value!r} is used twice; each must be unique")
        seen.add(value)


def body_of(message: Outbound | dict[str, Any]) -> dict[str, Any]:
    """The body of a builder or of a handler's plain dict (which is taken as it is)."""
    return message.to_body() if isinstance(message, Outbound) else message


def text_of(body: dict[str, Any]) -> str:
    """What an outbound body says, for the context window: a text's body, a caption, an
    interactive body, a template's name; "" otherwise."""
    kind = body.get("type")
    payload = body.get(kind) if isinstance(kind, str) else None
    if not isinstance(payload, dict):
        return ""
    if kind == "text":
        return str(payload.get("body", ""))
    if kind == "interactive":
        inner = payload.get("body")
        return str(inner.get("text", "")) if isinstance(inner, dict) else ""
    if kind == "template":
        return f"[template {payload.get('name')}]"
    return str(payload.get("caption", ""))


def free_form(body: dict[str, Any]) -> bool:
    """Whether a body may only be sent inside the 24-hour window (everything but a template)."""
    return body.get("type") != "template"

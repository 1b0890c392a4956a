"""Typed inbound messages and the reply handler API, with the default handler (the README's *The default reply*).

A handler is ``def handle(message: InboundMessage) -> Sequence[...]`` (or ``async def``). Each
outbound is a typed builder (:mod:`daemon.messages`: ``Text("hi")``, ``Buttons(...)``…) or the
type-specific part of a Graph ``/messages`` body, e.g. ``{"type": "text", "text": {"body": "hi"}}``; wapipe adds ``messaging_product`` and the
recipient (``to`` / ``recipient``) unless the handler set them. Returning nothing means
"handled without reply": no read receipt is sent either.

Set ``WAPIPE_HANDLER=module:function`` to replace the default. The module is looked for in the
directory the command was started from (as Dramatiq's ``--path .`` does), then in the installed
packages, under every command.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon import messages
from daemon.envelope import MEDIA_TYPES
from daemon.pipeline import MessageItem, StoredMedia

Outbound = dict[str, Any]
Result = Sequence["Outbound | messages.Outbound"]
Handler = Callable[["InboundMessage"], Result | Awaitable[Result]]

#: WhatsApp's limit on a text message body.
TEXT_LIMIT = 4096
#: Kinds that get neither a reply nor a read receipt.
SILENT_TYPES = frozenset({"reaction", "system", "revoke", "edit"})


@dataclass(frozen=True, slots=True)
class Media:
    """A media object of an inbound message (image, video, audio, document, sticker)."""

    id: str | None
    mime_type: str | None
    sha256: str | None
    url: str | None = None
    caption: str | None = None
    filename: str | None = None
    voice: bool = False
    animated: bool = False


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Interactive:
    """``kind`` is ``button_reply``, ``list_reply``, ``nfm_reply``, another type, or None (errors only)."""

    kind: str | None
    id: str | None = None
    title: str | None = None
    response_json: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One inbound message with its routing data; ``raw`` is the message object as Meta sent it."""

    id: str
    type: str
    phone_number_id: str
    display_phone_number: str | None
    timestamp: str | None
    from_: str | None
    from_user_id: str | None
    group_id: str | None
    contact_name: str | None
    raw: dict[str, Any]
    text: str | None = None
    media: Media | None = None
    stored_media: StoredMedia | None = None
    location: Location | None = None
    contacts: tuple[dict[str, Any], ...] = ()
    interactive: Interactive | None = None
    button_text: str | None = None
    button_payload: str | None = None
    reaction_emoji: str | None = None
    reaction_to: str | None = None
    order_items: tuple[dict[str, Any], ...] = ()
    errors: tuple[dict[str, Any], ...] = field(default=())

    @property
    def user(self) -> str | None:
        """Who the message is from, as conversations are keyed: ``from_``, else ``from_user_id``."""
        return self.from_ or self.from_user_id

    @classmethod
    def from_item(cls, item: MessageItem) -> InboundMessage:
        """Build from the item ``parse`` hands on (``message``, ``phone_number_id``, ``contact``…).

        Every field is what its type says whatever the webhook held (a value of another JSON type
        becomes None or empty): a bot never gets a list where a string was promised. ``raw`` keeps
        the message exactly as Meta sent it.
        """
        raw = item.message
        kind = _text(raw.get("type")) or "unknown"
        body = _object(raw.get(kind))
        profile = _object(_object(item.contact).get("profile"))
        return cls(
            id=item.id,
            type=kind,
            phone_number_id=item.phone_number_id,
            display_phone_number=item.display_phone_number,
            timestamp=_text(raw.get("timestamp")),
            from_=_text(raw.get("from")),
            from_user_id=_text(raw.get("from_user_id")),
            group_id=_text(raw.get("group_id")),
            contact_name=_text(profile.get("name")),
            raw=raw,
            text=_text(body.get("body")) if kind == "text" else None,
            media=_media(body) if kind in MEDIA_TYPES else None,
            stored_media=item.stored_media,
            location=_location(body) if kind == "location" else None,
            contacts=_objects(raw.get("contacts")) if kind == "contacts" else (),
            interactive=_interactive(body) if kind == "interactive" else None,
            button_text=_text(body.get("text")) if kind == "button" else None,
            button_payload=_text(body.get("payload")) if kind == "button" else None,
            reaction_emoji=_text(body.get("emoji")) if kind == "reaction" else None,
            reaction_to=_text(body.get("message_id")) if kind == "reaction" else None,
            order_items=_objects(body.get("product_items")) if kind == "order" else (),
            errors=_objects(raw.get("errors")),
        )


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(value: object) -> tuple[dict[str, Any], ...]:
    """The objects of a JSON list (anything else: none)."""
    return tuple(entry for entry in value if isinstance(entry, dict)) if isinstance(value, list) else ()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _media(body: dict[str, Any]) -> Media:
    return Media(
        id=_text(body.get("id")),
        mime_type=_text(body.get("mime_type")),
        sha256=_text(body.get("sha256")),
        url=_text(body.get("url")),
        caption=_text(body.get("caption")),
        filename=_text(body.get("filename")),
        voice=body.get("voice") is True,
        animated=body.get("animated") is True,
    )


def _location(body: dict[str, Any]) -> Location | None:
    latitude, longitude = _number(body.get("latitude")), _number(body.get("longitude"))
    if latitude is None or longitude is None:
        return None
    return Location(latitude, longitude, name=_text(body.get("name")), address=_text(body.get("address")))


def _interactive(body: dict[str, Any]) -> Interactive | None:
    kind = _text(body.get("type"))
    if not kind:
        return None
    reply = _object(body.get(kind))
    return Interactive(
        kind=kind,
        id=_text(reply.get("id")),
        title=_text(reply.get("title")),
        response_json=_text(reply.get("response_json")),
    )


def reply_text(message: InboundMessage) -> str | None:
    """The default reply for ``message``, or None for the kinds that get no reply."""
    if message.type in SILENT_TYPES or message.group_id:
        return None
    return cut_text(_reply_text(message), TEXT_LIMIT)


def cut_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters without splitting a user-perceived character.

    A cut never leaves half of an emoji sequence (a skin tone without its emoji, a joiner without
    what it joins, half a flag) or a letter without its combining accents: it moves back to the
    start of that cluster instead.
    """
    if len(text) <= limit:
        return text
    cut = limit
    while cut > 0 and (_extends(text[cut]) or text[cut - 1] == _ZWJ):
        cut -= 1
    regional = 0
    while cut - regional > 0 and _is_regional(text[cut - regional - 1]):
        regional += 1
    if regional % 2 and _is_regional(text[cut]):
        cut -= 1  # the cut would split a flag (a pair of regional indicators)
    return text[:cut]


_ZWJ = "\u200d"


def _extends(char: str) -> bool:
    """True for characters that attach to the one before them (grapheme cluster extenders)."""
    code = ord(char)
    return (
        unicodedata.combining(char) != 0
        or unicodedata.category(char) in ("Mn", "Me", "Mc")
        or char == _ZWJ
        or 0xFE00 <= code <= 0xFE0F  # variation selectors (text / emoji presentation)
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tag characters (subdivision flags)
        or 0xE0100 <= code <= 0xE01EF  # variation selectors supplement
    )


def _is_regional(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _reply_text(message: InboundMessage) -> str:
    kind = message.type
    if kind == "text" and message.text is not None:
        return f"You said: {message.text}"
    if kind in MEDIA_TYPES:
        stored = message.stored_media
        if stored is not None:
            return f"Got your {kind} ({stored.size} bytes)."
        return f"Got your {kind}, but could not download it."
    if kind == "location" and message.location is not None:
        return f"Got your location: {message.location.latitude}, {message.location.longitude}"
    if kind == "contacts":
        return f"Got {len(message.contacts)} contact(s)."
    interactive = message.interactive
    if kind == "interactive" and interactive is not None:
        if interactive.kind in ("button_reply", "list_reply") and interactive.title is not None:
            return f"You chose: {interactive.title}"
        if interactive.kind == "nfm_reply":
            return "Thanks, your form was received."
    if kind == "button" and message.button_text is not None:
        return f"You chose: {message.button_text}"
    if kind == "order":
        return f"Got your order of {len(message.order_items)} item(s)."
    return f"Sorry, I can't read {kind} messages yet."


def default_handler(message: InboundMessage) -> list[Outbound]:
    """One text reply quoting the inbound message, or nothing for the silent kinds."""
    text = reply_text(message)
    if text is None:
        return []
    return [{"type": "text", "text": {"body": text}, "context": {"message_id": message.id}}]


class HandlerError(Exception):
    """``WAPIPE_HANDLER`` names something that cannot be imported or called."""


def load_handler(spec: str | None, directory: Path | None = None) -> Handler:
    """Import ``module:function`` from ``directory`` (default: the working directory) or the
    installed packages; None gives the default handler.

    Raises:
        HandlerError: one line saying which module could not be found where, what its import
            raised, or that the function is missing or not callable.
    """
    if spec is None:
        return default_handler
    module_name, _, attribute = spec.partition(":")
    where = str((directory or Path.cwd()).resolve())
    if where not in sys.path:
        sys.path.insert(0, where)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise HandlerError(f"no module {module_name!r} in {where} or the installed packages") from None
        raise HandlerError(f"importing {module_name!r} failed: {error}") from None
    except Exception as error:  # noqa: BLE001 - a bot's module may raise anything while it loads
        raise HandlerError(f"importing {module_name!r} failed: {_one_line(error)}") from None
    handler = getattr(module, attribute, None)
    if handler is None or not callable(handler):
        raise HandlerError(f"module {module_name!r} ({_origin(module)}) has no callable {attribute!r}")
    return handler  # type: ignore[no-any-return]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, SyntaxError) and error.filename:
        return f"SyntaxError in {error.filename} line {error.lineno}: {error.msg}"
    return f"{type(error).__name__}: {text}"[:300]


def _origin(module: object) -> str:
    return str(getattr(module, "__file__", None) or "built in")


def call_handler(
    handler: Callable[..., Any],
    message: InboundMessage,
    run_async: Callable[[Coroutine[Any, Any, Any]], Any],
    conversation: Any = None,
) -> list[Outbound]:
    """Run a sync handler here, an async one through ``run_async`` (e.g. on the worker's event
    loop), and check that it returned a list of messages. With a ``conversation``, the handler
    takes it as its second argument (see :mod:`daemon.bot`)."""
    result = handler(message) if conversation is None else handler(message, conversation)
    if inspect.isawaitable(result):
        result = run_async(_awaited(result))
    return checked_outbound(result)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def checked_outbound(result: Sequence[Outbound | messages.Outbound] | None) -> list[Outbound]:
    """A handler's result as a list of bodies: builders (:mod:`daemon.messages`) made into their
    bodies, plain dicts with a ``type`` taken as they are.

    Raises:
        TypeError: anything else.
    """
    outbound = [
        messages.body_of(item) if isinstance(item, messages.Outbound) else item for item in result or ()
    ]
    for item in outbound:
        if not isinstance(item, dict) or "type" not in item:
            raise TypeError("a handler must return a sequence of message builders or dicts with a 'type'")
    return outbound


def inbound_text(message: InboundMessage) -> str:
    """What a user's message says, for the context window: its text, caption, chosen button or
    row title; "" for a message without words."""
    if message.text is not None:
        return message.text
    if message.interactive is not None and message.interactive.title:
        return message.interactive.title
    if message.button_text:
        return message.button_text
    if message.media is not None and message.media.caption:
        return message.media.caption
    return ""

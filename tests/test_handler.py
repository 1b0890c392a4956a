"""The typed inbound model and the default reply table, as pure functions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemon.handler import (
    HandlerError,
    InboundMessage,
    call_handler,
    default_handler,
    load_handler,
    reply_text,
)
from daemon.pipeline import MessageItem


def item(message: dict[str, Any], **extra: Any) -> MessageItem:
    """The hand-off ``reply`` receives, decoded as the worker decodes it."""
    base = {"id": "wamid.T", "from": "447700900123", "timestamp": "1767225600"}
    return MessageItem.from_kwargs(
        {
            "item": {
                "message": base | message,
                "phone_number_id": "620000000000001",
                "contact": None,
                "received_at": 1767225600.0,
                **extra,
            }
        }
    )


def text_of(message: dict[str, Any], **extra: Any) -> str | None:
    return reply_text(InboundMessage.from_item(item(message, **extra)))


def test_unknown_future_types_get_the_sorry_line() -> None:
    """A type wapipe has never heard of is answered, not dropped."""
    assert text_of({"type": "hologram", "hologram": {"x": 1}}) == "Sorry, I can't read hologram messages yet."


def test_interactive_with_only_errors() -> None:
    """`interactive` carrying only `errors` is a message wapipe cannot read."""
    message = {"type": "interactive", "errors": [{"code": 131051}]}
    parsed = InboundMessage.from_item(item(message))
    assert parsed.interactive is None
    assert parsed.errors == ({"code": 131051},)
    assert reply_text(parsed) == "Sorry, I can't read interactive messages yet."


@pytest.mark.parametrize("kind", ["reaction", "system", "revoke", "edit"])
def test_silent_kinds_get_nothing(kind: str) -> None:
    """Reactions, system messages, revokes and edits get no reply (and so no read receipt)."""
    assert default_handler(InboundMessage.from_item(item({"type": kind, kind: {}}))) == []


def test_group_messages_get_nothing() -> None:
    """A message in a group is not answered."""
    assert text_of({"type": "text", "text": {"body": "hi"}, "group_id": "G1"}) is None


def test_text_reply_is_cut_to_4096_characters() -> None:
    """`You said: {body}` never exceeds WhatsApp's text limit."""
    reply = text_of({"type": "text", "text": {"body": "é" * 5000}})
    assert reply is not None
    assert len(reply) == 4096
    assert reply.startswith("You said: éé")


@pytest.mark.parametrize(
    ("tail", "kept"),
    [
        ("👍🏽", ""),  # emoji + skin tone: both or neither
        ("👩\u200d💻", ""),  # a joined sequence
        ("🇬🇧", ""),  # a flag: two regional indicators
        ("e\u0301", ""),  # e + combining acute
        ("❤️", ""),  # heart + variation selector 16
    ],
    ids=["skin-tone", "zwj", "flag", "combining", "variation-selector"],
)
def test_a_cut_never_splits_what_a_person_sees_as_one_character(tail: str, kept: str) -> None:
    """When the 4,096th character falls inside an emoji sequence or an accented letter, the whole
    cluster is left out rather than half of it sent."""
    from daemon.handler import cut_text

    prefix = "x" * 4095
    cut = cut_text(prefix + tail + "more", 4096)
    assert cut == prefix + kept
    assert cut_text(prefix[:4000] + tail, 4096) == prefix[:4000] + tail  # short enough: untouched
    assert cut_text("🇬🇧🇫🇷", 3) == "🇬🇧"  # never half of the second flag


def test_media_reply_names_the_stored_size() -> None:
    """With a stored file, the reply names its size; without, it says it could not download it."""
    stored = {"path": "/x", "mime_type": "image/jpeg", "size": 19, "sha256_ok": True}
    assert (
        text_of({"type": "image", "image": {"id": "1"}}, stored_media=stored) == "Got your image (19 bytes)."
    )
    assert (
        text_of({"type": "document", "document": {"id": "1"}})
        == "Got your document, but could not download it."
    )


def test_default_reply_quotes_the_message() -> None:
    """The default outbound is one text message with context.message_id = the inbound id."""
    [outbound] = default_handler(InboundMessage.from_item(item({"type": "text", "text": {"body": "x"}})))
    assert outbound == {"type": "text", "text": {"body": "You said: x"}, "context": {"message_id": "wamid.T"}}


def test_typed_fields_are_filled() -> None:
    """Typed parts are parsed from the raw object (media, location, interactive, order, reaction)."""
    media = InboundMessage.from_item(
        item(
            {
                "type": "audio",
                "audio": {"id": "9", "mime_type": "audio/ogg; codecs=opus", "sha256": "s", "voice": True},
            }
        )
    ).media
    assert media is not None
    assert (media.id, media.mime_type, media.voice) == ("9", "audio/ogg; codecs=opus", True)
    location = InboundMessage.from_item(
        item({"type": "location", "location": {"latitude": 1.5, "longitude": -2}})
    )
    assert location.location is not None
    assert (location.location.latitude, location.location.longitude) == (1.5, -2)
    reaction = InboundMessage.from_item(item({"type": "reaction", "reaction": {"message_id": "wamid.O"}}))
    assert (reaction.reaction_to, reaction.reaction_emoji) == ("wamid.O", None)
    order = InboundMessage.from_item(
        item({"type": "order", "order": {"product_items": [{"quantity": 2}, {}]}})
    )
    assert len(order.order_items) == 2


def test_missing_sender_fields_are_tolerated() -> None:
    """A username user has no `from`: the model keeps `from_user_id` instead."""
    parsed = InboundMessage.from_item(
        MessageItem(
            message={"id": "w", "type": "text", "text": {"body": "x"}, "from_user_id": "GB.1"},
            phone_number_id="1",
            contact=None,
            display_phone_number=None,
            received_at=0.0,
            envelope_id=None,
        )
    )
    assert (parsed.from_, parsed.from_user_id) == (None, "GB.1")


def test_load_handler_errors_are_named() -> None:
    """A handler that cannot be imported or is not callable is a HandlerError."""
    with pytest.raises(
        HandlerError, match=r"no module 'no_such_module_here' in .* or the installed packages"
    ):
        load_handler("no_such_module_here:handle")
    with pytest.raises(HandlerError, match="no callable"):
        load_handler("json:not_there")
    assert load_handler(None) is default_handler


def test_call_handler_checks_the_result() -> None:
    """Sync handlers run in place and async ones through the given runner; a handler returning
    garbage is a TypeError (retried, then dead-lettered)."""
    message = InboundMessage.from_item(item({"type": "text", "text": {"body": "x"}}))

    async def good(_: InboundMessage) -> list[dict[str, Any]]:
        return [{"type": "text", "text": {"body": "y"}}]

    ran: list[object] = []

    def runner(coroutine: Any) -> Any:
        ran.append(coroutine)
        return asyncio.run(coroutine)

    assert call_handler(good, message, runner) == [{"type": "text", "text": {"body": "y"}}]
    assert len(ran) == 1
    assert call_handler(lambda _: None, message, runner) == []  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError):
        call_handler(lambda _: ["nope"], message, runner)  # type: ignore[arg-type,list-item,return-value]
    assert len(ran) == 1  # sync handlers never went through the runner

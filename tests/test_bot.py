"""The bot API: routing by kind, state, text, button and list row, with a fallback; which
handlers take the conversation."""

from __future__ import annotations

import asyncio
from typing import Any

from daemon.bot import Bot, takes_conversation
from daemon.conversation import Conversation
from daemon.handler import InboundMessage, call_handler, default_handler
from daemon.messages import Text
from daemon.pipeline import MessageItem


def inbound(kind: str, **body: Any) -> InboundMessage:
    message = {"id": "wamid.B", "from": "447700900123", "timestamp": "1767225600", "type": kind, kind: body}
    return InboundMessage.from_item(MessageItem(message, "620000000000001", None, None, 0.0, None))


def button(choice: str) -> InboundMessage:
    return inbound("interactive", type="button_reply", button_reply={"id": choice, "title": choice.title()})


def row(choice: str) -> InboundMessage:
    return inbound("interactive", type="list_reply", list_reply={"id": choice, "title": choice})


def conversation(state: str | None = None) -> Conversation:
    return Conversation("620000000000001", "447700900123", state=state)


def make_bot() -> Bot:
    bot = Bot()

    @bot.on(text=r"(?i)^menu$")
    def menu(message: InboundMessage, conversation: Conversation) -> list[Text]:
        conversation.state = "menu"
        return [Text("menu")]

    @bot.on(button="order", state="menu")
    def order(message: InboundMessage, conversation: Conversation) -> list[Text]:
        return [Text("ordering")]

    @bot.on(list_row=["fri_10", "sat_10"])
    def slot(message: InboundMessage, conversation: Conversation) -> list[Text]:
        conversation.variables["slot"] = message.interactive.id if message.interactive else None
        return [Text("slot")]

    @bot.on(kind="image", when=lambda message, conversation: conversation.state == "menu")
    async def photo(message: InboundMessage, conversation: Conversation) -> list[Text]:
        await asyncio.sleep(0)
        return [Text("photo in menu")]

    @bot.fallback
    def other(message: InboundMessage, conversation: Conversation) -> list[Text]:
        return [Text("fallback")]

    return bot


def answer(bot: Bot, message: InboundMessage, state: str | None = None) -> str:
    [body] = call_handler(bot, message, asyncio.run, conversation(state))
    return str(body["text"]["body"])


def test_routes_match_on_text_button_state_row_kind_and_fall_back() -> None:
    """Each condition selects its route; the first route declared wins; anything else falls back."""
    bot = make_bot()
    assert answer(bot, inbound("text", body="MENU")) == "menu"
    assert answer(bot, button("order"), state="menu") == "ordering"
    assert answer(bot, button("order"), state=None) == "fallback"  # the right button, the wrong state
    assert answer(bot, row("sat_10")) == "slot"
    assert answer(bot, button("sat_10")) == "fallback"  # a button with a row's id is not that row
    assert answer(bot, inbound("image", id="m1"), state="menu") == "photo in menu"  # async route
    assert answer(bot, inbound("image", id="m1")) == "fallback"
    assert answer(bot, inbound("text", body="hello")) == "fallback"


def test_a_route_changes_the_conversation_it_is_given() -> None:
    """State and variables set by a route are on the conversation object afterwards."""
    bot = make_bot()
    talk = conversation()
    call_handler(bot, inbound("text", body="menu"), asyncio.run, talk)
    call_handler(bot, row("fri_10"), asyncio.run, talk)
    assert (talk.state, talk.variables) == ("menu", {"slot": "fri_10"})


def test_without_a_fallback_an_unrouted_message_gets_no_reply() -> None:
    """No route and no fallback: handled without reply."""
    assert call_handler(Bot(), inbound("text", body="x"), asyncio.run, conversation()) == []


def test_which_handlers_take_the_conversation() -> None:
    """A Bot and two-argument functions do; the one-argument handlers of before keep working alone."""

    def two(message: InboundMessage, conversation: Conversation) -> list[Text]:
        return []

    async def two_async(message: InboundMessage, conversation: Conversation) -> list[Text]:
        return []

    def one(message: InboundMessage, extra: int = 0) -> list[Text]:
        return []

    assert takes_conversation(Bot())
    assert takes_conversation(two)
    assert takes_conversation(two_async)
    assert not takes_conversation(one)
    assert not takes_conversation(default_handler)

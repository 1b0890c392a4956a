"""The bot API: routes chosen by message kind, conversation state, text pattern, button or list-row
id, with a fallback; each gets the typed message and its :class:`Conversation`.

::

    # shop.py — WAPIPE_HANDLER=shop:bot
    from daemon.bot import Bot, Conversation
    from daemon.handler import InboundMessage
    from daemon.messages import Button, Buttons, Text

    bot = Bot()

    @bot.on(text=r"(?i)^(hi|menu)$")
    def menu(message: InboundMessage, conversation: Conversation) -> list[Buttons]:
        conversation.state = "menu"
        return [Buttons("What would you like?", [Button("order", "Order"), Button("help", "Help")])]

    @bot.on(button="order", state="menu")
    def order(message: InboundMessage, conversation: Conversation) -> list[Text]:
        conversation.state = "ordering"
        return [Text("What should we bring?")]

    @bot.fallback
    def anything_else(message: InboundMessage, conversation: Conversation) -> list[Text]:
        return [Text("Say 'menu' to start.")]

Routes are tried in the order they were declared; the first whose every condition holds runs.
A route's function may be sync or async. What it does to the conversation (``state``,
``variables``) is kept in Redis with its reply, once (see :mod:`daemon.store.conversations`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from daemon.conversation import Conversation
from daemon.handler import InboundMessage, Result

__all__ = ["Bot", "Conversation", "Route"]

Function = Callable[[InboundMessage, Conversation], Result | Awaitable[Result]]
F = TypeVar("F", bound=Function)


@dataclass(frozen=True)
class Route:
    """One route: the conditions a message must meet, and the function that answers it."""

    function: Function
    kinds: frozenset[str] = frozenset()
    states: frozenset[str | None] | None = None
    text: re.Pattern[str] | None = None
    buttons: frozenset[str] = frozenset()
    list_rows: frozenset[str] = frozenset()
    when: Callable[[InboundMessage, Conversation], bool] | None = None

    def matches(self, message: InboundMessage, conversation: Conversation) -> bool:
        if self.kinds and message.type not in self.kinds:
            return False
        if self.states is not None and conversation.state not in self.states:
            return False
        if self.text is not None and (message.text is None or self.text.search(message.text) is None):
            return False
        if self.buttons and choice_id(message) not in self.buttons:
            return False
        if self.list_rows and (message.interactive is None or message.interactive.kind != "list_reply"):
            return False
        if self.list_rows and choice_id(message) not in self.list_rows:
            return False
        return self.when is None or bool(self.when(message, conversation))


def choice_id(message: InboundMessage) -> str | None:
    """The id the user chose: a reply button's or list row's id, or a template button's payload."""
    if message.interactive is not None:
        return message.interactive.id
    return message.button_payload


def _names(value: str | Sequence[str] | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    return frozenset([value] if isinstance(value, str) else value)


@dataclass
class Bot:
    """A router of inbound messages; ``WAPIPE_HANDLER=module:bot`` names an instance."""

    routes: list[Route] = field(default_factory=list)
    fallback_route: Route | None = None
    #: Mark each message read with a "typing…" indicator before the bot runs (for a slow bot,
    #: e.g. one that asks a language model): the user sees it until the reply, or for 25 s.
    typing_indicator: bool = False

    def on(
        self,
        *,
        kind: str | Sequence[str] | None = None,
        state: str | Sequence[str | None] | None = (),
        text: str | re.Pattern[str] | None = None,
        button: str | Sequence[str] | None = None,
        list_row: str | Sequence[str] | None = None,
        when: Callable[[InboundMessage, Conversation], bool] | None = None,
    ) -> Callable[[F], F]:
        """Route the messages that meet every condition given to the decorated function.

        Args:
            kind: the message ``type`` (``"text"``, ``"image"``, ``"interactive"``…), or several.
            state: the conversation's state (``None``: a conversation with no state yet), or several.
            text: a regular expression searched in a text message's body.
            button: a reply button's id (or a template quick-reply's payload), or several.
            list_row: a list row's id, or several.
            when: any other test of the message and conversation.
        """
        if isinstance(state, str) or state is None:
            states: frozenset[str | None] | None = frozenset([state])
        else:
            states = frozenset(state) or None
        pattern = re.compile(text) if isinstance(text, str) else text

        def register(function: F) -> F:
            self.routes.append(
                Route(
                    function,
                    kinds=_names(kind),
                    states=states,
                    text=pattern,
                    buttons=_names(button),
                    list_rows=_names(list_row),
                    when=when,
                )
            )
            return function

        return register

    def fallback(self, function: F) -> F:
        """The function for messages no route matched (without one: no reply)."""
        self.fallback_route = Route(function)
        return function

    def route(self, message: InboundMessage, conversation: Conversation) -> Route | None:
        """The route that answers ``message``, or None."""
        for route in self.routes:
            if route.matches(message, conversation):
                return route
        return self.fallback_route

    def __call__(self, message: InboundMessage, conversation: Conversation) -> Result | Awaitable[Result]:
        route = self.route(message, conversation)
        if route is None:
            return []
        return route.function(message, conversation)


def takes_conversation(handler: Callable[..., Any]) -> bool:
    """Whether ``handler`` takes the conversation as well as the message (a :class:`Bot`, or a
    function of two positional parameters); one-argument handlers keep working as before."""
    if isinstance(handler, Bot):
        return True
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) >= 2

"""A pizza-ordering bot: reply buttons, a list, conversation state and variables.

Run it in the sandbox from this folder::

    WAPIPE_HANDLER=pizza:bot wapipe run
    wapipe simulate --text menu          # then press what it shows:
    wapipe simulate --button order
    wapipe simulate --list-row margherita
    wapipe simulate --button qty_2
    wapipe simulate --button confirm

or open http://127.0.0.1:8080/sandbox/chat and click through it.
"""

from __future__ import annotations

from pathlib import Path

from daemon.bot import Bot, Conversation
from daemon.handler import InboundMessage
from daemon.messages import Button, Buttons, Document, ListMessage, Outbound, Row, Section, Text

#: id → (name, price in cents)
PIZZAS = {
    "margherita": ("Margherita", 950),
    "diavola": ("Diavola", 1150),
    "funghi": ("Funghi", 1050),
    "quattro": ("Quattro formaggi", 1250),
}

#: Sent as a document: wapipe uploads it once and sends it by its media id.
HOURS = Path(__file__).with_name("pizza_hours.txt")

bot = Bot()


def _euros(cents: int) -> str:
    return f"€{cents // 100}.{cents % 100:02d}"


@bot.on(text=r"(?i)^\s*(hi|hello|menu|start)\s*$")
def menu(message: InboundMessage, conversation: Conversation) -> list[Outbound]:
    conversation.state = "menu"
    return [
        Buttons(
            "Welcome to Pizza Lisboa! What would you like?",
            [Button("order", "Order a pizza"), Button("hours", "Opening hours")],
            footer="Say 'menu' any time to start again",
        )
    ]


@bot.on(button="hours")
def hours(message: InboundMessage, conversation: Conversation) -> list[Outbound]:
    return [
        Text("We bake every day from 12:00 to 23:00."),
        Document(file=HOURS, filename="opening-hours.txt", caption="Our hours, to keep"),
    ]


@bot.on(button="order", state="menu")
def choose(message: InboundMessage, conversation: Conversation) -> list[Outbound]:
    conversation.state = "choosing"
    rows = [Row(key, name, _euros(price)) for key, (name, price) in PIZZAS.items()]
    return [ListMessage("Which pizza?", "Pizzas", [Section(rows, title="Our pizzas")])]


@bot.on(list_row=list(PIZZAS), state="choosing")
def quantity(message: InboundMessage, conversation: Conversation) -> list[Outbound]:
    choice = message.interactive.id if message.interactive else None
    conversation.state = "quantity"
    conversation.variables["pizza"] = choice
    name = PIZZAS[str(choice)][0]
    return [Buttons(f"{name}. How many?", [Button(f"qty_{n}", str(n)) for n in (1, 2, 3)])]


@bot.on(button=["qty_1", "qty_2", "qty_3"], state="quantity")
def confirm(message: InboundMessage, conversation: Conversation) -> list[Outbound]:
    count = int(str(message.interactive.id if message.interactive else "qty_1").removeprefix("qty_"))
    name, price = PIZZAS[conversation.variables["pizza"]]
    conversation.state = "confirming"
    conversation.variables["count"] = count
    return [
        Buttons(
            f"{count} × {name}, {_euros(count * price)}. Shall we bake it?",
            [Button("confirm", "Yes, bake it"), Button("cancel", "Cancel")],
        )
    ]


@bot.on(button="confirm", state="confirming")
def bake(message: InboundMessage, conversation: Conversation) -> list[Outbound]:
    orders = int(conversation.variables.get("orders", 0)) + 1
    name = PIZZAS[conversation.variables["pizza"]][0]
    count = conversation.variables["count"]
    conversation.state = None
    conversation.variables = {"orders": orders}
    return [Text(f"Order #{orders} confirmed: {count} × {name}. Ready in 25 minutes!")]


@bot.on(button="cancel")
def cancel(message: InboundMessage, conversation: Conversation) -> list[Outbound]:
    conversation.state = None
    conversation.variables.pop("pizza", None)
    conversation.variables.pop("count", None)
    return [Text("Cancelled. Say 'menu' when you are hungry.")]


@bot.on(kind=["image", "document"])
def attachment(message: InboundMessage, conversation: Conversation) -> list[Outbound]:
    stored = message.stored_media
    size = f" ({stored.size:,} bytes, safely stored)" if stored is not None else ""
    return [
        Text(
            f"Thanks for the {message.type}{size}! We can't bake it, though: say *menu* to order a pizza.",
        )
    ]


@bot.fallback
def anything_else(message: InboundMessage, conversation: Conversation) -> list[Outbound]:
    if conversation.state in ("choosing", "quantity", "confirming"):
        return [Text("Please pick one of the options above, or say 'menu' to start again.")]
    return [Text("Say 'menu' to see what we bake.")]

"""The example pizza bot, walked end to end in the sandbox with `wapipe simulate`: text, reply
buttons, a list row and a location, as Meta's webhooks would carry them; its state and variables
survive from one message to the next."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.simulate import SANDBOX_PHONE_NUMBER_ID
from tests.support.procs import sandbox_deployment, wapipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def shop() -> Iterator[tuple[Path, dict[str, str]]]:
    """`wapipe run` in sandbox mode, started from the examples folder with the pizza bot."""
    with sandbox_deployment(EXAMPLES, "pizza:bot") as env:
        yield EXAMPLES, env


def say(shop: tuple[Path, dict[str, str]], *args: str) -> str:
    """What `wapipe simulate` printed (a user of ours unless ``--from`` is given)."""
    folder, env = shop
    sender = [] if "--from" in args else ["--from", "351910000001"]
    result = wapipe(folder, env, "simulate", *sender, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_pizza_bot_takes_an_order_from_menu_to_confirmation(shop: tuple[Path, dict[str, str]]) -> None:
    """menu → Order → a pizza from the list → a quantity → confirm: each step answers from the
    state the previous one left, and the order count is kept afterwards."""
    assert "--button order" in say(shop, "--text", "menu")
    hours = say(shop, "--button", "hours")  # a local file, uploaded to the emulator and sent by id
    assert hours == "We bake every day from 12:00 to 23:00.\n[document] Our hours, to keep\n"
    with urllib.request.urlopen(f"http://127.0.0.1:{shop[1]['PORT']}/sandbox/outbox", timeout=10) as answer:
        sent = [entry["message"] for entry in json.load(answer) if entry["kind"] == "message"]
    document = [message for message in sent if message["type"] == "document"]
    assert set(document[-1]["document"]) == {"id", "filename", "caption"}
    listing = say(shop, "--button", "order")
    assert "Margherita - €9.50  --list-row margherita" in listing
    assert "How many?" in say(shop, "--list-row", "margherita")
    assert "2 × Margherita, €19.00. Shall we bake it?" in say(shop, "--button", "qty_2")
    assert say(shop, "--button", "confirm") == "Order #1 confirmed: 2 × Margherita. Ready in 25 minutes!\n"
    assert "Say 'menu'" in say(shop, "--location", "38.7223,-9.1393")
    say(shop, "--text", "menu")
    say(shop, "--button", "order")
    say(shop, "--list-row", "diavola")
    say(shop, "--button", "qty_1")
    assert say(shop, "--button", "confirm").startswith("Order #2 confirmed: 1 × Diavola")


def test_a_button_no_message_offered_is_refused_in_one_line(shop: tuple[Path, dict[str, str]]) -> None:
    """`--button` presses a button of a message the user was sent; any other id is exit 2."""
    result = wapipe(*shop, "simulate", "--from", "351910000002", "--button", "nope")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--button nope: no message sent to 351910000002 offers it")


def test_support_staff_see_and_reset_a_conversation(shop: tuple[Path, dict[str, str]]) -> None:
    """`wapipe conversation show` prints the state, variables, window and history as JSON;
    `reset` forgets them, and the bot starts again from nothing."""
    folder, env = shop
    say(shop, "--from", "351910000003", "--text", "menu")

    def conversation(*args: str) -> subprocess.CompletedProcess[str]:
        return wapipe(folder, env, "conversation", *args, SANDBOX_PHONE_NUMBER_ID, "351910000003")

    shown = json.loads(conversation("show").stdout)
    assert shown["state"] == "menu"
    assert shown["window_open"] is True
    assert (shown["history"][0]["direction"], shown["history"][0]["text"]) == ("in", "menu")
    assert conversation("reset").stdout == "reset\n"
    again = json.loads(conversation("show").stdout)
    assert (again["state"], again["variables"], again["history"]) == (None, {}, [])

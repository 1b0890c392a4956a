"""The emulated Graph API refuses what Meta refuses, with Meta's codes, and takes what Meta takes:
a bot that passes the sandbox does not fail in production on a message's shape."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.messages import body_of, mark_read
from daemon.send_rules import refusal
from tests.test_messages import CASES


def _send(kind: str, part: Any, **extra: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": "+15550001234", "type": kind, kind: part, **extra}


def _buttons(*titles: str) -> dict[str, Any]:
    buttons = [{"type": "reply", "reply": {"id": f"b{n}", "title": title}} for n, title in enumerate(titles)]
    return {"type": "button", "body": {"text": "Pick"}, "action": {"buttons": buttons}}


def _list(*sections: list[dict[str, Any]], button: str = "Go", titled: bool = True) -> dict[str, Any]:
    made = [{"title": f"S{n}", "rows": rows} if titled else {"rows": rows} for n, rows in enumerate(sections)]
    return {"type": "list", "body": {"text": "Pick"}, "action": {"button": button, "sections": made}}


def _rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"r{n}", "title": f"Row {n}"} for n in range(start, start + count)]


@pytest.mark.parametrize(
    ("built", "_"), CASES, ids=lambda case: type(case).__name__ if not isinstance(case, dict) else ""
)
def test_every_body_the_builders_make_is_accepted(built: Any, _: Any) -> None:
    """What wapipe's builders send passes the emulator's checks: the emulator is not stricter
    than the builders, which are not looser than Meta."""
    body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "+15550001234"}
    assert refusal(body | body_of(built)) is None


def test_read_receipts_and_typing_indicators_are_accepted() -> None:
    """Both of wapipe's read receipts pass; a typing indicator of an unknown type does not."""
    assert refusal(mark_read("wamid.in")) is None
    assert refusal(mark_read("wamid.in", typing_indicator=True)) is None
    odd = mark_read("wamid.in") | {"typing_indicator": {"type": "voice"}}
    refused, missing = refusal(odd), refusal({"messaging_product": "whatsapp", "status": "read"})
    assert refused is not None
    assert refused.code == 131009
    assert missing is not None
    assert missing.code == 131008


REFUSED: list[tuple[str, dict[str, Any], int, str]] = [
    ("4 reply buttons", _send("interactive", _buttons("a", "b", "c", "d")), 131009, "Buttons count is invalid"),
    ("a 30-character button title", _send("interactive", _buttons("t" * 30)), 131009, "Button title length invalid"),
    ("two buttons titled alike", _send("interactive", _buttons("Yes", "Yes")), 131009, "not unique"),
    ("a 5,000-character text", _send("text", {"body": "x" * 5000}), 100, "at most 4096 characters"),
    ("an empty text", _send("text", {"body": ""}), 131008, "text['body']"),
    ("a message of type hologram", _send("hologram", {"beam": 1}), 100, "Param type must be one of"),
    ("no recipient", {"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}, 131008, "'to'"),
    ("no messaging_product", {"to": "1555", "type": "text", "text": {"body": "x"}}, 100, "messaging_product"),
    ("a text without its object", {"messaging_product": "whatsapp", "to": "1", "type": "text"}, 131008, "'text'"),
    ("an image with neither id nor link", _send("image", {"caption": "c"}), 131008, "image['id']"),
    ("an image with both id and link", _send("image", {"id": "1", "link": "https://x.example/a.jpg"}), 100, "either id or link"),
    ("a 1,025-character caption", _send("image", {"id": "1", "caption": "c" * 1025}), 100, "at most 1024"),
    ("a latitude of 91", _send("location", {"latitude": 91, "longitude": 0}), 131009, "latitude"),
    ("a location without longitude", _send("location", {"latitude": 1}), 131008, "longitude"),
    ("6 contacts", {**_send("contacts", [{"name": {"formatted_name": f"C{n}"}} for n in range(6)])}, 131009, "Contacts count"),
    ("a contact without a name", _send("contacts", [{"phones": []}]), 131008, "formatted_name"),
    ("a reaction to nothing", _send("reaction", {"emoji": "👍"}), 131008, "message_id"),
    ("a template without language", _send("template", {"name": "order_ready"}), 131008, "language"),
    ("an interactive type Meta lacks", _send("interactive", {"type": "carousel3d", "action": {}}), 131009, "not supported"),
    ("a 1,025-character button body", _send("interactive", _buttons("a") | {"body": {"text": "b" * 1025}}), 100, "at most 1024"),
    ("a 61-character footer", _send("interactive", _buttons("a") | {"footer": {"text": "f" * 61}}), 100, "at most 60"),
    ("11 list rows", _send("interactive", _list(_rows(6), _rows(5, 6))), 131009, "row count"),
    ("11 sections", _send("interactive", _list(*[_rows(1, n) for n in range(11)])), 131009, "Sections count"),
    ("a 25-character row title", _send("interactive", _list([{"id": "r", "title": "t" * 25}])), 131009, "Row title length"),
    ("a 73-character row description", _send("interactive", _list([{"id": "r", "title": "t", "description": "d" * 73}])), 131009, "Row description"),
    ("a 21-character list button", _send("interactive", _list(_rows(1), button="g" * 21)), 131009, "Button label"),
    ("two sections, untitled", _send("interactive", _list(_rows(1), _rows(1, 1), titled=False)), 131008, "Section title"),
    ("a row id used twice", _send("interactive", _list(_rows(1), _rows(1))), 131009, "Row id is not unique"),
    (
        "a 21-character URL button",
        _send("interactive", {"type": "cta_url", "body": {"text": "b"},
                              "action": {"name": "cta_url", "parameters": {"display_text": "d" * 21, "url": "https://e.example"}}}),
        131009, "Display text length",
    ),
    (
        "a URL button to javascript:",
        _send("interactive", {"type": "cta_url", "body": {"text": "b"},
                              "action": {"name": "cta_url", "parameters": {"display_text": "Go", "url": "javascript:x"}}}),
        131009, "URL is invalid",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("what", "body", "code", "said"), REFUSED, ids=[what for what, *_ in REFUSED])
def test_what_meta_refuses_the_emulator_refuses_with_metas_code(
    what: str, body: dict[str, Any], code: int, said: str
) -> None:
    """Each body breaks one of Meta's rules: the emulator answers 400 with Meta's code, and its
    title or details name the rule."""
    refused = refusal(body)
    assert refused is not None, what
    assert (refused.status, refused.code) == (400, code), refused
    assert said in f"{refused.message} {refused.details}", refused


def test_a_list_body_may_be_as_long_as_metas_list_page_allows() -> None:
    """A list's body of 4,096 characters passes (Meta's list page), though the builders keep to 1,024."""
    long_list = _list(_rows(1)) | {"body": {"text": "b" * 4096}}
    assert refusal(_send("interactive", long_list)) is None
    assert refusal(_send("interactive", long_list | {"body": {"text": "b" * 4097}})) is not None

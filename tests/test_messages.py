"""The typed builders: each one's body is the Cloud API request it stands for (the examples of
docs/whatsapp.md, *Sending*), and every limit is enforced where the bot builds the message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.messages import (
    UPLOAD,
    Audio,
    Button,
    Buttons,
    Component,
    Contact,
    Contacts,
    CtaUrl,
    Document,
    Header,
    Image,
    ListMessage,
    Location,
    LocationRequest,
    MessageInvalid,
    Parameter,
    Reaction,
    Row,
    Section,
    Sticker,
    Template,
    Text,
    Video,
    body_of,
    has_uploads,
    mark_read,
    with_uploads,
)

CASES: list[tuple[Any, dict[str, Any]]] = [
    (
        Text("Your order ships today: https://example.com/t/77", preview_url=True),
        {
            "type": "text",
            "text": {"preview_url": True, "body": "Your order ships today: https://example.com/t/77"},
        },
    ),
    (
        Text("Yes — until 18:00.", reply_to="wamid.in01"),
        {"context": {"message_id": "wamid.in01"}, "type": "text", "text": {"body": "Yes — until 18:00."}},
    ),
    (
        Image(id="1405560000000099", caption="Your receipt"),
        {"type": "image", "image": {"id": "1405560000000099", "caption": "Your receipt"}},
    ),
    (
        Image(link="https://cdn.example.com/r/77.jpg"),
        {"type": "image", "image": {"link": "https://cdn.example.com/r/77.jpg"}},
    ),
    (
        Audio(id="1405560000000098", voice=True),
        {"type": "audio", "audio": {"id": "1405560000000098", "voice": True}},
    ),
    (
        Video(link="https://cdn.example.com/v/demo.mp4", caption="How to set up"),
        {
            "type": "video",
            "video": {"link": "https://cdn.example.com/v/demo.mp4", "caption": "How to set up"},
        },
    ),
    (
        Document(id="1405560000000097", filename="invoice-77.pdf", caption="Invoice #77"),
        {
            "type": "document",
            "document": {"id": "1405560000000097", "filename": "invoice-77.pdf", "caption": "Invoice #77"},
        },
    ),
    (Sticker(id="1405560000000096"), {"type": "sticker", "sticker": {"id": "1405560000000096"}}),
    (
        Location(38.7223, -9.1393, name="Lisbon store", address="Rua Augusta 1, Lisboa"),
        {
            "type": "location",
            "location": {
                "latitude": 38.7223,
                "longitude": -9.1393,
                "name": "Lisbon store",
                "address": "Rua Augusta 1, Lisboa",
            },
        },
    ),
    (
        Contacts(
            [
                Contact(
                    "Support Desk",
                    first_name="Support",
                    phones=[("+351 210 000 000", "WORK")],
                    emails=[("help@example.com", "WORK")],
                )
            ]
        ),
        {
            "type": "contacts",
            "contacts": [
                {
                    "name": {"formatted_name": "Support Desk", "first_name": "Support"},
                    "phones": [{"phone": "+351 210 000 000", "type": "WORK"}],
                    "emails": [{"email": "help@example.com", "type": "WORK"}],
                }
            ],
        },
    ),
    (
        Buttons("Confirm your slot?", [Button("yes_77", "Yes"), Button("no_77", "No")]),
        {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "Confirm your slot?"},
                "action": {
                    "buttons": [
                        {"type": "reply", "reply": {"id": "yes_77", "title": "Yes"}},
                        {"type": "reply", "reply": {"id": "no_77", "title": "No"}},
                    ]
                },
            },
        },
    ),
    (
        Buttons(
            "Your receipt",
            [Button("ok", "OK")],
            header=Header(media=Image(link="https://cdn.example.com/r.jpg")),
            footer="Thanks",
        ),
        {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "header": {"type": "image", "image": {"link": "https://cdn.example.com/r.jpg"}},
                "body": {"text": "Your receipt"},
                "footer": {"text": "Thanks"},
                "action": {"buttons": [{"type": "reply", "reply": {"id": "ok", "title": "OK"}}]},
            },
        },
    ),
    (
        ListMessage("Pick a time", "Times", [Section([Row("fri_10", "10:00", "Lisbon")], title="Friday")]),
        {
            "type": "interactive",
            "interactive": {
                "type": "list",
                "body": {"text": "Pick a time"},
                "action": {
                    "button": "Times",
                    "sections": [
                        {
                            "title": "Friday",
                            "rows": [{"id": "fri_10", "title": "10:00", "description": "Lisbon"}],
                        }
                    ],
                },
            },
        },
    ),
    (
        CtaUrl("Track your parcel", "Track", "https://example.com/t/77"),
        {
            "type": "interactive",
            "interactive": {
                "type": "cta_url",
                "body": {"text": "Track your parcel"},
                "action": {
                    "name": "cta_url",
                    "parameters": {"display_text": "Track", "url": "https://example.com/t/77"},
                },
            },
        },
    ),
    (
        LocationRequest("Where should we deliver?"),
        {
            "type": "interactive",
            "interactive": {
                "type": "location_request_message",
                "body": {"text": "Where should we deliver?"},
                "action": {"name": "send_location"},
            },
        },
    ),
    (
        Template(
            "order_ready",
            "en_US",
            [
                Component("body", [Parameter.text("77")]),
                Component("button", [Parameter.payload("READY_77")], sub_type="quick_reply", index=0),
            ],
        ),
        {
            "type": "template",
            "template": {
                "name": "order_ready",
                "language": {"code": "en_US"},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": "77"}]},
                    {
                        "type": "button",
                        "sub_type": "quick_reply",
                        "index": "0",
                        "parameters": [{"type": "payload", "payload": "READY_77"}],
                    },
                ],
            },
        },
    ),
    (
        Reaction("wamid.in18", "\u2705"),
        {"type": "reaction", "reaction": {"message_id": "wamid.in18", "emoji": "\u2705"}},
    ),
    (Reaction("wamid.in18", ""), {"type": "reaction", "reaction": {"message_id": "wamid.in18", "emoji": ""}}),
    (
        Text("hi", callback_data="order-77"),
        {"type": "text", "text": {"body": "hi"}, "biz_opaque_callback_data": "order-77"},
    ),
]


@pytest.mark.parametrize(
    ("built", "body"), CASES, ids=lambda case: type(case).__name__ if not isinstance(case, dict) else ""
)
def test_each_builder_is_the_request_body_it_stands_for(built: Any, body: dict[str, Any]) -> None:
    """The builder's body equals Meta's documented request body, key for key."""
    assert built.to_body() == body
    assert body_of(built) == body
    assert body_of(body) is body  # a plain dict from an older handler is taken as it is


def test_mark_read_with_a_typing_indicator() -> None:
    """The read receipt, with and without "typing…"."""
    assert mark_read("wamid.in01") == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.in01",
    }
    assert mark_read("wamid.in01", typing_indicator=True)["typing_indicator"] == {"type": "text"}


def test_only_templates_may_leave_the_window() -> None:
    """Everything but a template is free-form (only inside the 24-hour window)."""
    assert Text("x").free_form
    assert not Template("order_ready").free_form


def _buttons(*titles: str) -> list[Button]:
    return [Button(f"id{n}", title) for n, title in enumerate(titles)]


def _rows(count: int) -> list[Row]:
    return [Row(f"r{n}", f"Row {n}") for n in range(count)]


LIMITS: list[tuple[str, Any]] = [
    ("text body is 4097 characters; the most is 4096", lambda: Text("x" * 4097)),
    ("text body must not be empty", lambda: Text("")),
    ("image caption is 1025 characters", lambda: Image(id="1", caption="c" * 1025)),
    ("exactly one of id, link and file", lambda: Image()),
    ("exactly one of id, link and file", lambda: Video(id="1", link="https://x.example/v.mp4")),
    ("image link must be an http", lambda: Image(link="file:///etc/passwd")),
    ("reply buttons: 1 to 3, not 4", lambda: Buttons("b", _buttons("a", "b", "c", "d"))),
    ("reply buttons: 1 to 3, not 0", lambda: Buttons("b", [])),
    ("button title 'Yes' is used twice", lambda: Buttons("b", _buttons("Yes", "Yes"))),
    ("button id 'x' is used twice", lambda: Buttons("b", [Button("x", "A"), Button("x", "B")])),
    ("button title is 21 characters; the most is 20", lambda: Button("id", "t" * 21)),
    ("button id is 257 characters; the most is 256", lambda: Button("i" * 257, "t")),
    ("button body is 1025 characters", lambda: Buttons("b" * 1025, _buttons("a"))),
    ("footer is 61 characters", lambda: Buttons("b", _buttons("a"), footer="f" * 61)),
    ("header text is 61 characters", lambda: Buttons("b", _buttons("a"), header="h" * 61)),
    (
        "a list has 1 to 10 sections, not 11",
        lambda: ListMessage("b", "Go", [Section(_rows(1), title=f"S{n}") for n in range(11)]),
    ),
    (
        "a list has at most 10 rows in all, not 11",
        lambda: ListMessage("b", "Go", [Section(_rows(6), title="A"), Section(_rows(5), title="B")]),
    ),
    ("row id is 201 characters", lambda: Row("i" * 201, "t")),
    ("row title is 25 characters", lambda: Row("i", "t" * 25)),
    ("row description is 73 characters", lambda: Row("i", "t", "d" * 73)),
    ("section title is 25 characters", lambda: Section(_rows(1), title="s" * 25)),
    ("list button is 21 characters", lambda: ListMessage("b", "g" * 21, [Section(_rows(1))])),
    ("list body is 1025 characters", lambda: ListMessage("b" * 1025, "Go", [Section(_rows(1))])),
    (
        "each section of a list with several sections needs a title",
        lambda: ListMessage("b", "Go", [Section(_rows(1)), Section([Row("z", "Z")])]),
    ),
    (
        "row id 'r0' is used twice",
        lambda: ListMessage("b", "Go", [Section(_rows(1), title="A"), Section(_rows(1), title="B")]),
    ),
    (
        "a list message takes a text header only",
        lambda: ListMessage("b", "Go", [Section(_rows(1))], header=Header(media=Image(id="1"))),
    ),
    ("display_text is 21 characters", lambda: CtaUrl("b", "d" * 21, "https://example.com")),
    ("url must be an http", lambda: CtaUrl("b", "Go", "javascript:alert(1)")),
    ("a location request has a body only", lambda: LocationRequest("b", footer="f")),
    ("latitude must be between -90 and 90", lambda: Location(91, 0)),
    ("longitude must be a number", lambda: Location(0, float("nan"))),
    ("contacts holds 1 to 5 cards, not 6", lambda: Contacts([Contact(f"C{n}") for n in range(6)])),
    (
        "a button component needs its sub_type and index",
        lambda: Component("button", [Parameter.payload("p")]),
    ),
    ("callback_data is 513 characters", lambda: Text("x", callback_data="c" * 513)),
    ("a header has exactly one of text and media", lambda: Header()),
]


@pytest.mark.parametrize(("reason", "build"), LIMITS, ids=[reason for reason, _ in LIMITS])
def test_every_limit_raises_where_the_message_is_built(reason: str, build: Any) -> None:
    """A message Meta would refuse is refused when it is built, with a message naming the rule."""
    with pytest.raises(MessageInvalid) as refused:
        build()
    assert reason in str(refused.value)


def test_limits_count_characters_not_bytes() -> None:
    """20 accented or emoji characters are a valid button title, as Meta counts them."""
    assert Button("id", "é" * 20).title == "é" * 20
    assert Text("🙂" * 4096).to_body()["text"]["body"] == "🙂" * 4096


def test_a_local_file_is_checked_when_built_and_uploaded_by_its_path(tmp_path: Path) -> None:
    """``file=`` names a local file to upload: the body carries its absolute path and MIME type
    (read from the suffix), with the caption beside it; a template header may name one too."""
    menu = tmp_path / "menu.PNG"
    menu.write_bytes(b"\x89PNG fake")
    spec = {"path": str(menu), "mime_type": "image/png"}
    assert Image(file=menu, caption="Today").to_body() == {
        "type": "image",
        "image": {UPLOAD: spec, "caption": "Today"},
    }
    header = Component("header", [Parameter.media(Image(file=str(menu)))])
    assert header.to_json()["parameters"] == [{"type": "image", "image": {UPLOAD: spec}}]
    body = Template("menu", "en", [header]).to_body()
    assert has_uploads(body)
    resolved = with_uploads(body, lambda found: f"id-of-{Path(found['path']).name}")
    assert resolved["template"]["components"][0]["parameters"] == [
        {"type": "image", "image": {"id": "id-of-menu.PNG"}}
    ]
    assert not has_uploads(resolved)


def test_a_local_file_meta_would_refuse_is_refused_when_built(tmp_path: Path) -> None:
    """A missing file, a directory, an empty file, a type Meta does not take for the kind, or a file
    over Meta's size for the kind (5 MB image, 100 KB static sticker) raises MessageInvalid."""
    (tmp_path / "big.jpg").write_bytes(b"\0" * 5_000_001)
    (tmp_path / "ok.jpg").write_bytes(b"\0" * 5_000_000)
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "static.webp").write_bytes(b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 100_000)
    animated = b"RIFF\0\0\0\0WEBPVP8X" + b"\0\0\0\0" + b"\x02" + b"\0" * 200_000
    (tmp_path / "animated.webp").write_bytes(animated)
    (tmp_path / "dir.png").mkdir()
    refusals = [
        ("cannot be read", lambda: Image(file=tmp_path / "missing.png")),
        ("not a regular file", lambda: Image(file=tmp_path / "dir.png")),
        ("is empty", lambda: Document(file=tmp_path / "empty.pdf")),
        ("must end in one of .3gp, .3gpp, .mp4", lambda: Video(file=tmp_path / "ok.jpg")),
        ("5000001 bytes; the most Meta takes is 5000000", lambda: Image(file=tmp_path / "big.jpg")),
        ("the most Meta takes is 100000", lambda: Sticker(file=tmp_path / "static.webp")),
        ("exactly one of id, link and file", lambda: Image(id="1", file=tmp_path / "ok.jpg")),
    ]
    for reason, build in refusals:
        with pytest.raises(MessageInvalid) as refused:
            build()
        assert reason in str(refused.value)
    assert Image(file=tmp_path / "ok.jpg").kind == "image"
    assert Sticker(file=tmp_path / "animated.webp").kind == "sticker"  # 500 KB for an animated one

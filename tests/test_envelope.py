"""The envelope's pure functions: strict JSON, items and their problems, contacts matched to messages."""

from __future__ import annotations

import pytest

from daemon.envelope import NotStandardJSON, handoff_problem, item_problem, loads, split
from tests.support.meta import envelope


def test_only_standard_json_is_parsed() -> None:
    """NaN, Infinity, -Infinity and 1e999 are refused; deep nesting is refused, not a crash."""
    assert loads('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    for text in ('{"a": NaN}', "[Infinity]", "[-Infinity]", "[1e999]", "[" * 50_000 + "]" * 50_000):
        with pytest.raises(NotStandardJSON):
            loads(text)
    with pytest.raises(ValueError, match="Expecting"):
        loads("{")


def contacts_envelope(count: int) -> dict[str, object]:
    messages = [
        {"from": f"4477{n:08d}", "id": f"wamid.{n}", "type": "text", "text": {"body": "x"}}
        for n in range(count)
    ]
    contacts = [{"wa_id": f"4477{n:08d}", "profile": {"name": f"user {n}"}} for n in reversed(range(count))]
    return envelope(messages, contacts=contacts)


@pytest.mark.timeout(20)
def test_contacts_are_matched_in_linear_time() -> None:
    """50,000 messages with 50,000 contacts in reversed order: each gets its own contact (matched
    by wa_id through an index; the quadratic scan this replaces needed minutes for this)."""
    items = list(split(contacts_envelope(50_000)))  # type: ignore[arg-type]
    assert len(items) == 50_000
    assert all(item.contact is not None and item.contact["wa_id"] == item.data["from"] for item in items)


def test_contacts_by_wa_id_then_user_id_then_the_only_one() -> None:
    """The first contact of an id wins; a user known only by business-scoped id is matched on
    user_id; with one contact and no match, that contact; with several and no match, none."""
    messages = [
        {"from": "1", "id": "a", "type": "text"},
        {"from_user_id": "GB.2", "id": "b", "type": "text"},
        {"from": "3", "id": "c", "type": "text"},
    ]
    contacts = [
        {"wa_id": "1", "n": 1},
        {"wa_id": "1", "n": 2},
        {"user_id": "GB.2", "n": 3},
        {"wa_id": [], "n": 4},
    ]
    found = [item.contact for item in split(envelope(messages, contacts=contacts))]  # type: ignore[arg-type]
    assert found == [{"wa_id": "1", "n": 1}, {"user_id": "GB.2", "n": 3}, None]
    [only] = split(envelope(messages[2:], contacts=[{"wa_id": "9"}]))  # type: ignore[arg-type]
    assert only.contact == {"wa_id": "9"}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"id": "wamid.1", "type": "text", "from": "1"}, None),
        ({"id": "wamid.1", "from_user_id": "GB.1"}, None),
        ({"type": "text", "from": "1"}, "id is missing"),
        ({"id": "", "type": "text", "from": "1"}, "id is empty"),
        ({"id": 7, "type": "text", "from": "1"}, "id is a JSON int, not a string"),
        ({"id": "wamid.\ud83d", "type": "text", "from": "1"}, "id is not valid Unicode (a lone surrogate)"),
        ({"id": "x" * 513, "type": "text", "from": "1"}, "id is longer than 512 characters"),
        ({"id": "wamid.1", "type": {"a": 1}, "from": "1"}, "type is a JSON dict, not a string"),
        ({"id": "wamid.1", "from": 447700900123}, "from is a JSON int, not a string"),
        ({"id": "wamid.1", "type": "text"}, "neither from nor from_user_id: there is no one to answer"),
    ],
)
def test_what_makes_a_message_unusable(data: dict[str, object], problem: str | None) -> None:
    """The checks parse and the stages share: ids and routing fields are strings of valid Unicode."""
    item = next(split(envelope([data])))  # type: ignore[arg-type]
    assert item_problem(item) == problem
    assert handoff_problem({"message": data, "phone_number_id": "620000000000001"}) == problem
    assert handoff_problem({"message": "not an object"}) == "the item has no message object"

"""Key names: no caller- or user-supplied string reaches a Redis key name unencoded, no two inputs
share a name, and every name an earlier release wrote is kept as it was."""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest

from daemon.store import keys

#: Every key builder of the store, found by looking (a builder added later is covered too).
BUILDERS: dict[str, Callable[..., str]] = {
    name: function
    for name, function in vars(keys).items()
    if inspect.isfunction(function)
    and function.__module__ == keys.__name__
    and name not in ("part", "subject_part")
    and not name.startswith("_")
}
#: Parts that a caller (``POST /send``) or a user could bring, and that today's keys never held.
HOSTILE = [
    "447700900077:history",
    "x:y",
    "{tag}",
    "a}b{",
    "100%",
    "%3A",
    "*",
    "wild*card?",
    "two words",
    "tab\there",
    "line\nbreak",
    "é",
    "٤٤٧٧",  # Arabic-Indic digits
    "雪",
    "",
    ":",
    "%",
]
#: Parts keys hold today: digits, letters, wamids (base64), BSUIDs, idempotency keys like these.
TODAY = [
    "447700900123",
    "620000000000001",
    "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA",
    "wamid.ab+cd/ef==",
    "US.13491208655302741918",
    "order-77_ready.v2",
    "sent",
    "+447700900123",
]
#: What a part may hold once encoded (the percent sign only before two hex digits).
ENCODED = re.compile(r"(?:[A-Za-z0-9+/=._-]|%[0-9A-F]{2})*", re.ASCII)


def _string_parameters(builder: Callable[..., str]) -> list[str]:
    return [
        name
        for name, parameter in inspect.signature(builder).parameters.items()
        if parameter.annotation in ("str", "object", str, object)
    ]


def _call(builder: Callable[..., str], value: str) -> list[str]:
    """The builder's name for ``value`` in each of its string parameters (the others fixed)."""
    names = []
    parameters = inspect.signature(builder).parameters
    for target in _string_parameters(builder):
        arguments: dict[str, Any] = {}
        for name, parameter in parameters.items():
            if name == target:
                arguments[name] = value
            elif parameter.annotation in ("int", int):
                arguments[name] = 3
            else:
                arguments[name] = "620000000000001"
        names.append(builder(**arguments))
    return names


def test_every_builder_with_a_string_part_is_covered() -> None:
    """The builders taking strings are found (the test would pass vacuously otherwise); the others
    take numbers only (record buckets and shards)."""
    with_strings = {name for name, builder in BUILDERS.items() if _string_parameters(builder)}
    assert {
        "conversation",
        "history",
        "seen_send",
        "ledger",
        "journey",
        "rate_pair",
        "status",
    } <= with_strings
    assert len(with_strings) >= 25
    assert set(BUILDERS) - with_strings == {"record_bucket", "record_shard"}


@pytest.mark.parametrize("name", sorted(name for name in BUILDERS if _string_parameters(BUILDERS[name])))
def test_a_builder_encodes_what_keys_never_held_and_keeps_what_they_hold(name: str) -> None:
    """Each builder, fed each hostile part in each string parameter: the part is percent-encoded
    (only letters, digits, base64's ``+/=``, ``.`` ``_`` ``-`` and ``%XX`` remain), no two parts share
    a name, and the parts of today's keys come out unchanged."""
    builder = BUILDERS[name]
    made: dict[str, str] = {}
    for value in HOSTILE + TODAY:
        for key in _call(builder, value):
            assert key not in made or made[key] == value, f"{value!r} and {made[key]!r} share {key!r}"
            made[key] = value
    for value in TODAY:
        for key in _call(builder, value):
            assert value in key, f"{name}({value!r}) renamed a key of today: {key!r}"
    for value in HOSTILE:
        for key in _call(builder, value):
            tail = key.removeprefix("wapipe:").removeprefix("dramatiq:")
            for piece in re.split(r"[:]", tail):
                stripped = piece.removesuffix(".msgs").removesuffix(".XQ")
                assert ENCODED.fullmatch(stripped), f"{name}({value!r}) = {key!r}"


def test_a_recipient_or_key_cannot_reach_into_another_key() -> None:
    """The issue's collisions: a user ``447700900077:history`` names no history list, and the
    send keys ``(1000000000001, "x:y")`` and ``("1000000000001:x", "y")`` are two keys."""
    number = "1000000000001"
    assert keys.conversation(number, "447700900077:history") != keys.history(number, "447700900077")
    assert keys.conversation(number, "447700900077:history") == f"wapipe:conv:{number}:447700900077%3Ahistory"
    assert keys.seen_send(number, "x:y") != keys.seen_send(f"{number}:x", "y")
    assert keys.ledger(number, "send:x:y", 0) == f"wapipe:reply:{number}:send:x%3Ay:0"
    assert keys.journey("send:order 7") == "wapipe:journey:send:order%207"


def test_encoding_is_one_to_one() -> None:
    """Distinct parts never encode alike, whichever characters they mix (percent signs included)."""
    alphabet = ["a", ":", "%", "3A", "%3A", "é", " ", "雪", "-"]
    parts = {"".join(combo) for n in range(4) for combo in itertools.product(alphabet, repeat=n)}
    encoded = {keys.part(value): value for value in parts}
    assert len(encoded) == len(parts)


def test_a_lone_surrogate_is_no_key_part() -> None:
    """A string that is not valid Unicode is refused (as Redis would refuse it), so that the item
    holding it fails alone (parse drops such a status)."""
    with pytest.raises(UnicodeEncodeError):
        keys.status("wamid.\ud800")

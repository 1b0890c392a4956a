"""The pipeline's vocabulary: each stage's argument survives Redis, and a wrong one is refused."""

from __future__ import annotations

import pytest
from dramatiq import Message

from daemon.pipeline import (
    FETCH_MEDIA,
    PARSE,
    REPLY,
    SEND,
    STAGES,
    VERIFY,
    ArgumentInvalid,
    Envelope,
    MessageItem,
    Outgoing,
    StoredMedia,
    Webhook,
    message,
    stage_named,
)

ITEM = MessageItem(
    message={"id": "wamid.V", "type": "image", "from": "1", "image": {"id": "m"}},
    phone_number_id="620000000000001",
    contact={"profile": {"name": "Ana"}, "wa_id": "1"},
    display_phone_number="15557650100",
    received_at=1767225600.5,
    envelope_id="env",
)
ARGUMENTS = {
    VERIFY.name: Webhook('{"object":"x"}', "sha256=ab", 1.0),
    PARSE.name: Envelope('{"object":"x"}', 1.0, "env"),
    FETCH_MEDIA.name: ITEM,
    REPLY.name: ITEM.with_file(StoredMedia("/m/1.jpg", "image/jpeg", 3, sha256_ok=True)),
    SEND.name: Outgoing(
        "620000000000001", "447700900123", ({"type": "text", "text": {"body": "hi"}},), "k-1", 2.0
    ),
}


@pytest.mark.parametrize("stage", STAGES, ids=lambda stage: stage.name)
def test_each_argument_round_trips_through_a_message(stage: object) -> None:
    """Encoded into a Dramatiq message and decoded as the worker does: the same argument."""
    assert stage is stage_named(stage.name)  # type: ignore[attr-defined]
    argument = ARGUMENTS[stage.name]  # type: ignore[attr-defined]
    made = message(stage, argument)  # type: ignore[arg-type]
    assert (made.queue_name, made.actor_name, made.args) == (stage.queue, stage.name, ())  # type: ignore[attr-defined]
    decoded = Message.decode(made.encode())
    assert stage.decode(decoded.kwargs) == argument  # type: ignore[attr-defined]


def test_a_wrong_argument_or_stage_name_is_refused() -> None:
    """``message`` checks the argument's type (mypy does too); unknown names are KeyErrors."""
    with pytest.raises(TypeError, match="reply takes MessageItem, not Envelope"):
        message(REPLY, Envelope("{}", 0.0, "e"))  # type: ignore[misc]
    with pytest.raises(KeyError):
        stage_named("replay")


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "no item object"),
        ({"item": {"message": {"id": "w", "type": "text"}, "phone_number_id": 7}}, "phone_number_id"),
        ({"item": {"message": {"type": "text"}, "phone_number_id": "1", "received_at": 0}}, "id"),
        (
            {"item": {"message": {"id": "w", "type": "text", "from": "1"}, "phone_number_id": "1"}},
            "received_at",
        ),
        (
            {
                "item": {
                    "message": {"id": "w", "type": "text", "from": "1"},
                    "phone_number_id": "1",
                    "received_at": 0,
                    "stored_media": {"path": "/x"},
                }
            },
            "stored_media",
        ),
    ],
)
def test_an_item_that_is_not_one_is_refused_with_its_reason(kwargs: dict[str, object], reason: str) -> None:
    """What a stage cannot take is an ``ArgumentInvalid`` naming the field (the worker dead-letters it)."""
    with pytest.raises(ArgumentInvalid, match=reason):
        REPLY.decode(kwargs)


def test_envelope_arguments_must_have_their_fields() -> None:
    """A verify or parse message with a missing or mistyped field is refused, not half-run."""
    with pytest.raises(ArgumentInvalid, match="signature"):
        VERIFY.decode({"body": "{}", "received_at": 0})
    with pytest.raises(ArgumentInvalid, match="received_at"):
        PARSE.decode({"body": "{}", "received_at": True, "envelope_id": "e"})

"""A business send's idempotency mark, and what became of each of its messages.

``POST /send`` and ``wapipe send`` claim ``wapipe:seen:send:<phone_number_id>:<key>`` with the
enqueue, in one script (:mod:`daemon.store.dedup`). The mark's value says which request took the
key (:func:`mark_value`): the SHA-256 of its canonical JSON, how many messages it has and when it
was asked for, then a fresh id, so that every request is a claim of its own. A later request under
the key is the same one (a replay: nothing more is sent) when its fingerprint matches, and a
conflict otherwise. An earlier release's mark holds a bare id: any request under it is taken as
its replay, as that release took it.

:func:`outcomes` reads what became of each message from what the pipeline keeps anyway: the reply
ledger (sent with its id, refused with the reason, claimed), each message's latest delivery
status, and the send's dead letter — found through the ``dead_lettered`` event the worker adds to
the send's journey (:mod:`actors.dead_letters`), or, once the journey has expired, among the
dead letters themselves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis

from daemon.store import deadletters, journeys, keys, ledger, statuses

#: What a message may have become, in the order a send moves through them.
QUEUED, SENDING, SENT, REFUSED, DEAD_LETTERED, IN_DOUBT = (
    "queued", "sending", "sent", "refused", "dead_lettered", "in_doubt",
)  # fmt: skip
#: The states that end a message (no further change without an operator).
FINAL = frozenset({SENT, REFUSED, DEAD_LETTERED, IN_DOUBT})
#: The dead letters' queue of the ``send`` stage.
SEND_QUEUE = "wapipe"


def fingerprint(canonical: bytes) -> str:
    """The fingerprint of a request: the SHA-256 (hex) of its canonical JSON."""
    return hashlib.sha256(canonical).hexdigest()


def mark_value(fingerprint: str, messages: int, at: int, claim_id: str) -> str:
    """The value a request's claim writes in its key's mark."""
    return f"{fingerprint}:{messages}:{at}:{claim_id}"


@dataclass(frozen=True, slots=True)
class Mark:
    """What a key's mark says of the request that took it (None: an earlier release's mark)."""

    fingerprint: str | None
    messages: int | None
    #: When it was asked for (Unix s): the time the send's record is filed by.
    at: int | None

    @classmethod
    def parse(cls, value: bytes | str) -> Mark:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        parts = text.split(":")
        if len(parts) == 4 and len(parts[0]) == 64 and parts[1].isdigit() and parts[2].isdigit():
            return cls(parts[0], int(parts[1]), int(parts[2]))
        return cls(None, None, None)

    def same_request(self, fingerprint: str) -> bool:
        """Whether a request of ``fingerprint`` is the one that took the key (an earlier
        release's mark did not keep it: any is)."""
        return self.fingerprint is None or self.fingerprint == fingerprint


def read_mark(client: redis.Redis, phone_number_id: str, key: str) -> Mark | None:
    """The mark of ``key`` on ``phone_number_id``, or None when no request took it (or it expired)."""
    value = client.get(keys.seen_send(phone_number_id, key))
    return None if value is None else Mark.parse(value)


def subject(key: str) -> str:
    """A send's ledger subject and journey."""
    return keys.SEND_SUBJECT + key


def outcomes(client: redis.Redis, phone_number_id: str, key: str, mark: Mark) -> list[dict[str, Any]]:
    """Each message's outcome, in order: ``state`` (one of :data:`QUEUED` … :data:`IN_DOUBT`),
    with ``id`` and ``status`` once sent, ``reason`` when refused or dead-lettered."""
    the_subject = subject(key)
    events = [
        event
        for event in journeys.Journeys(client, 0).read(the_subject)
        if event.get("phone_number_id") in (None, phone_number_id)
    ]
    at = mark.at
    if at is None:  # an earlier release's mark: its journey's first event says when
        at = next((int(e["record_at"]) for e in events if isinstance(e.get("record_at"), int)), 0)
    entries = ledger.ReplyLedger(client, 0).entries(ledger.Subject(phone_number_id, the_subject, at))
    count = max(mark.messages or 0, len(entries), 1)
    entries += ["none"] * (count - len(entries))
    letter = _dead_letter(client, phone_number_id, key, events, entries)
    sent_ids = [entry[5:] for entry in entries if entry.startswith("sent:") and entry != "sent:"]
    latest = iter(statuses.latest_of(client, sent_ids))
    found: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        state, _, value = entry.partition(":")
        outcome: dict[str, Any] = {"index": index}
        if state == "sent":
            outcome["state"] = SENT
            if value:
                outcome["id"] = value
                status = next(latest)
                if status is not None:
                    outcome["status"] = status.status
                    if status.error_code is not None:
                        outcome["error_code"] = status.error_code
        elif state == "refused":
            outcome |= {"state": REFUSED, "reason": value or "refused"}
        elif state == "sending":
            # Claimed and never recorded: in flight, or — once the send ended — perhaps delivered.
            outcome["state"] = SENDING if letter is None else IN_DOUBT
            if letter is not None:
                outcome["reason"] = letter["reason"]
        elif letter is not None:
            outcome |= {"state": DEAD_LETTERED, "reason": letter["reason"], "dead_letter": letter["id"]}
        else:
            outcome["state"] = QUEUED
        found.append(outcome)
    return found


def _dead_letter(
    client: redis.Redis, phone_number_id: str, key: str, events: list[dict[str, Any]], entries: list[str]
) -> dict[str, str] | None:
    """The send's dead letter (its id and reason line), if its last run ended in one."""
    runs = [event for event in events if event.get("stage") == "send"]
    if runs:
        last = runs[-1]
        if last.get("outcome") != "dead_lettered":
            return None
        return {"id": str(last.get("letter", "")), "reason": str(last.get("error", "dead-lettered"))}
    if events or all(entry.startswith(("sent:", "refused:")) for entry in entries):
        return None  # not run yet, or every message decided: no dead letter to look for
    for found in deadletters.all_letters(client, (SEND_QUEUE,)):  # the journey has expired
        send = (found.message.get("kwargs") or {}).get("send")
        if (
            isinstance(send, dict)
            and send.get("key") == key
            and send.get("phone_number_id") == phone_number_id
        ):
            reason = found.reason
            return {
                "id": found.id,
                "reason": f"{reason.get('type')}: {reason.get('message', '')}".rstrip(": "),
            }
    return None


def encoded(value: object) -> bytes:
    """``value`` as canonical JSON: sorted keys, no spaces, UTF-8 (raises ``UnicodeEncodeError``, a
    ``ValueError``, for a lone surrogate)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

"""One message's journey, gathered for ``wapipe trace WAMID``.

From what the pipeline already keeps: the journey's events (:mod:`daemon.store.journeys`: received,
each stage run with its time, attempt and outcome, the media stored), the reply ledger (each
message sent in answer, or refused), each of those messages' delivery status, whether the
message is done, and its dead letter if it has one. An outbound message's id leads to the inbound
message (or business send) it answered.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any

import redis

from daemon.pipeline import timestamp_of
from daemon.store import deadletters, journeys, keys, ledger, statuses


@dataclass
class Trace:
    """What is known of one inbound message (or business send, ``send:<key>``)."""

    subject: str
    phone_number_id: str | None = None
    #: The user it came from / went to, when a reply or a turn recorded it.
    user: str | None = None
    #: The outbound message the trace was asked for, when it was one (what it answered follows).
    asked_for: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Per outbound message, in order: index, ``sent`` / ``refused`` / ``sending``, id, status.
    replies: list[dict[str, Any]] = field(default_factory=list)
    #: How many messages answered it once it was done; None while it is not.
    handled: int | None = None
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.events or self.replies or self.dead_letters or self.handled is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "asked_for": self.asked_for,
            "phone_number_id": self.phone_number_id,
            "user": self.user,
            "events": self.events,
            "replies": self.replies,
            "handled": self.handled,
            "dead_letters": self.dead_letters,
        }

    def lines(self) -> list[str]:
        """The trace as a person reads it, oldest first."""
        out: list[str] = []
        if self.asked_for is not None:
            out.append(f"{self.asked_for} was sent by wapipe in answer to {self.subject}")
        where = f" on {self.phone_number_id}" if self.phone_number_id else ""
        who = f", user {self.user}" if self.user else ""
        out.append(f"{self.subject}{where}{who}")
        for event in self.events:
            out.append(_event_line(event))
        for reply in self.replies:
            line = f"  reply {reply['index']}: {reply['state']}"
            if reply.get("id"):
                line += f" as {reply['id']}"
            if reply.get("status"):
                line += f", {reply['status']}"
                if reply.get("status_at"):
                    line += f" at {_when(float(reply['status_at']))}"
                if reply.get("error_code") is not None:
                    line += f" (error {reply['error_code']})"
            elif reply["state"] == "sent":
                line += ", no status from Meta yet"
            out.append(line)
        if self.handled is not None:
            out.append(f"  done: answered by {self.handled} message{'s' if self.handled != 1 else ''}")
        else:
            out.append("  not done yet")
        for letter in self.dead_letters:
            reason = letter["reason"]
            code = f" code {reason['code']}" if reason.get("code") is not None else ""
            out.append(
                f"  dead letter {letter['id']} ({letter['stage']}, {_when(letter['failed_at'])}): "
                f"{reason.get('type')}{code}: {reason.get('message', '')}".rstrip(": ")
            )
        return out


def _when(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _event_line(event: dict[str, Any]) -> str:
    at = float(event.get("at", 0))
    stage, outcome = str(event.get("stage")), str(event.get("outcome"))
    if stage in ("parse", "edge") and "received_at" in event:
        head = f"  {_when(float(event['received_at']))}  received"
        if event.get("envelope_id"):
            head += f" (webhook {event['envelope_id']})"
        if event.get("replay"):
            head += ", replayed from the dead letters"
        taken = "accepted by POST /send or wapipe send" if stage == "edge" else f"parse {outcome}"
        then = f" → {event['next']}" if event.get("next") else ""
        return f"{head}\n  {_when(at)}  {taken}{then}"
    line = f"  {_when(at)}  {stage} {outcome} (attempt {event.get('attempt')})"
    media = event.get("media")
    if isinstance(media, dict):
        if media.get("stored"):
            verified = "" if media.get("verified") else ", hash not verified"
            line += f", media stored: {media.get('file')} ({media.get('bytes')} bytes{verified})"
        else:
            line += f", media not stored ({media.get('error')})"
    if "replies" in event:
        line += f", {event['replies']} repl{'y' if event['replies'] == 1 else 'ies'} decided"
    if "messages" in event:
        line += f", {event['messages']} message{'s' if event['messages'] != 1 else ''}"
    if event.get("error"):
        line += f": {event['error']}"
    if event.get("delay_ms") is not None:
        line += f", again in {event['delay_ms']} ms"
    return line


def trace(client: redis.Redis, message_id: str) -> Trace:
    """Everything kept of ``message_id``: an inbound message id, ``send:<key>``, or the id of a
    message wapipe sent (then what it answered is traced)."""
    asked_for = None
    link = ledger.answered(client, message_id)
    if link is not None:
        asked_for, message_id = message_id, str(link["answers"])
    found = Trace(subject=message_id, asked_for=asked_for)
    found.events = journeys.Journeys(client, 0).read(message_id)
    if link is not None:
        found.phone_number_id, found.user = str(link["phone_number_id"]), _text(link.get("user"))
    at: int | None = None  # the time the subject's record is filed by (daemon.store.records)
    for event in found.events:
        if found.phone_number_id is None and event.get("phone_number_id"):
            found.phone_number_id = str(event["phone_number_id"])
        if at is None and isinstance(event.get("record_at"), int):
            at = int(event["record_at"])
    for letter in deadletters.all_letters(client):
        what = letter.what()
        send = (letter.message.get("kwargs") or {}).get("send")
        key = send.get("key") if isinstance(send, dict) else None
        if what.get("message_id") == message_id or (key is not None and f"send:{key}" == message_id):
            found.dead_letters.append(letter.summary())
            if found.phone_number_id is None:
                number = what.get("phone_number_id") or (send or {}).get("phone_number_id")
                found.phone_number_id = _text(number)
            if at is None:
                at = _record_at(letter.message.get("kwargs") or {})
    number = found.phone_number_id
    if number is None:
        return found
    subject = ledger.Subject(number, message_id, at or 0)
    the_ledger = ledger.ReplyLedger(client, 0)
    entries = the_ledger.entries(subject)
    sent_ids = [
        entry.removeprefix("sent:") for entry in entries if entry.startswith("sent:") and entry != "sent:"
    ]
    known = iter(statuses.latest_of(client, sent_ids))
    for index, entry in enumerate(entries):
        state, _, value = entry.partition(":")
        reply: dict[str, Any] = {"index": index, "state": state}
        if state == "sent" and not value:
            pass  # sent, its id no longer kept
        elif state == "sent":
            reply["id"] = value
            status = next(known)
            if status is not None:
                reply |= {"status": status.status, "status_at": status.timestamp or None}
                if status.error_code is not None:
                    reply["error_code"] = status.error_code
            if found.user is None:
                found.user = _text((ledger.answered(client, value) or {}).get("user"))
        elif state == "refused":
            reply["reason"] = value
        found.replies.append(reply)
    found.handled = the_ledger.replies(subject)
    turn = client.get(keys.turn(number, message_id)) if found.user is None else None
    if turn is not None:
        found.user = _text(json.loads(turn).get("user"))
    return found


def _record_at(kwargs: dict[str, Any]) -> int | None:
    """The time a dead letter's subject is filed by: its message's timestamp, its send's request time."""
    item, send = kwargs.get("item"), kwargs.get("send")
    if isinstance(item, dict) and isinstance(item.get("message"), dict):
        return timestamp_of(item["message"].get("timestamp")) or None
    if isinstance(send, dict) and isinstance(send.get("requested_at"), int | float):
        return int(send["requested_at"])
    return None


def _text(value: object) -> str | None:
    return None if value is None else str(value)

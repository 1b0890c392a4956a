"""Conversations in Redis: state, variables, the context window, the window time, and turns.

A conversation is keyed by (business number, user), the user being their ``wa_id`` or, for a user
with only a business-scoped id, that id. A **turn** is what the bot decided for one inbound
message: the replies, committed with the conversation's new state and variables, the inbound
message's timestamp (the 24-hour window) and the history, in one script (``turn.lua``), once. A
retry, a redelivery after a crash or an operator's replay of that message finds the turn and
sends its replies (through the reply ledger, at most once each) without running the bot or
applying the state again.

A user's messages reach the bot one at a time, in order (:mod:`daemon.store.order`). Conversations
expire ``WAPIPE_CONVERSATION_TTL_SECONDS`` after their
last turn; a turn lives as long as the reply ledger.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from daemon.conversation import WINDOW_SECONDS, Conversation, Entry
from daemon.store import keys, scripts, statuses


@dataclass(frozen=True, slots=True)
class Turn:
    """The replies decided for one inbound message, and whether this call committed them."""

    outbound: list[dict[str, Any]]
    #: False when the turn had been committed before (the state was not applied again).
    applied: bool


class ConversationChanged(Exception):
    """Another message of the same user changed the conversation after it was loaded: nothing
    was committed; load it again and decide again."""


class StateTooLarge(ValueError):
    """A turn would leave the conversation's state and variables over their size limit."""


class Conversations:
    """Conversations on one Redis client (one worker thread's).

    Args:
        history_messages: entries kept in the context window.
        history_characters: the most text the window handed to the bot holds (0: no limit).
        max_state_bytes: the most a conversation's state and variables may take, as JSON
            (``WAPIPE_MAX_STATE_BYTES``): a turn that leaves more is not committed.
        ttl_seconds: a conversation's life after its last turn.
        turn_ttl_seconds: a turn's life (the reply ledger's).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        history_messages: int,
        history_characters: int,
        max_state_bytes: int = 65_536,
        ttl_seconds: int,
        turn_ttl_seconds: int,
    ) -> None:
        self._client = client
        self._turn = scripts.register(client, "turn")
        self._note = scripts.register(client, "note")
        self.history_messages = history_messages
        self.history_characters = history_characters
        self.max_state_bytes = max_state_bytes
        self.ttl_seconds = ttl_seconds
        self.turn_ttl_seconds = turn_ttl_seconds

    def decided(self, phone_number_id: str, message_id: str) -> list[dict[str, Any]] | None:
        """The replies of a turn already committed for ``message_id``, or None (a retry, a
        redelivery after a crash, a replay: it keeps its place in the user's order until sent)."""
        stored = self._client.get(keys.turn(phone_number_id, message_id))
        if stored is None:
            return None
        return list(json.loads(stored)["outbound"])

    def last_inbound(self, phone_number_id: str, user: str) -> float | None:
        """Meta's timestamp of the user's last message the bot decided on, if any."""
        value = self._client.hget(keys.conversation(phone_number_id, user), "last_inbound")
        return None if value is None else float(value)

    def note(
        self, phone_number_id: str, user: str, *, subject: str | None = None, media: str | None = None
    ) -> None:
        """Add a ledger ``subject`` (a business send, ``send:<key>``) or a stored ``media`` file to
        the user's index, which :mod:`daemon.store.erasure` follows to forget them. A subject is
        kept as long as its turn (``index.lua``); a file's path as long as the conversation."""
        if subject is not None:
            self._note(
                keys=[keys.user_messages(phone_number_id, user)],
                args=[subject, int(time.time()), self.turn_ttl_seconds],
            )
        if media is not None:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.sadd(keys.user_media(phone_number_id, user), media)
                pipe.expire(keys.user_media(phone_number_id, user), self.ttl_seconds)
                pipe.execute()

    def load(self, phone_number_id: str, user: str) -> Conversation:
        """The conversation as the last committed turn left it (a new one if there is none)."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hmget(
                keys.conversation(phone_number_id, user), "state", "variables", "last_inbound", "version"
            )
            pipe.lrange(keys.history(phone_number_id, user), -self.history_messages, -1)
            (state, variables, last_inbound, version), raw_history = pipe.execute()
        history = self._within_budget([Entry.from_json(json.loads(entry)) for entry in raw_history])
        return Conversation(
            phone_number_id=phone_number_id,
            user=user,
            state=json.loads(state) if state else None,
            variables=dict(json.loads(variables)) if variables else {},
            history=tuple(self._with_deliveries(phone_number_id, history)),
            last_inbound_at=float(last_inbound) if last_inbound else None,
            version=int(version or 0),
        )

    def commit(
        self,
        conversation: Conversation,
        message_id: str,
        outbound: Sequence[dict[str, Any]],
        entries: Sequence[Entry],
        inbound_at: float | None,
    ) -> Turn:
        """Commit the turn of ``message_id``: its replies and the conversation's changes, once.

        Raises:
            TypeError: the state or a variable is not JSON (the bot's bug: nothing is committed).
            StateTooLarge: the state and variables are over ``max_state_bytes`` (nothing committed).
            ConversationChanged: another message's turn changed the conversation since it was loaded.
        """
        number, user = conversation.phone_number_id, conversation.user
        state, variables = json.dumps(conversation.state), json.dumps(conversation.variables)
        size = len(state.encode("utf-8", "surrogatepass")) + len(variables.encode("utf-8", "surrogatepass"))
        if size > self.max_state_bytes:
            raise StateTooLarge(
                f"the conversation's state and variables take {size} bytes as JSON; "
                f"WAPIPE_MAX_STATE_BYTES is {self.max_state_bytes}"
            )
        applied, stored = self._turn(
            keys=[
                keys.turn(number, message_id),
                keys.conversation(number, user),
                keys.history(number, user),
            ],
            args=[
                json.dumps({"outbound": list(outbound), "user": user}),
                state,
                variables,
                "" if inbound_at is None else repr(inbound_at),
                self.history_messages,
                self.ttl_seconds,
                self.turn_ttl_seconds,
                str(conversation.version),
                message_id,
                *(json.dumps(entry.to_json()) for entry in entries),
            ],
        )
        if int(applied) < 0:
            raise ConversationChanged(f"{number}:{message_id}")
        return Turn(list(json.loads(stored)["outbound"]), bool(int(applied)))

    def reset(self, phone_number_id: str, user: str) -> bool:
        """Forget a conversation's state, variables and history; True when there was one. The turns
        of messages already decided stay, so that a redelivered one is still not answered twice."""
        removed = self._client.delete(
            keys.conversation(phone_number_id, user), keys.history(phone_number_id, user)
        )
        return bool(removed)

    def _with_deliveries(self, phone_number_id: str, history: list[Entry]) -> list[Entry]:
        """``history`` with each outbound message's id and delivery status, found through its
        entry in the reply ledger (two round trips, when any was sent)."""
        slots = [
            (position, keys.ledger(phone_number_id, entry.answers, entry.index))
            for position, entry in enumerate(history)
            if entry.direction == "out" and entry.answers is not None
        ]
        if not slots:
            return history
        sent = [
            (position, value.decode().removeprefix("sent:"))
            for (position, _), value in zip(slots, self._client.mget([key for _, key in slots]), strict=True)
            if isinstance(value, bytes) and value.startswith(b"sent:")
        ]
        if not sent:
            return history
        found = statuses.latest_of(self._client, [outbound_id for _, outbound_id in sent])
        delivered = list(history)
        for (position, outbound_id), status in zip(sent, found, strict=True):
            delivered[position] = dataclasses.replace(
                history[position],
                id=outbound_id,
                status=status.status if status else None,
                error_code=status.error_code if status else None,
            )
        return delivered

    def _within_budget(self, history: list[Entry]) -> list[Entry]:
        """The newest entries whose text fits the character budget (all when there is none)."""
        if self.history_characters <= 0:
            return history
        kept: list[Entry] = []
        used = 0
        for entry in reversed(history):
            used += len(entry.text)
            if used > self.history_characters and kept:
                break
            kept.append(entry)
        return kept[::-1]


def active(client: redis.Redis, now: float) -> int:
    """How many conversations have their 24-hour window open at ``now`` (the user wrote in the last
    24 hours); the older ones leave the count."""
    with client.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(keys.ACTIVE_CONVERSATIONS, "-inf", now - WINDOW_SECONDS)
        pipe.zcard(keys.ACTIVE_CONVERSATIONS)
        _, count = pipe.execute()
    return int(count)

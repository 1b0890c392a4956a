"""Redis key names that more than one kind of process reads or writes."""

from __future__ import annotations


def handled_key(phone_number_id: str, message_id: str) -> str:
    """Set by ``reply`` when an inbound message is done: its value is the number of messages sent in
    answer (``0``: handled without reply). ``wapipe simulate`` waits for it."""
    return f"wapipe:handled:{phone_number_id}:{message_id}"


def ledger_key(phone_number_id: str, message_id: str, index: int) -> str:
    """The reply ledger entry of the ``index``-th outbound message answering ``message_id``."""
    return f"wapipe:reply:{phone_number_id}:{message_id}:{index}"

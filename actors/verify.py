"""verify: the pipeline's only entrance.

Queue ``wapipe``. Receives the webhook exactly as it arrived (``body``, the ``signature`` header
and ``received_at``). Re-checks the signature over the stored bytes, so that nothing written to
Redis by anyone else enters, and the envelope's shape; a failure sends the whole envelope to the
dead letters (:class:`EnvelopeRejected`, never retried). A good envelope with at least one change
is handed to ``parse`` as the last step.

Retries: only for Redis failures while handing on (bounded by ``WAPIPE_RETRY_*``).
"""

from __future__ import annotations

import logging
from typing import Any

from actors import runtime
from actors.errors import EnvelopeRejected
from daemon import signature as hub_signature
from daemon.envelope import count_changes, envelope_problem, loads
from daemon.queue import build_message

log = logging.getLogger(__name__)

ACTOR_NAME = "verify"
OPTIONS: dict[str, Any] = {}


def run(body: str, signature: str, received_at: float) -> None:
    rt = runtime.current()
    envelope_id = runtime.current_message_id()
    try:
        _check_signature(body, signature, rt.settings.app_secret.get())
        envelope = loads(body)
    except ValueError as error:
        raise EnvelopeRejected(f"stored body is not JSON: {error}", envelope_id=envelope_id) from None
    problem = envelope_problem(envelope)
    if problem is not None:
        raise EnvelopeRejected(f"not a WhatsApp webhook: {problem}", envelope_id=envelope_id)
    assert isinstance(envelope, dict)  # envelope_problem refuses anything else
    changes = count_changes(envelope)
    if changes == 0:
        log.info("envelope_empty", extra={"actor": ACTOR_NAME, "envelope_id": envelope_id})
        return
    rt.queue.enqueue(
        build_message("parse", {"body": body, "received_at": received_at, "envelope_id": envelope_id})
    )
    log.debug(
        "envelope_verified", extra={"actor": ACTOR_NAME, "envelope_id": envelope_id, "changes": changes}
    )


def _check_signature(body: str, header: str, secret: str) -> None:
    try:
        hub_signature.verify(body.encode("utf-8"), header, secret)
    except hub_signature.SignatureError as error:
        raise EnvelopeRejected(f"signature of the stored bytes: {error}") from None

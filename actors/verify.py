"""verify: the pipeline's only entrance.

Queue ``wapipe``. Receives the webhook exactly as it arrived (:class:`~daemon.pipeline.Webhook`).
Re-checks the signature over the stored bytes, so that nothing written to Redis by anyone else
enters, and the envelope's shape; a failure sends the whole envelope to the dead letters
(:class:`EnvelopeRejected`, never retried). A good envelope with at least one change is handed to
``parse`` as the last step.

Retries: only for Redis failures while handing on (bounded by ``WAPIPE_RETRY_*``).
"""

from __future__ import annotations

import logging

from actors.context import Context
from actors.errors import EnvelopeRejected
from daemon import signature as hub_signature
from daemon.envelope import count_changes, envelope_problem, loads
from daemon.pipeline import PARSE, VERIFY, Envelope, Webhook

log = logging.getLogger(__name__)


def run(context: Context, webhook: Webhook) -> None:
    envelope_id = context.message_id
    try:
        _check_signature(webhook, context.settings.app_secret.get())
        envelope = loads(webhook.body)
    except ValueError as error:
        raise EnvelopeRejected(f"stored body is not JSON: {error}", envelope_id=envelope_id) from None
    problem = envelope_problem(envelope)
    if problem is not None:
        raise EnvelopeRejected(f"not a WhatsApp webhook: {problem}", envelope_id=envelope_id)
    assert isinstance(envelope, dict)  # envelope_problem refuses anything else
    changes = count_changes(envelope)
    if changes == 0:
        log.info("envelope_empty", extra={"actor": VERIFY.name, "envelope_id": envelope_id})
        return
    context.store.queue.send(PARSE, Envelope(webhook.body, webhook.received_at, envelope_id))
    log.debug(
        "envelope_verified", extra={"actor": VERIFY.name, "envelope_id": envelope_id, "changes": changes}
    )


def _check_signature(webhook: Webhook, secret: str) -> None:
    try:
        hub_signature.verify(webhook.body.encode("utf-8"), webhook.signature, secret)
    except hub_signature.SignatureError as error:
        raise EnvelopeRejected(f"signature of the stored bytes: {error}") from None

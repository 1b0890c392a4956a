"""Worker metrics: the README's names and labels (a contract), one exposition per ``wapipe worker``.

Each worker process writes through prometheus-client's multiprocess mode into a directory that
belongs to one ``wapipe worker`` invocation only (``PROMETHEUS_MULTIPROC_DIR``, made unique and
emptied by ``wapipe worker`` before it forks), and that invocation's main process serves their sum
on ``$WAPIPE_METRICS_PORT``. Two workers on one machine therefore never share or wipe each other's
files. Every label set is created at 0; no user or message ids are ever labels.

Dramatiq's bundled Prometheus middleware is not used: it counts retries twice, leaves gauges stuck
or negative and exports nothing in some import orders (docs/dramatiq.md).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import dramatiq
from prometheus_client import Counter, Gauge, Histogram

from actors.dead_letters import expected, reason_line
from daemon.envelope import OTHER_FIELDS
from daemon.graph import DOCUMENTED_CODES
from daemon.logs import traceback_lines
from daemon.pipeline import STAGE_NAMES

log = logging.getLogger(__name__)

ACTORS = STAGE_NAMES
ACTOR_OUTCOMES = ("succeeded", "retried", "failed", "dead_lettered")
GRAPH_ENDPOINTS = ("send", "mark_read", "media_info", "media_download", "media_upload")
GRAPH_RESULTS = ("ok", "client_error", "server_error", "throttled", "auth", "unreachable", "timeout")
INBOUND_TYPES = (
    "text", "image", "video", "audio", "document", "sticker", "location", "contacts", "interactive",
    "button", "reaction", "order", "system", "unsupported", "revoke", "edit", "unknown",
)  # fmt: skip
STATUSES = ("sent", "delivered", "read", "played", "failed", "unknown")
DUPLICATE_KINDS = ("message", "status")
MEDIA_OUTCOMES = ("stored", "unverified", "failed")
RATE_LIMITS = ("per_number", "pair")
FIELDS = (*OTHER_FIELDS, "other")
ERROR_CODES = (*(str(code) for code in sorted(DOCUMENTED_CODES)), "other")
DROP_REASONS = ("foreign_number", "invalid_status")
WINDOW_OUTCOMES = ("template", "refused")
#: The kinds of worker process, as ``wapipe_worker_restarts_total`` labels them.
PROCESS_KINDS = ("pipeline", "media")
#: The value of a label whose value is not one of those listed for it.
OTHER = "other"

#: Seconds; from a 5 ms hop to a minute-long media download.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Webhook receipt to reply accepted: a chat reply should take well under a second.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class WorkerMetrics:
    """The worker families. Created in each worker process after the multiprocess dir is set."""

    def __init__(self) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=None)

        self.threads = Gauge(
            "wapipe_worker_threads",
            "Worker threads, summed over live processes.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.busy = Gauge(
            "wapipe_worker_busy_threads",
            "Worker threads running an actor now.",
            ["actor"],
            registry=None,
            multiprocess_mode="livesum",
        )
        self.messages = counter("wapipe_actor_messages", "Actor runs by outcome.", ("actor", "outcome"))
        self.duration = Histogram(
            "wapipe_actor_duration_seconds",
            "Time an actor run took.",
            ["actor"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.graph_requests = counter(
            "wapipe_graph_requests", "Graph API requests by result.", ("endpoint", "result")
        )
        self.graph_duration = Histogram(
            "wapipe_graph_request_duration_seconds",
            "Graph API request time.",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.reply_latency = Histogram(
            "wapipe_reply_latency_seconds",
            "From webhook receipt to the reply accepted by the Graph API.",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.inbound = counter("wapipe_inbound_messages", "New inbound messages by type.", ("type",))
        self.statuses = counter("wapipe_statuses", "New status updates by status.", ("status",))
        self.duplicates = counter("wapipe_duplicates", "Deliveries skipped as duplicates.", ("kind",))
        self.media_downloads = counter("wapipe_media_downloads", "Media downloads by outcome.", ("outcome",))
        self.media_bytes = counter("wapipe_media_bytes", "Bytes of media stored.")
        self.rate_limit_waits = counter(
            "wapipe_rate_limit_waits", "Sends that waited for an outbound rate limit.", ("limit",)
        )
        self.unhandled_fields = counter(
            "wapipe_unhandled_fields", "Webhook changes of fields other than messages, by field.", ("field",)
        )
        self.webhook_error_items = counter(
            "wapipe_webhook_error_items", "Value-level errors Meta reported in webhooks, by code.", ("code",)
        )
        self.outside_window = counter(
            "wapipe_outside_window",
            "Free-form replies due after the user's 24-hour window closed: sent as the handler's template, or refused.",
            ("outcome",),
        )
        self.active_conversations = Gauge(
            "wapipe_active_conversations",
            "Conversations whose 24-hour window is open (the user wrote in the last 24 hours).",
            registry=None,
            multiprocess_mode="max",
        )
        self.ordering_waits = counter(
            "wapipe_ordering_waits", "Messages that waited for an earlier message of their user."
        )
        self.ordering_dropped = counter(
            "wapipe_ordering_dropped",
            "Earlier messages that lost their place in their user's order: a later one waited "
            "WAPIPE_ORDER_WAIT_SECONDS for them.",
        )
        self.dropped_items = counter(
            "wapipe_dropped_items", "Items not handled on purpose, by reason.", ("reason",)
        )
        for actor in ACTORS:
            self.busy.labels(actor)
            self.duration.labels(actor)
            for outcome in ACTOR_OUTCOMES:
                self.messages.labels(actor, outcome)
        for endpoint in GRAPH_ENDPOINTS:
            self.graph_duration.labels(endpoint)
            for result in GRAPH_RESULTS:
                self.graph_requests.labels(endpoint, result)
        for labels, family in (
            (INBOUND_TYPES, self.inbound),
            (STATUSES, self.statuses),
            (DUPLICATE_KINDS, self.duplicates),
            (MEDIA_OUTCOMES, self.media_downloads),
            (RATE_LIMITS, self.rate_limit_waits),
            (FIELDS, self.unhandled_fields),
            (ERROR_CODES, self.webhook_error_items),
            (DROP_REASONS, self.dropped_items),
            (WINDOW_OUTCOMES, self.outside_window),
        ):
            for label in labels:
                family.labels(label)

    def inbound_type(self, kind: object) -> str:
        return kind if isinstance(kind, str) and kind in INBOUND_TYPES else "unknown"

    def status(self, status: object) -> str:
        return status if isinstance(status, str) and status in STATUSES else "unknown"

    def field_label(self, field: str) -> str:
        return field if field in OTHER_FIELDS else OTHER

    def error_code_label(self, code: object) -> str:
        known = isinstance(code, int) and not isinstance(code, bool) and code in DOCUMENTED_CODES
        return str(code) if known else OTHER


def worker_restarts() -> Counter:
    """``wapipe_worker_restarts_total{process}``: worker processes that died and were replaced by
    their main process (``pipeline`` or ``media``). Created by the main process, which counts
    them; both label values at 0 from the start."""
    restarts = Counter(
        "wapipe_worker_restarts",
        "Worker processes that died and were replaced, by kind of process.",
        ["process"],
        registry=None,
    )
    for kind in PROCESS_KINDS:
        restarts.labels(kind)
    return restarts


def process_gone(pid: int) -> None:
    """Drop the live-only gauges (threads, busy threads) of worker process ``pid``, which ended
    without doing it itself (killed): its counters stay in the sums."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


_metrics: WorkerMetrics | None = None


def current() -> WorkerMetrics:
    """This process's metrics (created on first use, after the worker set its environment)."""
    global _metrics
    if _metrics is None:
        _metrics = WorkerMetrics()
    return _metrics


class ActorMetrics(dramatiq.Middleware):
    """Busy threads, run durations and outcomes of every actor run.

    Must be added before ``Retries``: ``after_*`` hooks run in reverse order, and the outcome
    depends on the verdict Retries reached (retried, or failed into the dead letters).
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._started: dict[str, float] = {}  # redis message id → start; one entry per running thread

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        current().threads.set(self.threads)

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._started[_key(message)] = time.perf_counter()
        current().busy.labels(message.actor_name).inc()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        metrics = current()
        actor = message.actor_name
        started = self._started.pop(_key(message), None)
        if started is None:
            return
        metrics.busy.labels(actor).dec()
        metrics.duration.labels(actor).observe(time.perf_counter() - started)
        outcome = _outcome(message, exception)
        metrics.messages.labels(actor, outcome).inc()
        if exception is not None and outcome == "retried":  # a dead letter logs its own line
            _log_retried(message, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if self._started.pop(_key(message), None) is not None:
            current().busy.labels(message.actor_name).dec()
            current().messages.labels(message.actor_name, "failed").inc()


def _log_retried(message: Any, exception: BaseException) -> None:
    """One content-free line per retried run (Dramatiq's own lines quote the message)."""
    fields: dict[str, Any] = {
        "actor": message.actor_name,
        "message_id": message.message_id,
        "attempt": int(message.options.get("retries", 0)),
        "reason": reason_line(exception),
    }
    if expected(exception):
        log.info("actor_retry", extra=fields)
    else:
        log.error("actor_retry", extra={**fields, "traceback": traceback_lines(exception)})


def _key(message: Any) -> str:
    return str(message.options.get("redis_message_id") or message.message_id)


def _outcome(message: Any, exception: BaseException | None) -> str:
    """``succeeded``; ``retried`` (Retries enqueued it again); ``dead_lettered``.

    ``failed`` is left for a run that ended without a result and was neither retried nor
    dead-lettered (a skipped message): it should stay at 0.
    """
    if exception is None:
        return "succeeded"
    return "dead_lettered" if message.failed else "retried"

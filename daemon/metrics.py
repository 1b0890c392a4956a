"""Prometheus metrics of the web process (names and labels are a contract: see the README).

Each application owns its registry: nothing is registered globally at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from daemon.store.queues import QueueStats

WEBHOOK_OUTCOMES = ("accepted", "bad_signature", "too_large", "bad_json", "unavailable", "overloaded")
QUEUE_STATES = ("ready", "delayed", "in_flight", "dead")
#: Ack latency buckets: Meta asks for a median under 250 ms and under 1 % over 1 s.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WebMetrics:
    """The webhook and queue families, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "wapipe_webhook_requests",
            "Webhook deliveries (POST /webhook) by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "wapipe_webhook_request_duration_seconds",
            "Time from receiving a webhook delivery to answering it.",
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.queue_messages = Gauge(
            "wapipe_queue_messages",
            "Messages in each pipeline queue by state, read from Redis at scrape.",
            ["queue", "state"],
            registry=self.registry,
        )
        self.oldest_age = Gauge(
            "wapipe_queue_oldest_message_age_seconds",
            "Age of the oldest ready message in each queue, read from Redis at scrape.",
            ["queue"],
            registry=self.registry,
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.requests.labels(outcome)

    def observe(self, outcome: str, seconds: float) -> None:
        self.requests.labels(outcome).inc()
        self.duration.observe(seconds)

    def set_queue_stats(self, stats: dict[str, QueueStats] | None) -> None:
        """Publish the figures just read; on a failed read, drop them rather than show stale ones."""
        if stats is None:
            self.queue_messages.clear()
            self.oldest_age.clear()
            return
        for queue, figures in stats.items():
            for state in QUEUE_STATES:
                self.queue_messages.labels(queue, state).set(getattr(figures, state))
            self.oldest_age.labels(queue).set(figures.oldest_age_seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

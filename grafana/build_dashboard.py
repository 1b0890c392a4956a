"""Build grafana/dashboards/wapipe.json (run: python grafana/build_dashboard.py).

The dashboard is code: each panel states the operator's question it answers (its description)
and its PromQL. tests/test_observability.py checks that the committed JSON is this script's
output and runs every expression against a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

UID = "wapipe-pipeline"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


def panel(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    *,
    unit: str = "short",
    kind: str = "timeseries",
    width: int = 12,
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
        "gridPos": {"w": width, "h": 8},
    }


def quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE}])))", f"{legend}p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]


PANELS: list[dict[str, Any]] = [
    panel(
        "Ingress: webhooks by outcome",
        "How many webhook deliveries arrive per second, and how many are accepted (durably enqueued) "
        "versus refused (bad signature, too large, bad JSON, Redis unavailable, queue over its limit)?",
        [(f"sum by (outcome) (rate(wapipe_webhook_requests_total[{RATE}]))", "{{outcome}}")],
        unit="reqps",
    ),
    panel(
        "Rejections",
        "Is anything being refused? 401s mean a wrong app secret or forged traffic; 503s mean Meta will "
        "retry (Redis down or backpressure).",
        [(f'sum by (outcome) (rate(wapipe_webhook_requests_total{{outcome!="accepted"}}[{RATE}]))', "{{outcome}}")],
        unit="reqps",
    ),
    panel(
        "Webhook ack latency",
        "How fast does the edge answer Meta? Meta asks for a median under 250 ms and under 1 % over 1 s.",
        quantiles("wapipe_webhook_request_duration_seconds"),
        unit="s",
    ),
    panel(
        "Queue depth by state",
        "How much work is waiting (ready), backing off (delayed, incl. retries), being worked on "
        "(in flight, incl. prefetched) or dead-lettered, per queue?",
        [("max by (queue, state) (wapipe_queue_messages)", "{{queue}} {{state}}")],
    ),
    panel(
        "Oldest ready message",
        "How long has the oldest ready message been waiting? A growing age means workers are not keeping up.",
        [("max by (queue) (wapipe_queue_oldest_message_age_seconds)", "{{queue}}")],
        unit="s",
    ),
    panel(
        "Workers: busy vs capacity",
        "Are the worker threads saturated? Busy threads per actor against the total threads of all workers.",
        [
            ("sum by (actor) (wapipe_worker_busy_threads)", "busy {{actor}}"),
            ("sum(wapipe_worker_threads)", "capacity"),
        ],
    ),
    panel(
        "Worker process restarts",
        "Are worker processes dying (killed, out of memory, a crash in C code)? Each one is replaced by its "
        "worker's main process and counted here, by kind; more than 5 within a minute stop the worker "
        "(exit 1). The worker log says which (worker_process_died, with its exit code).",
        [(f"sum by (process) (increase(wapipe_worker_restarts_total[{RATE}]))", "{{process}}")],
    ),
    panel(
        "Actor runs by outcome",
        "How many actor runs succeed, get retried or end in the dead letters, per stage?",
        [(f"sum by (actor, outcome) (rate(wapipe_actor_messages_total[{RATE}]))", "{{actor}} {{outcome}}")],
        unit="ops",
    ),
    panel(
        "Actor latency p50 / p95 / p99",
        "How long does each stage take per message (verify, parse, fetch_media, reply)?",
        quantiles("wapipe_actor_duration_seconds", "actor"),
        unit="s",
    ),
    panel(
        "Reply latency (webhook received → reply accepted)",
        "How long does a user wait for the answer, from the webhook's arrival to the Graph API accepting the reply?",
        quantiles("wapipe_reply_latency_seconds"),
        unit="s",
    ),
    panel(
        "Graph API requests by result",
        "Is the Graph API answering? Results per endpoint: ok, client_error (4xx), server_error (5xx), "
        "throttled (429 and rate-limit codes), auth (token refused), unreachable, timeout.",
        [(f"sum by (endpoint, result) (rate(wapipe_graph_requests_total[{RATE}]))", "{{endpoint}} {{result}}")],
        unit="reqps",
    ),
    panel(
        "Graph API errors by code class",
        "Which kind of Graph errors happen, as a share of all requests? (The exact codes are in the logs "
        "and in `wapipe dlq list`.)",
        [
            (
                f'sum by (result) (rate(wapipe_graph_requests_total{{result!="ok"}}[{RATE}])) '
                f"/ scalar(sum(rate(wapipe_graph_requests_total[{RATE}])))",
                "{{result}}",
            )
        ],
        unit="percentunit",
    ),
    panel(
        "Graph API latency p50 / p95 / p99",
        "How long do Graph API calls take, per endpoint?",
        quantiles("wapipe_graph_request_duration_seconds", "endpoint"),
        unit="s",
    ),
    panel(
        "Dead letters",
        "Are messages ending in the dead letters (and how many are kept)? Inspect them with `wapipe dlq list`.",
        [
            ('max by (queue) (wapipe_queue_messages{state="dead"})', "kept {{queue}}"),
            (f'sum by (actor) (rate(wapipe_actor_messages_total{{outcome="dead_lettered"}}[{RATE}]))', "new {{actor}}"),
        ],
    ),
    panel(
        "Inbound messages by type",
        "What are users sending (new messages, after deduplication)?",
        [(f"sum by (type) (rate(wapipe_inbound_messages_total[{RATE}]))", "{{type}}")],
        unit="ops",
    ),
    panel(
        "Statuses and duplicates",
        "How many delivery statuses arrive, and how many deliveries were duplicates skipped by dedup?",
        [
            (f"sum by (status) (rate(wapipe_statuses_total[{RATE}]))", "status {{status}}"),
            (f"sum by (kind) (rate(wapipe_duplicates_total[{RATE}]))", "duplicate {{kind}}"),
        ],
        unit="ops",
    ),
    panel(
        "Media downloads",
        "Are media files being stored, stored as unverified (hash mismatch), or failing to download?",
        [(f"sum by (outcome) (rate(wapipe_media_downloads_total[{RATE}]))", "{{outcome}}")],
        unit="ops",
    ),
    panel(
        "Media bytes stored",
        "How much media is written to disk per second?",
        [(f"sum(rate(wapipe_media_bytes_total[{RATE}]))", "bytes/s")],
        unit="Bps",
    ),
    panel(
        "Outbound rate-limit waits",
        "How often do sends wait for the per-number or per-recipient rate limit?",
        [(f"sum by (limit) (rate(wapipe_rate_limit_waits_total[{RATE}]))", "{{limit}}")],
        unit="ops",
    ),
    panel(
        "Each user's order",
        "How often does a message wait for the user's message before it, and how often does a "
        "message lose its place after a later one waited WAPIPE_ORDER_WAIT_SECONDS for it?",
        [
            (f"sum(rate(wapipe_ordering_waits_total[{RATE}]))", "waited"),
            (f"sum(rate(wapipe_ordering_dropped_total[{RATE}]))", "lost its place"),
        ],
        unit="ops",
    ),
    panel(
        "Items not answered on purpose",
        "What arrives that is not a message to answer: changes of other webhook fields (subscribed but "
        "not handled), items for numbers outside WAPIPE_PHONE_NUMBER_IDS or unreadable statuses "
        "(dropped), and errors Meta reports inside webhooks, by code?",
        [
            (f"sum by (field) (rate(wapipe_unhandled_fields_total[{RATE}]))", "field {{field}}"),
            (f"sum by (reason) (rate(wapipe_dropped_items_total[{RATE}]))", "dropped {{reason}}"),
            (f"sum by (code) (rate(wapipe_webhook_error_items_total[{RATE}]))", "error {{code}}"),
        ],
        unit="ops",
        width=24,
    ),
]


def dashboard() -> dict[str, Any]:
    panels = []
    x = y = 0
    for index, item in enumerate(PANELS):
        width = item["gridPos"]["w"]
        if x + width > 24:  # a new row
            x, y = 0, y + 8
        item = {**item, "id": index + 1, "gridPos": {"x": x, "y": y, "w": width, "h": 8}}
        panels.append(item)
        x += width
    return {
        "uid": UID,
        "title": "wapipe: WhatsApp webhook pipeline",
        "description": "Ingress, queues, workers, latency, Graph API, dead letters and media of wapipe.",
        "tags": ["wapipe", "whatsapp", "dramatiq"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def main() -> None:
    target = Path(__file__).resolve().parent / "dashboards" / "wapipe.json"
    target.write_text(json.dumps(dashboard(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

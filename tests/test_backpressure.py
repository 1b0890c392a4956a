"""Backpressure: a burst over the queue limit is refused with 503 and, re-sent as Meta would, loses nothing."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from tests.pipeline_helpers import dead_letters, drained, post_webhook
from tests.support.fake_graph import FakeGraph, sent_json
from tests.support.meta import text_envelope
from tests.support.waiting import wait_for


def test_a_burst_over_capacity_is_shed_with_503_and_loses_nothing(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """300 webhooks at once against WAPIPE_MAX_QUEUE_DEPTH=40: the excess gets 503 (counted as overloaded);
    re-sending the refused ones until accepted, as Meta does, gets every message answered exactly once."""
    fake_graph.send_delay = 0.02
    stack = pipeline(WAPIPE_MAX_QUEUE_DEPTH="40")
    ids = [f"wamid.BURST{n}" for n in range(300)]

    def post(message_id: str) -> int:
        return post_webhook(stack["url"], text_envelope(message_id, message_id))

    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = dict(zip(ids, pool.map(post, ids), strict=True))
    refused = [i for i, status in statuses.items() if status != 200]
    assert set(statuses.values()) <= {200, 503}
    assert refused, "the burst should exceed the queue limit"
    shed = len(refused)

    deadline = time.monotonic() + 120
    while refused and time.monotonic() < deadline:  # Meta's retries, compressed
        refused = [i for i in refused if post(i) != 200]
        if refused:
            time.sleep(0.2)  # pacing: Meta waits between its retries
    assert refused == []

    wait_for(lambda: len(fake_graph.sends()) >= 300 and drained(rclient), timeout=120, what="every reply")
    counts = Counter(sent_json(s)["context"]["message_id"] for s in fake_graph.sends())
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}
    assert dead_letters(rclient) == []
    with urllib.request.urlopen(stack["url"] + "/metrics", timeout=5) as response:
        metrics = response.read().decode()
    overloaded = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('wapipe_webhook_requests_total{outcome="overloaded"}')
    )
    assert overloaded >= shed

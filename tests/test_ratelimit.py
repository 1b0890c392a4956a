"""Outbound rate limits shared by all workers (Redis GCRA), and the limiter inside the pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from daemon.store.ratelimit import SendLimiter
from tests.pipeline_helpers import dead_letters, drained, post_webhook
from tests.support.fake_graph import FakeGraph
from tests.support.meta import envelope
from tests.support.waiting import free_port, wait_for


def test_reservations_space_sends_by_the_rate(rclient: redis.Redis) -> None:
    """At 10/s per number the n-th immediate reservation waits about n × 100 ms; other numbers are free."""
    limiter = SendLimiter(rclient, per_number_rate=10, pair_interval_ms=0, pair_burst=1)
    waits = [limiter.reserve("111", f"+{n}", max_wait_ms=10_000).wait_ms for n in range(5)]
    assert waits[0] == 0
    for n, wait in enumerate(waits[1:], start=1):
        assert n * 100 - 20 <= wait <= n * 100 + 5, waits
    other = limiter.reserve("222", "+1", max_wait_ms=10_000)
    assert (other.wait_ms, other.limit, other.reserved) == (0, "", True)


def test_the_pair_limit_allows_a_burst_then_spaces(rclient: redis.Redis) -> None:
    """Per recipient: `burst` sends at once, then one per interval; a wait beyond max_wait takes no slot."""
    limiter = SendLimiter(rclient, per_number_rate=0, pair_interval_ms=1000, pair_burst=3)
    first = [limiter.reserve("111", "+1", max_wait_ms=5_000) for _ in range(3)]
    assert [r.wait_ms for r in first] == [0, 0, 0]
    fourth = limiter.reserve("111", "+1", max_wait_ms=5_000)
    assert fourth.limit == "pair"
    assert 900 <= fourth.wait_ms <= 1005
    refused = limiter.reserve("111", "+1", max_wait_ms=500)
    assert not refused.reserved
    assert 1900 <= refused.wait_ms <= 2005
    again = limiter.reserve("111", "+1", max_wait_ms=500)
    assert abs(again.wait_ms - refused.wait_ms) <= 10  # the refused one took nothing
    assert limiter.reserve("111", "+2", max_wait_ms=0).wait_ms == 0


def test_a_released_slot_is_given_back(rclient: redis.Redis) -> None:
    """A send that did not happen gives its slot back: the next reservation does not wait for it."""
    limiter = SendLimiter(rclient, per_number_rate=0, pair_interval_ms=1000, pair_burst=1)
    assert limiter.reserve("111", "+1", max_wait_ms=5_000).wait_ms == 0
    limiter.release("111", "+1")
    assert limiter.reserve("111", "+1", max_wait_ms=5_000).wait_ms == 0
    assert limiter.reserve("111", "+1", max_wait_ms=5_000).wait_ms >= 900


def test_concurrent_reservations_never_exceed_the_rate(redis_url: str) -> None:
    """200 reservations from 4 clients in 8 threads at once (as from several workers): slots are unique and spaced."""
    clients = [redis.Redis.from_url(redis_url) for _ in range(4)]
    try:
        limiters = [SendLimiter(c, per_number_rate=100, pair_interval_ms=0, pair_burst=1) for c in clients]
        seconds, micros = clients[0].time()
        began_us = seconds * 1_000_000 + micros
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda n: limiters[n % 4].reserve("111", f"+{n}", max_wait_ms=60_000), range(200))
            )
        seconds, micros = clients[0].time()
        ended_us = seconds * 1_000_000 + micros
        assert all(r.reserved for r in results)
        # Each reservation moved the schedule on by exactly one 10 ms slot: 200 slots, none shared.
        schedule_us = int(clients[0].get("wapipe:rate:number:111"))
        assert began_us + 200 * 10_000 <= schedule_us <= ended_us + 200 * 10_000
        waits = sorted(r.wait_ms for r in results)
        assert waits[0] == 0
        assert 1980 - (ended_us - began_us) / 1000 <= waits[-1] <= 1995
    finally:
        for client in clients:
            client.close()


def test_two_worker_processes_share_the_per_number_limit(
    pipeline: Callable[..., dict[str, Any]],
    fake_graph: FakeGraph,
    rclient: redis.Redis,
    start_proc: Callable[..., Any],
) -> None:
    """With WAPIPE_SEND_RATE=10 and two workers, no 1-second window holds more than 10 (+1 for clock jitter) sends."""
    stack = pipeline(WAPIPE_SEND_RATE="10")
    second = start_proc("worker-2", ["worker"], {**stack["env"], "WAPIPE_METRICS_PORT": str(free_port())})
    wait_for(lambda: "worker_ready" in second.output(), timeout=30, what="second worker")
    messages = [
        {"from": f"4477009{n:05d}", "id": f"wamid.RL{n}", "type": "text", "text": {"body": "x"}}
        for n in range(40)
    ]
    started = time.time()
    assert post_webhook(stack["url"], envelope(messages)) == 200
    sends = fake_graph.wait_sends(40, timeout=60)
    wait_for(lambda: drained(rclient), timeout=30, what="pipeline drained")
    times = sorted(record.at for record in sends)
    assert times[-1] - started >= 3.5  # 40 sends at 10/s cannot finish in less than ~3.9 s
    for first in times:
        assert sum(1 for t in times if first <= t < first + 1.0) <= 11
    assert dead_letters(rclient) == []


def test_the_pair_limit_defers_without_dead_letters(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """Eight messages from one user with a burst of 2 and 300 ms spacing: all answered, spaced, none dead."""
    stack = pipeline(WAPIPE_PAIR_INTERVAL_MS="300", WAPIPE_PAIR_BURST="2", WAPIPE_RETRY_MAX="1")
    messages = [
        {"from": "447700900123", "id": f"wamid.PAIR{n}", "type": "text", "text": {"body": "x"}}
        for n in range(8)
    ]
    assert post_webhook(stack["url"], envelope(messages)) == 200
    sends = fake_graph.wait_sends(8, timeout=30)
    times = sorted(record.at for record in sends)
    # Two go at once; the other six are 300 ms apart. Measured from the first spaced send, whose
    # own delay (the connection is warm by then) is like the last one's.
    assert times[-1] - times[2] >= (8 - 3) * 0.3 - 0.05
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    assert dead_letters(rclient) == []

"""Outbound rate limits shared by all workers (Redis GCRA), and the limiter inside the pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import redis

from daemon.store.journeys import Journeys
from daemon.store.ratelimit import SendLimiter
from tests.pipeline_helpers import dead_letters, drained, post_webhook, replies_to
from tests.support.fake_graph import FakeGraph, sent_json
from tests.support.meta import envelope
from tests.support.waiting import free_port, wait_for


def test_reservations_space_sends_by_the_rate(rclient: redis.Redis) -> None:
    """At 10/s per number the n-th immediate reservation waits about n × 100 ms; other numbers are free."""
    limiter = SendLimiter(rclient, per_number_rate=10, pair_interval_ms=0, pair_burst=1)
    waits = [limiter.reserve("111", f"+{n}").wait_ms for n in range(5)]
    assert waits[0] == 0
    for n, wait in enumerate(waits[1:], start=1):
        assert n * 100 - 20 <= wait <= n * 100 + 5, waits
    other = limiter.reserve("222", "+1")
    assert (other.wait_ms, other.limit, other.complete) == (0, "", True)


def test_the_pair_limit_allows_a_burst_then_spaces(rclient: redis.Redis) -> None:
    """Per recipient: `burst` sends at once, then one per interval; other recipients are free."""
    limiter = SendLimiter(rclient, per_number_rate=0, pair_interval_ms=1000, pair_burst=3)
    first = [limiter.reserve("111", "+1") for _ in range(3)]
    assert [r.wait_ms for r in first] == [0, 0, 0]
    fourth = limiter.reserve("111", "+1")
    assert fourth.limit == "pair"
    assert 900 <= fourth.wait_ms <= 1005
    assert limiter.reserve("111", "+2").wait_ms == 0


def test_a_far_slot_is_held_and_the_next_caller_gets_the_one_after(rclient: redis.Redis) -> None:
    """A pair slot beyond the caller's bound is still the caller's (the next reservation waits an
    interval more, not the same wait: no two sends share a slot), the per-number slot is left for
    when it comes back; coming back with the slot it holds reserves only the per-number one."""
    limiter = SendLimiter(rclient, per_number_rate=10, pair_interval_ms=1000, pair_burst=1)
    assert limiter.reserve("111", "+1", pair_max_wait_ms=100).complete
    deferred = limiter.reserve("111", "+1", pair_max_wait_ms=100)
    assert (deferred.limit, deferred.complete, set(deferred.slots)) == ("pair", False, {"pair"})
    assert 900 <= deferred.wait_ms <= 1005
    after = limiter.reserve("111", "+1", pair_max_wait_ms=100)
    assert 1900 <= after.wait_ms <= 2005
    assert after.slots["pair"] - deferred.slots["pair"] == 1_000_000
    other = limiter.reserve("111", "+2", pair_max_wait_ms=100)  # the number's schedule was not held
    assert other.complete
    assert other.wait_ms <= 105
    early = limiter.reserve("111", "+1", pair_max_wait_ms=100, held=deferred.slots)
    assert not early.complete
    assert early.slots == deferred.slots
    back = limiter.reserve("111", "+1", pair_max_wait_ms=2_000, held=deferred.slots)
    assert back.complete
    assert back.slots["pair"] == deferred.slots["pair"]
    assert 800 <= back.wait_ms <= 1005  # its own pair slot, not a new one after `after`'s


def test_a_released_slot_is_given_back(rclient: redis.Redis) -> None:
    """A send that did not happen gives its slot back: the next reservation does not wait for it."""
    limiter = SendLimiter(rclient, per_number_rate=0, pair_interval_ms=1000, pair_burst=1)
    assert limiter.reserve("111", "+1").wait_ms == 0
    limiter.release("111", "+1")
    assert limiter.reserve("111", "+1").wait_ms == 0
    assert limiter.reserve("111", "+1").wait_ms >= 900


def test_concurrent_reservations_never_exceed_the_rate(redis_url: str) -> None:
    """200 reservations from 4 clients in 8 threads at once (as from several workers): slots are unique and spaced."""
    clients = [redis.Redis.from_url(redis_url) for _ in range(4)]
    try:
        limiters = [SendLimiter(c, per_number_rate=100, pair_interval_ms=0, pair_burst=1) for c in clients]
        seconds, micros = clients[0].time()
        began_us = seconds * 1_000_000 + micros
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda n: limiters[n % 4].reserve("111", f"+{n}"), range(200)))
        seconds, micros = clients[0].time()
        ended_us = seconds * 1_000_000 + micros
        assert all(r.complete for r in results)
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


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds used so far by ``processes`` (those still running)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def test_pacing_delays_each_message_to_its_pair_slot(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """30 messages of one user at once, one per 500 ms allowed: each waits for a slot of its own in
    the delay queue (retried at most once for it, not once per slot that went to another), is
    answered and marked read exactly once, all drain in about 30 × 500 ms, and the workers stay
    near idle meanwhile. (8 threads × 500 ms: more than the 2 s a send may sleep, past which
    messages used to come back all at once for the same next slot.)"""
    count, interval = 30, 0.5
    stack = pipeline(
        WAPIPE_PAIR_INTERVAL_MS=str(int(interval * 1000)), WAPIPE_PAIR_BURST="1", WAPIPE_WORKER_THREADS="8"
    )
    worker = stack["worker"]
    processes = [psutil.Process(worker.pid), *worker.children()]
    ids = [f"wamid.PACE{n}" for n in range(count)]
    messages = [{"from": "447700900123", "id": id_, "type": "text", "text": {"body": "x"}} for id_ in ids]
    cpu_before = _cpu_seconds(processes)
    started = time.monotonic()
    assert post_webhook(stack["url"], envelope(messages)) == 200
    sends = fake_graph.wait_sends(count, timeout=count * interval + 20)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    drain = time.monotonic() - started
    cpu = _cpu_seconds(processes) - cpu_before
    journeys = Journeys(rclient, 3600)
    events = {id_: [e for e in journeys.read(id_) if e["outcome"] == "retry"] for id_ in ids}
    deferred = {
        id_: sum(1 for e in found if e["error"].startswith("SendDeferred")) for id_, found in events.items()
    }
    assert max(deferred.values()) <= 1, deferred
    # The rest: waits in the queue for the user's message before it, each a few times at most.
    waited = {id_: len(found) - deferred[id_] for id_, found in events.items()}
    assert all(e["error"].startswith(("SendDeferred", "OrderWait")) for f in events.values() for e in f)
    assert max(waited.values()) <= 8, waited
    assert len(fake_graph.sends()) == count
    assert len(fake_graph.of_kind("read")) == count
    assert all(replies_to(rclient, "620000000000001", id_) == 1 for id_ in ids)
    times = sorted(record.at for record in sends)
    assert times[-1] - times[0] >= (count - 1) * interval - 0.05  # the pair limit held
    assert drain < count * interval * 1.5 + 5
    # Loose: the idle workers' polls take about 0.04 s a second here, a message a few ms.
    assert cpu < 0.05 * count + 1.0, cpu
    assert dead_letters(rclient) == []


#: A bot that remembers what it saw: each answer names the messages before it.
MEMORY_BOT = """
from daemon.messages import Text


def handle(message, conversation):
    seen = conversation.variables.setdefault("seen", [])
    seen.append(message.text)
    return [Text(f"{message.text} after {','.join(seen[:-1]) or 'nothing'}", reply_to=message.id)]
"""


def test_paced_replies_keep_the_conversations_order(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """A bot that takes the conversation, ten messages of one user at once, one send per 300 ms:
    a message waiting for its slot has its turn decided already, so it holds no later message
    back (no deadlock, nothing dead-lettered); the bot saw them in the user's order, each answer
    sent once, each message delayed at most once for its slot. (The send order may differ from
    the decided one: a message reserves its slot after its turn and its read receipt, and the
    next one, decided just after, can reserve first.)"""
    (tmp_path / "memory_bot.py").write_text(MEMORY_BOT, encoding="utf-8")
    stack = pipeline(WAPIPE_HANDLER="memory_bot:handle", WAPIPE_PAIR_INTERVAL_MS="300", WAPIPE_PAIR_BURST="1")
    now = int(time.time())
    ids = [f"wamid.MEM{n}" for n in range(10)]
    messages = [
        {"from": "447700900123", "id": id_, "timestamp": str(now), "type": "text", "text": {"body": f"m{n}"}}
        for n, id_ in enumerate(ids)
    ]
    assert post_webhook(stack["url"], envelope(messages)) == 200
    sends = fake_graph.wait_sends(10, timeout=30)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    bodies = sorted(sent_json(record)["text"]["body"] for record in sends)
    expected = [f"m{n} after {','.join(f'm{k}' for k in range(n)) or 'nothing'}" for n in range(10)]
    assert bodies == sorted(expected)
    journeys = Journeys(rclient, 3600)
    for id_ in ids:
        paced = [e for e in journeys.read(id_) if str(e.get("error", "")).startswith("SendDeferred")]
        assert len(paced) <= 1, journeys.read(id_)
    assert dead_letters(rclient) == []

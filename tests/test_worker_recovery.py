"""A worker process that dies is replaced, its messages run again at once, and a whole worker that
dies is recovered from within 15 s with the default settings, while a slow handler is never taken
for dead (actors/supervisor.py, actors/reliability.py, daemon/store/queues.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis
from dramatiq.common import current_millis

from actors.reliability import Settling
from actors.supervisor import RESTART_LIMIT
from daemon.config import Settings
from daemon.pipeline import PIPELINE_QUEUE, REPLY, MessageItem
from daemon.store import keys
from daemon.store.queues import Queue, requeue_fetched
from tests.pipeline_helpers import dead_letters, drained, post_webhook, worker_metric
from tests.support.fake_graph import FakeGraph, sent_json
from tests.support.meta import envelope
from tests.support.procs import Proc, wait_exit
from tests.support.waiting import wait_for

Stack = dict[str, Any]

#: A conversation bot that records each run; "hold" sleeps through its first run (until the test
#: kills its process), "slow" takes 20 s every time, "crash" kills its process every time.
RECOVERY_BOT = """
import os
import signal
import time

import redis

from daemon.bot import Bot
from daemon.messages import Text

bot = Bot()
shared = redis.Redis.from_url(os.environ["REDIS_URL"])


@bot.fallback
def answer(message, conversation):
    text = message.text or message.type
    shared.rpush("test:runs", message.id)
    if text == "hold" and shared.set("test:held", os.getpid(), nx=True):
        time.sleep(120)
    if text == "slow":
        time.sleep(20)
    if text == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    seen = conversation.variables.setdefault("seen", [])
    seen.append(text)
    return [Text(f"{text} after {','.join(seen[:-1]) or 'nothing'}", reply_to=message.id)]
"""

NUMBER = "620000000000001"


def _bot(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "recovery_bot.py").write_text(RECOVERY_BOT, encoding="utf-8")
    return {"WAPIPE_HANDLER": "recovery_bot:bot", "PYTHONPATH": str(tmp_path)}


def _text(message_id: str, body: str, sender: str, at: int) -> dict[str, Any]:
    return {"id": message_id, "from": sender, "timestamp": str(at), "type": "text", "text": {"body": body}}


def _answers(fake_graph: FakeGraph) -> dict[str, str]:
    return {
        sent_json(r)["context"]["message_id"]: sent_json(r)["text"]["body"]
        for r in fake_graph.sends()
        if "context" in sent_json(r)
    }


def _runs(rclient: redis.Redis) -> Counter[str]:
    return Counter(run.decode() for run in rclient.lrange("test:runs", 0, -1))


def _held_by(rclient: redis.Redis) -> int:
    held = wait_for(lambda: rclient.get("test:held"), timeout=20, what="the bot to hold a message")
    return int(held)


def test_a_killed_pipeline_process_is_replaced_and_its_message_answered_once(
    pipeline: Callable[..., Stack], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """SIGKILL of the pipeline process deciding a user's message, the user's next message waiting
    behind it: the worker goes on. Its main process logs the death and the replacement, counts it
    in wapipe_worker_restarts_total{process="pipeline"} and keeps the summed thread gauge right;
    the killed message is put back at once (well within the heartbeat timeout) and the two are
    answered once each, in order; another user's message sent afterwards is answered too."""
    stack = pipeline(**_bot(tmp_path), WAPIPE_WORKER_PROCESSES="2", WAPIPE_WORKER_THREADS="2")
    worker: Proc = stack["worker"]
    env = stack["env"]
    now = int(time.time())
    assert post_webhook(stack["url"], envelope([_text("wamid.A1", "hold", "447700900001", now)])) == 200
    victim = _held_by(rclient)
    assert post_webhook(stack["url"], envelope([_text("wamid.A2", "two", "447700900001", now + 1)])) == 200
    wait_for(lambda: worker_metric(env, "wapipe_ordering_waits_total") >= 1, timeout=20, what="A2 waiting")
    before = {child.pid for child in worker.children()}
    assert victim in before
    assert len(before) == 3

    psutil.Process(victim).kill()
    killed_at = time.monotonic()
    wait_for(lambda: len(_answers(fake_graph)) >= 2, timeout=9, what="both answered, without the heartbeat")
    assert time.monotonic() - killed_at < 9
    assert _answers(fake_graph) == {"wamid.A1": "hold after nothing", "wamid.A2": "two after hold"}
    assert _runs(rclient)["wamid.A1"] == 2  # the killed run and the one after it

    assert post_webhook(stack["url"], envelope([_text("wamid.A3", "three", "447700900002", now + 2)])) == 200
    wait_for(lambda: "wamid.A3" in _answers(fake_graph), timeout=20, what="a later message answered")
    wait_for(
        lambda: worker_metric(env, "wapipe_worker_threads") == 2 * 2 + 2,
        timeout=20,
        what="the replacement's threads counted, the killed one's not",
    )
    assert worker_metric(env, "wapipe_worker_restarts_total", process="pipeline") == 1
    assert worker_metric(env, "wapipe_worker_restarts_total", process="media") == 0
    assert worker.alive()
    after = {child.pid for child in worker.children()}
    assert len(after) == 3
    assert victim not in after
    [died] = [line for line in worker.output().splitlines() if " worker_process_died " in line]
    for field in (f"pid={victim}", "exit_code=-9", "requeued=", 'hint="replacing it"'):
        assert field in died, died
    [replaced] = [line for line in worker.output().splitlines() if " worker_process_replaced " in line]
    assert f"replaces={victim}" in replaced
    assert "kind=pipeline" in replaced
    wait_for(lambda: drained(rclient), timeout=20, what="the queues drained")
    assert len(fake_graph.sends()) == 3, "a message was answered twice"
    assert dead_letters(rclient) == []


def test_a_killed_worker_is_recovered_within_15_s_with_the_default_settings(
    pipeline: Callable[..., Stack],
    fake_graph: FakeGraph,
    rclient: redis.Redis,
    tmp_path: Path,
    start_proc: Callable[..., Proc],
) -> None:
    """Two `wapipe worker`s with the default heartbeat settings; the one whose process is deciding
    a message is SIGKILLed whole (main and children at once, as the OOM killer or a container
    runtime does), so no parent is left to put its message back, and no other traffic comes: the
    other worker answers the message within 15 s of the kill, once."""
    stack = pipeline(**_bot(tmp_path))
    assert "WAPIPE_HEARTBEAT_TIMEOUT_MS" not in stack["env"]
    assert Settings.from_env(stack["env"]).heartbeat_timeout_ms == 10_000
    other = start_proc("worker-2", ["worker"], stack["env"])
    wait_for(lambda: "worker_ready" in other.output(), timeout=30, what="the second worker")
    now = int(time.time())
    assert post_webhook(stack["url"], envelope([_text("wamid.B1", "hold", "447700900001", now)])) == 200
    victim = _held_by(rclient)
    [holder] = [w for w in (stack["worker"], other) if victim in {c.pid for c in w.children()}]

    os.killpg(holder.pid, signal.SIGKILL)  # its own process group: the test started it in a session
    killed_at = time.monotonic()
    wait_for(lambda: "wamid.B1" in _answers(fake_graph), timeout=15, what="the answer after the kill")
    assert time.monotonic() - killed_at < 15
    assert _answers(fake_graph) == {"wamid.B1": "hold after nothing"}
    assert _runs(rclient)["wamid.B1"] == 2
    wait_for(lambda: drained(rclient), timeout=20, what="the queues drained")
    assert len(fake_graph.sends()) == 1


def test_a_20_s_handler_is_answered_once_and_its_process_heartbeats_meanwhile(
    pipeline: Callable[..., Stack], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """Default heartbeat settings, one pipeline process of one thread: a handler that takes 20 s
    (twice the heartbeat timeout) holds the thread while the next message waits in the prefetch
    (full: 2 of 2). All along, every worker process's heartbeat stays fresh, nothing goes back on
    the queue, and each message runs and is answered once."""
    stack = pipeline(**_bot(tmp_path), WAPIPE_WORKER_THREADS="1")
    timeout_ms = Settings.from_env(stack["env"]).heartbeat_timeout_ms
    now = int(time.time())
    both = envelope(
        [_text("wamid.C1", "slow", "447700900001", now), _text("wamid.C2", "fast", "447700900002", now + 1)]
    )
    assert post_webhook(stack["url"], both) == 200
    wait_for(lambda: _runs(rclient)["wamid.C1"] == 1, timeout=20, what="the slow handler to start")
    started = time.monotonic()

    def fetched() -> int:
        return sum(
            int(rclient.scard(key))
            for key in rclient.scan_iter(match=f"{keys.NAMESPACE}:__acks__.*.{PIPELINE_QUEUE}")
        )

    wait_for(lambda: fetched() == 2, timeout=10, what="the prefetch full: the slow one and the next")
    oldest = 0
    while len(_answers(fake_graph)) < 2:
        assert time.monotonic() - started < 40, "not answered"
        beats = rclient.zrange(keys.HEARTBEATS, 0, -1, withscores=True)
        assert len(beats) == 2  # the pipeline process and the media process
        oldest = max(oldest, current_millis() - int(min(score for _, score in beats)))
        # the consumers' polls heartbeat (every 0.1 s), not only the sweeper (every 2.5 s)
        assert oldest < min(2_000, timeout_ms / 2), f"a heartbeat {oldest} ms old"
        assert rclient.llen(keys.queue(PIPELINE_QUEUE)) == 0, "a message went back on the queue"
        time.sleep(0.25)  # sampling rate of the heartbeat watch, not a wait for a condition
    assert time.monotonic() - started >= 19
    assert _answers(fake_graph) == {"wamid.C1": "slow after nothing", "wamid.C2": "fast after nothing"}
    wait_for(lambda: drained(rclient), timeout=20, what="the queues drained")
    assert _runs(rclient) == Counter({"wamid.C1": 1, "wamid.C2": 1})
    assert len(fake_graph.sends()) == 2
    assert dead_letters(rclient) == []


def test_a_crash_loop_stops_the_worker_with_exit_1(
    pipeline: Callable[..., Stack], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """A message whose handler kills its process every time: each death is replaced and the
    message put back, until more than RESTART_LIMIT deaths within the window; then the worker
    says so and exits 1 (for systemd or `wapipe run` to see), rather than loop forever."""
    stack = pipeline(**_bot(tmp_path))
    worker: Proc = stack["worker"]
    assert (
        post_webhook(stack["url"], envelope([_text("wamid.D1", "crash", "447700900001", int(time.time()))]))
        == 200
    )
    assert wait_exit(worker, timeout=60) == 1
    output = worker.output()
    assert output.count(" worker_process_replaced ") == RESTART_LIMIT
    [loop] = [line for line in output.splitlines() if " worker_crash_loop " in line]
    assert f"deaths={RESTART_LIMIT + 1}" in loop
    assert _runs(rclient)["wamid.D1"] == RESTART_LIMIT + 1
    assert fake_graph.sends() == []


def _item(message_id: str) -> MessageItem:
    return MessageItem({"id": message_id, "type": "text", "from": "1"}, NUMBER, None, None, 0.0, None)


def test_requeue_puts_a_dead_processs_messages_back_oldest_first(rclient: redis.Redis) -> None:
    """What a dead process fetched goes back to the head of its queue, oldest first, before what
    was still ready; its delayed messages to the delay queue; an id acked meanwhile is dropped;
    its fetched sets and its heartbeat are gone; the count says how many went back."""
    queue = Queue(rclient)
    sent = [queue.send(REPLY, _item(f"wamid.R{n}")) for n in range(4)]
    ids = [message.options["redis_message_id"] for message in sent]
    ready = keys.queue(PIPELINE_QUEUE)
    for n, redis_id in enumerate(ids):  # enqueued in one millisecond: make their times tell them apart
        stored = json.loads(rclient.hget(keys.queue_messages(PIPELINE_QUEUE), redis_id))
        stored["message_timestamp"] = 1_700_000_000_000 + n
        rclient.hset(keys.queue_messages(PIPELINE_QUEUE), redis_id, json.dumps(stored))
    dead = "dead-broker"
    for redis_id in ids[:3]:  # fetched by the dead process, in a set (no order)
        rclient.lrem(ready, 0, redis_id)
        rclient.sadd(keys.fetched(dead, PIPELINE_QUEUE), redis_id)
    rclient.sadd(keys.fetched(dead, PIPELINE_QUEUE), "acked-meanwhile")
    rclient.hset(
        keys.queue_messages(f"{PIPELINE_QUEUE}.DQ"), "delayed-1", json.dumps({"message_timestamp": 1})
    )
    rclient.sadd(keys.fetched(dead, f"{PIPELINE_QUEUE}.DQ"), "delayed-1")
    rclient.zadd(keys.HEARTBEATS, {dead: current_millis(), "alive": current_millis()})

    assert requeue_fetched(rclient, dead) == 4
    assert [x.decode() for x in rclient.lrange(ready, 0, -1)] == ids  # R0, R1, R2 back before R3
    assert rclient.lrange(keys.queue(f"{PIPELINE_QUEUE}.DQ"), 0, -1) == [b"delayed-1"]
    assert not rclient.exists(keys.fetched(dead, PIPELINE_QUEUE), keys.fetched(dead, f"{PIPELINE_QUEUE}.DQ"))
    assert rclient.zrange(keys.HEARTBEATS, 0, -1) == [b"alive"]
    assert requeue_fetched(rclient, dead) == 0  # nothing twice


def test_the_maintenance_waits_after_an_outage_or_a_pause() -> None:
    """A sweeper forces the maintenance only once it has reached Redis on time for the settling
    time: not right after it started, after a failed sweep, or after a gap longer than that (a
    paused process), when live processes' heartbeats are as old as the dead ones'."""
    settling = Settling(5.0)
    assert not settling.may_sweep(2.5)  # first sweep after boot: a heartbeat only
    settling.reached(2.5)
    assert not settling.may_sweep(5.0)
    settling.reached(5.0)
    assert settling.may_sweep(7.5)
    settling.reached(7.5)
    assert not settling.may_sweep(20.0)  # 12.5 s since the last one: the process was paused
    settling.reached(20.0)
    assert settling.may_sweep(25.0)
    settling.failed()  # Redis unreachable
    assert not settling.may_sweep(27.5)
    settling.reached(27.5)
    assert not settling.may_sweep(30.0)
    assert settling.may_sweep(32.5)

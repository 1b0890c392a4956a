"""Failure semantics with real Redis, real worker processes and a fake Graph API scripted to fail.

For every webhook that got a 200: exactly one reply, or one dead letter with its reason.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from tests.conftest import pipeline_env
from tests.pipeline_helpers import dead_letters, dlq_cli, drained, post_webhook, record_of, worker_metric
from tests.support.fake_graph import FakeGraph, Reply, graph_error, sent_json
from tests.support.meta import envelope, text_envelope
from tests.support.procs import Proc, wait_exit
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for

Stack = dict[str, Any]


def send_counts(graph: FakeGraph) -> Counter[str]:
    """Successful-or-attempted sends per inbound message id."""
    return Counter(sent_json(s).get("context", {}).get("message_id") for s in graph.sends())


def _ready(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_transient_failures_then_success_send_exactly_once(
    pipeline: Callable[..., Stack], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """500, 503, a refused connection, 130429, then 200: one message sent, attempts spaced by the back-off."""
    fake_graph.script("send", Reply(500), Reply(503))
    stack = pipeline(WAPIPE_GRAPH_ATTEMPTS="1", WAPIPE_RETRY_MAX="6")
    assert post_webhook(stack["url"], text_envelope("wamid.T1", "persist")) == 200
    wait_for(lambda: len(fake_graph.sends()) == 2, timeout=20, what="500 and 503")
    fake_graph.refuse_connections()
    wait_for(lambda: "GraphUnreachable" in stack["worker"].output(), timeout=20, what="a refused connection")
    fake_graph.script("send", graph_error(130429, 400, "Rate limit hit"))
    fake_graph.accept_connections()
    wait_for(lambda: drained(rclient) and len(fake_graph.sends()) == 4, timeout=30, what="the final send")
    sends = fake_graph.sends()
    assert [sent_json(s)["text"]["body"] for s in sends] == ["You said: persist"] * 4
    assert rclient.get("wapipe:reply:620000000000001:wamid.T1:0").startswith(b"sent:")
    assert dead_letters(rclient) == []
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(sends)]
    assert all(0.09 <= gap <= 10 for gap in gaps), (
        gaps
    )  # Dramatiq back-off between 100 ms and 1 s (+ refusal)
    assert "send_throttled" in stack["worker"].output()


def test_a_bad_token_pauses_sending_and_resumes_without_dead_letters(
    pipeline: Callable[..., Stack], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """190 on every send for a while: nothing dead-lettered, retries not used up, sends resume by themselves."""
    fake_graph.script("send", *[graph_error(190, 401, "Access token expired")] * 12)
    stack = pipeline(WAPIPE_AUTH_PAUSE_MS="300", WAPIPE_RETRY_MAX="2")
    ids = [f"wamid.AUTH{n}" for n in range(3)]
    for message_id in ids:
        assert post_webhook(stack["url"], text_envelope(message_id, message_id)) == 200
    wait_for(lambda: len(fake_graph.sends()) >= 12 + 3, timeout=60, what="the token to be accepted again")
    wait_for(lambda: drained(rclient), timeout=30, what="pipeline drained")
    accepted = [sent_json(s) for s in fake_graph.sends()[12:]]
    assert sorted(a["context"]["message_id"] for a in accepted) == ids
    assert dead_letters(rclient) == []
    assert worker_metric(stack["env"], "wapipe_graph_requests_total", endpoint="send", result="auth") >= 1
    assert rclient.exists("wapipe:paused:620000000000001") == 0
    output = stack["worker"].output()
    assert "graph_token_refused_sending_paused" in output
    assert "sending_resumed" in output


@pytest.mark.parametrize("code", [131047, 100])
def test_permanent_errors_dead_letter_once_and_replay_sends_once(
    pipeline: Callable[..., Stack], fake_graph: FakeGraph, rclient: redis.Redis, code: int
) -> None:
    """A permanent code: no retry, one dead letter with the code; `wapipe dlq replay` after the fix sends it once."""
    fake_graph.script("send", graph_error(code, 400, "refused"))
    stack = pipeline()
    assert post_webhook(stack["url"], text_envelope("wamid.P1", "try me")) == 200
    [letter] = wait_for(lambda: dead_letters(rclient), timeout=20, what="a dead letter")
    assert letter["record"]["reason"]["code"] == code
    assert len(fake_graph.sends()) == 1

    listing = dlq_cli(stack["env"], "list")
    assert listing.returncode == 0, listing.stderr
    letter_id = letter["message"]["options"]["redis_message_id"]
    assert letter_id in listing.stdout
    assert f"GraphRejected code={code}" in listing.stdout
    assert "item=wamid.P1" in listing.stdout
    shown = json.loads(dlq_cli(stack["env"], "show", letter_id[:8]).stdout)
    assert shown["reason"]["fbtrace_id"] == f"trace-{code}"
    assert shown["stage"] == "reply"

    replayed = dlq_cli(stack["env"], "replay", letter_id)
    assert replayed.returncode == 0, replayed.stderr
    wait_for(lambda: len(fake_graph.sends()) == 2 and drained(rclient), timeout=20, what="the replayed send")
    assert dead_letters(rclient) == []
    again = dlq_cli(stack["env"], "replay", letter_id)
    assert again.returncode == 1
    assert "no dead letter" in again.stderr
    assert len(fake_graph.sends()) == 2


@pytest.mark.parametrize(
    "answer",
    [
        Reply(200, {"messages": [{"id": "wamid.late"}]}, delay=3),
        Reply(200, raw=b"<html>accepted</html>", headers={"Content-Type": "text/html"}),
    ],
    ids=["answered-too-late", "2xx-not-json"],
)
def test_a_send_that_may_have_been_delivered_is_resent_only_when_the_operator_names_the_risk(
    pipeline: Callable[..., Stack], fake_graph: FakeGraph, rclient: redis.Redis, answer: Reply
) -> None:
    """A send answered too late, or with a 2xx that is not a JSON object, may have reached the user:
    dead-lettered as OutcomeUnknown with its ledger entry kept; `dlq replay ID` refuses in one line,
    `dlq replay --all` skips it, and only `--resend-unknown` sends it again, once."""
    fake_graph.script("send", answer)
    stack = pipeline(WAPIPE_GRAPH_TIMEOUT_SECONDS="1")
    assert post_webhook(stack["url"], text_envelope("wamid.U1", "maybe")) == 200
    [letter] = wait_for(lambda: dead_letters(rclient), timeout=20, what="an unknown-outcome dead letter")
    assert letter["record"]["reason"]["type"] == "OutcomeUnknown"
    wait_for(lambda: drained(rclient), timeout=20, what="no retry under way")
    assert len(fake_graph.sends()) == 1
    assert record_of(rclient, "620000000000001", "wamid.U1").states == ("sending",)
    letter_id = letter["message"]["options"]["redis_message_id"]

    refused = dlq_cli(stack["env"], "replay", letter_id)
    assert refused.returncode == 1
    said = refused.stderr.strip().splitlines()[-1]  # after the DEBUG log lines these tests turn on
    assert said.startswith("wapipe dlq: ")
    assert "may have been delivered" in said
    assert "--resend-unknown" in said
    skipped = dlq_cli(stack["env"], "replay", "--all")
    assert skipped.returncode == 0, skipped.stderr
    assert f"skipped {letter_id}" in skipped.stdout
    assert len(dead_letters(rclient)) == 1
    assert len(fake_graph.sends()) == 1

    assert dlq_cli(stack["env"], "replay", "--all", "--resend-unknown").returncode == 0
    wait_for(lambda: len(fake_graph.sends()) == 2 and drained(rclient), timeout=20, what="the replay")
    assert rclient.get("wapipe:reply:620000000000001:wamid.U1:0").startswith(b"sent:")
    assert dead_letters(rclient) == []


def test_kill_9_of_a_worker_with_100_in_flight_recovers_without_traffic(
    pipeline: Callable[..., Stack],
    fake_graph: FakeGraph,
    rclient: redis.Redis,
    start_proc: Callable[..., Proc],
) -> None:
    """kill -9 mid-load, then no traffic: within 90 s every message is replied once or dead-lettered "unknown outcome"."""
    fake_graph.send_delay = 0.3
    stack = pipeline(WAPIPE_HEARTBEAT_TIMEOUT_MS="3000")
    ids = [f"wamid.K{n}" for n in range(100)]
    messages = [{"from": "447700900123", "id": i, "type": "text", "text": {"body": i}} for i in ids]
    assert post_webhook(stack["url"], envelope(messages)) == 200
    wait_for(lambda: len(fake_graph.sends()) >= 8, timeout=30, what="sends under way")
    worker: Proc = stack["worker"]
    worker.kill()  # SIGKILL to the whole worker tree
    killed_at = time.monotonic()
    in_doubt = rclient.hlen("dramatiq:wapipe.msgs")
    assert in_doubt > 0
    replacement = start_proc("worker-2", ["worker"], stack["env"])

    def settled() -> bool:
        letters = {d["message"]["kwargs"]["item"]["message"]["id"] for d in dead_letters(rclient)}
        counts = send_counts(fake_graph)
        return drained(rclient) and all(counts[i] >= 1 or i in letters for i in ids)

    wait_for(settled, timeout=90, interval=0.2, what="every message replied or dead-lettered")
    assert time.monotonic() - killed_at < 90
    counts = send_counts(fake_graph)
    assert max(counts.values()) == 1, "a message was answered twice"
    for letter in dead_letters(rclient):
        assert letter["record"]["reason"]["type"] == "OutcomeUnknown"
        assert counts[letter["message"]["kwargs"]["item"]["message"]["id"]] <= 1
    assert len(dead_letters(rclient)) <= 4  # at most the sends under way in the killed worker's 4 threads
    assert replacement.alive()


def test_redis_killed_and_restarted_during_a_stream_loses_nothing(
    fake_graph: FakeGraph, tmp_path: Path, start_proc: Callable[..., Proc]
) -> None:
    """Redis SIGKILLed mid-stream and restarted (AOF): 503s meanwhile, and every 200 is replied exactly once."""
    server = RedisServer(tmp_path / "own-redis")
    server.start()
    try:
        env = pipeline_env(server.url, fake_graph.url, tmp_path / "data")
        web = start_proc("web", ["web"], env)
        url = f"http://127.0.0.1:{env['PORT']}"
        wait_for(lambda: _ready(url) or not web.alive(), timeout=20, what="web")
        worker = start_proc("worker", ["worker"], env)
        wait_for(lambda: "worker_ready" in worker.output(), timeout=30, what="worker")
        results: dict[str, int] = {}
        stop = threading.Event()

        def stream() -> None:
            n = 0
            while not stop.is_set() and n < 400:
                message_id = f"wamid.S{n}"
                results[message_id] = post_webhook(url, text_envelope(message_id, message_id), timeout=5)
                n += 1
                stop.wait(0.02)  # pacing: a steady stream of about 50 webhooks per second

        thread = threading.Thread(target=stream)
        thread.start()
        wait_for(lambda: len(results) >= 40, timeout=20, what="traffic before the crash")
        server.kill()
        wait_for(lambda: list(results.values())[-1] == 503, timeout=10, what="503 during the outage")
        time.sleep(1.0)  # the outage itself is what is tested
        server.start()
        wait_for(lambda: list(results.values())[-1] == 200, timeout=20, what="200 after the restart")
        count = len(results)
        wait_for(lambda: len(results) >= count + 40, timeout=20, what="traffic after the restart")
        stop.set()
        thread.join()
        accepted = [i for i, status in results.items() if status == 200]
        assert 503 in results.values()
        assert set(results.values()) <= {0, 200, 503}  # 0: no answer in time, Meta would retry
        client = server.client()
        wait_for(
            lambda: set(accepted) <= set(send_counts(fake_graph)) and drained(client),
            timeout=60,
            what="a reply for every accepted webhook",
        )
        counts = send_counts(fake_graph)
        assert all(counts[i] == 1 for i in accepted)
        assert max(counts.values()) == 1
        assert dead_letters(client) == []
    finally:
        server.kill()


def test_a_duplicate_storm_gets_one_reply_per_message(
    pipeline: Callable[..., Stack], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """The same 20 webhooks 10 times each, 20 at a time: 20 replies."""
    stack = pipeline()
    bodies = [text_envelope(f"wamid.STORM{n}", f"storm {n}") for n in range(20)] * 10
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(lambda body: post_webhook(stack["url"], body), bodies))
    assert statuses == [200] * 200
    fake_graph.wait_sends(20)
    wait_for(lambda: drained(rclient), timeout=30, what="pipeline drained")
    counts = send_counts(fake_graph)
    assert len(counts) == 20
    assert set(counts.values()) == {1}
    assert worker_metric(stack["env"], "wapipe_duplicates_total", kind="message") == 180


def test_a_poison_message_is_dead_lettered_and_the_rest_flow(
    pipeline: Callable[..., Stack], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """A message that makes the handler raise every time: dead letter after its retries; 100 others replied."""
    (tmp_path / "poison_bot.py").write_text(
        "from daemon.handler import default_handler\n"
        "def handle(message):\n"
        "    if message.text == 'poison':\n"
        "        raise ValueError('cannot digest this')\n"
        "    return default_handler(message)\n",
        encoding="utf-8",
    )
    stack = pipeline(WAPIPE_HANDLER="poison_bot:handle", PYTHONPATH=str(tmp_path), WAPIPE_RETRY_MAX="2")
    # Another user's: a user's own later messages wait for their poison message (tests/test_user_order.py).
    assert post_webhook(stack["url"], text_envelope("wamid.POISON", "poison", sender="447700900999")) == 200
    messages = [
        {"from": "447700900123", "id": f"wamid.OK{n}", "type": "text", "text": {"body": "ok"}}
        for n in range(100)
    ]
    assert post_webhook(stack["url"], envelope(messages)) == 200
    fake_graph.wait_sends(100)
    [letter] = wait_for(lambda: dead_letters(rclient), timeout=30, what="the poison dead letter")
    # A bot's own exception may quote content: its message is kept as "detail", for `dlq show` only.
    assert letter["record"]["reason"] == {"type": "ValueError", "detail": "cannot digest this"}
    assert letter["record"]["attempts"] == 3
    assert letter["record"]["stage"] == "reply"
    wait_for(lambda: drained(rclient), timeout=30, what="pipeline drained")
    assert len(send_counts(fake_graph)) == 100
    assert stack["worker"].alive()


def test_sigterm_during_load_loses_nothing_and_sends_nothing_twice(
    pipeline: Callable[..., Stack],
    fake_graph: FakeGraph,
    rclient: redis.Redis,
    start_proc: Callable[..., Proc],
) -> None:
    """SIGTERM mid-load: in-flight work finishes, prefetched messages go back; a new worker finishes the rest."""
    fake_graph.send_delay = 0.1
    stack = pipeline()
    ids = [f"wamid.G{n}" for n in range(60)]
    messages = [{"from": "447700900123", "id": i, "type": "text", "text": {"body": i}} for i in ids]
    assert post_webhook(stack["url"], envelope(messages)) == 200
    wait_for(lambda: len(fake_graph.sends()) >= 5, timeout=30, what="sends under way")
    worker: Proc = stack["worker"]
    assert worker.stop(timeout=30) == 0
    assert len(send_counts(fake_graph)) < 60
    start_proc("worker-2", ["worker"], stack["env"])
    wait_for(
        lambda: len(send_counts(fake_graph)) == 60 and drained(rclient), timeout=60, what="all 60 replied"
    )
    assert set(send_counts(fake_graph).values()) == {1}
    assert dead_letters(rclient) == []


@pytest.mark.parametrize(
    ("appendonly", "save", "allow", "expected"),
    [
        (False, "", "0", "refused"),
        (False, "", "1", "started"),
        (False, "3600 1", "0", "warned"),
        (True, "", "0", "started"),
    ],
    ids=["volatile", "volatile-allowed", "snapshots-only", "aof"],
)
def test_the_worker_checks_redis_persistence_at_start(
    tmp_path: Path, fake_graph: FakeGraph, appendonly: bool, save: str, allow: str, expected: str
) -> None:
    """No AOF and no snapshots: refuse (exit 2) unless WAPIPE_ALLOW_VOLATILE_REDIS=1; snapshots only: a warning."""
    server = RedisServer(tmp_path / "r", appendonly=appendonly, save=save)
    server.start()
    env = pipeline_env(
        server.url,
        fake_graph.url,
        tmp_path / "data",
        WAPIPE_ALLOW_VOLATILE_REDIS=allow,
        WAPIPE_LOG_LEVEL="INFO",
    )
    worker = Proc("worker", ["worker"], env, tmp_path)
    try:
        if expected == "refused":
            assert wait_exit(worker, timeout=30) == 2
            assert "neither AOF nor snapshots" in worker.output()
            assert len(worker.output().strip().splitlines()) == 1
        else:
            wait_for(lambda: "worker_ready" in worker.output(), timeout=30, what="worker")
            assert ("redis_snapshots_only" in worker.output()) == (expected == "warned")
    finally:
        worker.stop()
        server.kill()


def test_dead_letters_past_retention_are_purged_with_a_log_line(
    pipeline: Callable[..., Stack], rclient: redis.Redis
) -> None:
    """A dead letter older than WAPIPE_DLQ_RETENTION_DAYS is deleted by the worker, with a log line."""
    old = time.time() - 1.5 * 86_400  # past the retention, not yet past Dramatiq's backstop expiry
    rclient.zadd("dramatiq:wapipe.XQ", {"old-letter": old * 1000})
    rclient.hset(
        "dramatiq:wapipe.XQ.msgs", "old-letter", json.dumps({"actor_name": "reply", "queue_name": "wapipe"})
    )
    rclient.hset("wapipe:dlq:reasons", "old-letter", json.dumps({"reason": {"type": "X"}}))
    stack = pipeline(WAPIPE_DLQ_RETENTION_DAYS="1", WAPIPE_HEARTBEAT_TIMEOUT_MS="2000")
    wait_for(
        lambda: rclient.zcard("dramatiq:wapipe.XQ") == 0 and rclient.hlen("wapipe:dlq:reasons") == 0,
        timeout=20,
        what="the purge",
    )
    wait_for(lambda: "dead_letters_purged" in stack["worker"].output(), timeout=5, what="the log line")


def test_dlq_purge_all_from_the_command_line(pipeline: Callable[..., Stack], rclient: redis.Redis) -> None:
    """`wapipe dlq purge --all` empties the dead letters; `list` then shows none."""
    rclient.zadd("dramatiq:wapipe.XQ", {"a-letter": time.time() * 1000})
    rclient.hset(
        "dramatiq:wapipe.XQ.msgs", "a-letter", json.dumps({"actor_name": "verify", "queue_name": "wapipe"})
    )
    stack = pipeline(worker=False)
    assert dlq_cli(stack["env"], "purge").stdout.strip() == "purged 0 dead letter(s)"
    assert dlq_cli(stack["env"], "purge", "--all").stdout.strip() == "purged 1 dead letter(s)"
    assert dlq_cli(stack["env"], "list").stdout.strip() == "0 dead letter(s)"
    assert psutil.Process().is_running()

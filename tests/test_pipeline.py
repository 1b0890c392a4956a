"""The text path through a real web and a real worker against the fake Graph API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis
from dramatiq import Message

from daemon.pipeline import VERIFY, Webhook
from daemon.pipeline import message as pipeline_message
from tests.pipeline_helpers import dead_letters, drained, post_webhook, record_of, rewrite_ids, worker_metric
from tests.support.fake_graph import FakeGraph, Reply, graph_error, sent_json
from tests.support.meta import envelope, text_envelope, webhook_samples
from tests.support.waiting import wait_for

PNID = "620000000000001"
#: The fake Graph API here knows no media ids (100 Invalid parameter), so media cannot be fetched.
COULD_NOT = "Got your {}, but could not download it."

#: The default reply for each fixture sample: inbound id suffix → (text, addressing).
EXPECTED: dict[str, list[str]] = {
    "text": ["You said: Olá! Do you deliver on Sundays?"],
    "text_reply_to_business_message": ["You said: Yes, that one please"],
    "text_forwarded": ["You said: Forwarded promo text"],
    "text_frequently_forwarded": ["You said: Chain message"],
    "text_product_inquiry": ["You said: Is this still in stock?"],
    "text_click_to_whatsapp_ad_referral": ["You said: I saw your ad"],
    "image": [COULD_NOT.format("image")],
    "video": [COULD_NOT.format("video")],
    "audio_voice_note": [COULD_NOT.format("audio")],
    "document": [COULD_NOT.format("document")],
    "sticker": [COULD_NOT.format("sticker")],
    "location": ["Got your location: 38.7223, -9.1393"],
    "contacts": ["Got 1 contact(s)."],
    "interactive_button_reply": ["You chose: Confirm"],
    "interactive_list_reply": ["You chose: Fri 10:00"],
    "interactive_nfm_reply_flow": ["Thanks, your form was received."],
    "button_template_quick_reply": ["You chose: Stop promotions"],
    "reaction": [],
    "reaction_removed": [],
    "order": ["Got your order of 2 item(s)."],
    "system_user_changed_number": [],
    "unsupported": ["Sorry, I can't read unsupported messages yet."],
    "text_bsuid_username_no_phone": ["You said: hi from a username user"],
    "status_sent": [],
    "status_delivered": [],
    "status_read": [],
    "status_played": [],
    "status_failed": [],
    "status_sent_with_biz_opaque_callback_data": [],
    "value_level_errors": [],
    "message_template_status_update": [],
    "batched_multi_entry_multi_change": [
        "You said: Olá! Do you deliver on Sundays?",
        COULD_NOT.format("image"),
    ],
}


def inbound_ids(sample: dict[str, Any]) -> list[str]:
    return [
        message["id"]
        for entry in sample.get("entry", [])
        for change in entry.get("changes", [])
        for message in change.get("value", {}).get("messages", [])
    ]


def test_every_fixture_sample_gets_exactly_the_design_reply(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """Each sample produces exactly the contract's calls: read receipt, then one quoting reply, or nothing."""
    samples = webhook_samples()
    assert set(samples) == set(EXPECTED)
    stack = pipeline()
    posted = {name: rewrite_ids(sample, name) for name, sample in samples.items()}
    for obj in posted.values():
        assert post_webhook(stack["url"], obj) == 200
    fake_graph.wait_sends(sum(len(v) for v in EXPECTED.values()))
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")

    sends = [sent_json(r) | {"_path": r.path} for r in fake_graph.sends()]
    reads = [sent_json(r) | {"_path": r.path} for r in fake_graph.of_kind("read")]
    assert len(sends) == sum(len(v) for v in EXPECTED.values())
    for name, texts in EXPECTED.items():
        ids = inbound_ids(posted[name])
        replies = [s for s in sends if s.get("context", {}).get("message_id") in ids]
        assert [r["text"]["body"] for r in replies] == texts, name
        receipts = [r for r in reads if r["message_id"] in ids]
        assert len(receipts) == len(texts), name
        for reply in replies:
            assert reply["_path"] == f"/v25.0/{PNID}/messages"
            assert reply["messaging_product"] == "whatsapp"
            assert reply["type"] == "text"
            if name == "text_bsuid_username_no_phone":
                assert reply["recipient"] == "GB.48213377190244810021"
                assert "to" not in reply
            else:
                assert reply["to"] == "+447700900123"
        for receipt in receipts:
            assert receipt == {
                "messaging_product": "whatsapp",
                "status": "read",
                "message_id": receipt["message_id"],
                "_path": f"/v25.0/{PNID}/messages",
            }
    # Read receipt before its reply, for every answered message.
    order = [(r.kind, (r.json or {}).get("message_id") or (r.json or {}).get("context", {}).get("message_id"))
             for r in fake_graph.requests]  # fmt: skip
    for kind, message_id in order:
        if kind == "send":
            assert order.index(("read", message_id)) < order.index(("send", message_id))
    assert all(r.headers.get("Authorization") == "Bearer test-access-token" for r in fake_graph.requests)
    # Statuses were recorded, monotonically (read after delivered after sent for the same id).
    status_key = "wapipe:status:status_read%3Awamid.NDQ3NzAwOTAwMTIzOm91dDowMDAwMDAwMDAwMDAwMDAwMDk1MA=="
    assert rclient.hget(status_key, "status") == b"read"
    assert dead_letters(rclient) == []
    env = stack["env"]
    assert worker_metric(env, "wapipe_unhandled_fields_total", field="message_template_status_update") == 1
    assert worker_metric(env, "wapipe_webhook_error_items_total", code="130429") == 1
    assert rclient.exists("wapipe:stats") == 0  # one counting system: Prometheus


def test_duplicate_deliveries_are_answered_once(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """The same webhook posted 5 times in a row and 5 times at once gives one reply."""
    stack = pipeline()
    obj = text_envelope("wamid.DUP1", "once please")
    for _ in range(5):
        assert post_webhook(stack["url"], obj) == 200
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(post_webhook(stack["url"], obj))) for _ in range(5)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 5
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    fake_graph.wait_sends(1)
    assert [sent_json(s)["text"]["body"] for s in fake_graph.sends()] == ["You said: once please"]
    assert worker_metric(stack["env"], "wapipe_duplicates_total", kind="message") == 9


def test_a_message_seen_in_another_envelope_is_not_answered_again(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """A message id already answered, arriving again inside a different batch, is skipped; its neighbour is not."""
    stack = pipeline()
    assert post_webhook(stack["url"], text_envelope("wamid.X1", "first")) == 200
    fake_graph.wait_sends(1)
    batch = envelope(
        [
            {"from": "447700900123", "id": "wamid.X1", "type": "text", "text": {"body": "first"}},
            {"from": "447700900123", "id": "wamid.X2", "type": "text", "text": {"body": "second"}},
        ]
    )
    assert post_webhook(stack["url"], batch) == 200
    fake_graph.wait_sends(2)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    assert [sent_json(s)["text"]["body"] for s in fake_graph.sends()] == [
        "You said: first",
        "You said: second",
    ]


def test_a_batch_of_50_across_two_numbers_gets_50_replies_from_the_right_numbers(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """Every message of a batched POST is answered (pywa #229 drops all but the first), from its own number."""
    stack = pipeline()
    numbers = ("620000000000001", "620000000000002")
    entries = []
    for number in numbers:
        messages = [
            {
                "from": f"44770090{n:04d}",
                "id": f"wamid.{number}.{n}",
                "type": "text",
                "text": {"body": f"m{n}"},
            }
            for n in range(25)
        ]
        entries.extend(envelope(messages, phone_number_id=number)["entry"])
    assert post_webhook(stack["url"], {"object": "whatsapp_business_account", "entry": entries}) == 200
    fake_graph.wait_sends(50)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    sends = fake_graph.sends()
    assert len(sends) == 50
    for record in sends:
        body = sent_json(record)
        number = body["context"]["message_id"].split(".")[1]
        assert record.path == f"/v25.0/{number}/messages"
        n = int(body["context"]["message_id"].rsplit(".", 1)[1])
        assert body["to"] == f"+44770090{n:04d}"
        assert body["text"]["body"] == f"You said: m{n}"


def test_phone_number_filter_drops_other_numbers(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """With WAPIPE_PHONE_NUMBER_IDS set, messages to other business numbers are not answered."""
    stack = pipeline(WAPIPE_PHONE_NUMBER_IDS="620000000000001")
    assert (
        post_webhook(stack["url"], text_envelope("wamid.P1", "other", phone_number_id="620000000000009"))
        == 200
    )
    assert post_webhook(stack["url"], text_envelope("wamid.P2", "mine")) == 200
    fake_graph.wait_sends(1)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    assert [sent_json(s)["text"]["body"] for s in fake_graph.sends()] == ["You said: mine"]
    assert "item_dropped_foreign_number" in stack["worker"].output()
    assert worker_metric(stack["env"], "wapipe_dropped_items_total", reason="foreign_number") == 1


def test_transient_graph_failures_are_retried_to_one_send(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """Graph answers 500, 503 and 429 before accepting: the reply is sent exactly once, nothing dead-lettered."""
    fake_graph.script("send", Reply(500), Reply(503), Reply(429, headers={"Retry-After": "0"}))
    stack = pipeline()
    assert post_webhook(stack["url"], text_envelope("wamid.R1", "retry me")) == 200
    wait_for(lambda: len(fake_graph.sends()) == 4, timeout=30, what="4 send attempts")
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    assert [r.json["text"]["body"] for r in fake_graph.sends()] == ["You said: retry me"] * 4
    assert rclient.get("wapipe:reply:620000000000001:wamid.R1:0").startswith(b"sent:wamid.out.")
    assert dead_letters(rclient) == []


def test_permanent_graph_errors_are_dead_lettered_without_retry(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """131047 (outside the 24 h window) is permanent: one attempt, one dead letter with code and fbtrace_id."""
    fake_graph.script("send", graph_error(131047, 400, "Re-engagement message"))
    stack = pipeline()
    assert post_webhook(stack["url"], text_envelope("wamid.R2", "too late")) == 200
    [letter] = wait_for(lambda: dead_letters(rclient), timeout=20, what="a dead letter")
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    assert len(fake_graph.sends()) == 1
    record = letter["record"]
    assert record["stage"] == "reply"
    assert record["attempts"] == 1
    assert record["reason"]["type"] == "GraphRejected"
    assert record["reason"]["code"] == 131047
    assert record["reason"]["fbtrace_id"] == "trace-131047"
    assert record["reason"]["details"] == "details of 131047"
    assert rclient.get("wapipe:reply:620000000000001:wamid.R2:0") is None  # a replay may send it


def test_a_send_that_times_out_is_dead_lettered_as_unknown_outcome(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """The fake received the send but answered too late: one dead letter "unknown outcome", never a second send."""
    fake_graph.script("send", Reply(200, {"messages": [{"id": "wamid.slow"}]}, delay=4))
    stack = pipeline(WAPIPE_GRAPH_TIMEOUT_SECONDS="1")
    assert post_webhook(stack["url"], text_envelope("wamid.R3", "slow")) == 200
    [letter] = wait_for(lambda: dead_letters(rclient), timeout=20, what="a dead letter")
    assert letter["record"]["reason"]["type"] == "OutcomeUnknown"
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    assert len(fake_graph.sends()) == 1
    assert record_of(rclient, "620000000000001", "wamid.R3").states == ("sending",)


def test_a_custom_handler_is_loaded_and_its_messages_sent(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """WAPIPE_HANDLER=module:function replaces the default; every outbound message it returns is sent."""
    (tmp_path / "my_bot.py").write_text(
        "async def handle(message):\n"
        "    if message.type != 'text':\n"
        "        return []\n"
        "    return [\n"
        "        {'type': 'reaction', 'reaction': {'message_id': message.id, 'emoji': '\\u2705'}},\n"
        "        {'type': 'text', 'text': {'body': message.text.upper()}},\n"
        "    ]\n",
        encoding="utf-8",
    )
    stack = pipeline(WAPIPE_HANDLER="my_bot:handle", PYTHONPATH=str(tmp_path))
    assert post_webhook(stack["url"], text_envelope("wamid.H1", "shout")) == 200
    sends = fake_graph.wait_sends(2)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    bodies = [sent_json(s) for s in sends]
    assert bodies[0]["type"] == "reaction"
    assert bodies[0]["reaction"] == {"message_id": "wamid.H1", "emoji": "✅"}
    assert bodies[1]["text"] == {"body": "SHOUT"}
    assert all(b["to"] == "+447700900123" for b in bodies)
    assert len(fake_graph.of_kind("read")) == 1


def test_foreign_shapes_go_to_the_dead_letters_whole(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """Signed JSON that is not a WhatsApp webhook is accepted (200) and dead-lettered by verify with a reason."""
    stack = pipeline()
    assert post_webhook(stack["url"], {"object": "page", "entry": []}) == 200
    assert (
        post_webhook(stack["url"], {"object": "whatsapp_business_account", "entry": [{"changes": [7]}]})
        == 200
    )
    letters = wait_for(
        lambda: len(dead_letters(rclient)) == 2 and dead_letters(rclient), timeout=20, what="2 DLs"
    )
    for letter in letters:
        assert letter["message"]["actor_name"] == "verify"
        assert letter["record"]["stage"] == "verify"
        assert letter["record"]["reason"]["type"] == "EnvelopeRejected"
        assert letter["record"]["attempts"] == 1
    reasons = sorted(letter["record"]["reason"]["message"] for letter in letters)
    assert any("object is 'page'" in reason for reason in reasons)
    assert any("entry[0].changes[0] has no value object" in reason for reason in reasons)
    assert fake_graph.requests == []


def test_messages_forged_into_redis_are_refused_by_verify(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """A verify message written to Redis by someone without the app secret never enters the pipeline."""
    stack = pipeline()
    forged = pipeline_message(
        VERIFY, Webhook(json.dumps(text_envelope("wamid.F1")), "sha256=" + "0" * 64, 0.0)
    )
    redis_id = "forged-1"
    stored = forged.copy(options={"redis_message_id": redis_id})
    rclient.hset("dramatiq:wapipe.msgs", redis_id, stored.encode())
    rclient.rpush("dramatiq:wapipe", redis_id)
    [letter] = wait_for(lambda: dead_letters(rclient), timeout=20, what="a dead letter")
    assert "signature of the stored bytes: mismatch" in letter["record"]["reason"]["message"]
    assert fake_graph.requests == []
    assert Message.decode(stored.encode()).message_id == letter["message"]["message_id"]
    assert stack["worker"].alive()


def _nice_of_every_thread(process: psutil.Process) -> set[int]:
    return {os.getpriority(os.PRIO_PROCESS, thread.id) for thread in process.threads()}


def _policy_of_every_thread(process: psutil.Process) -> set[int]:
    return {os.sched_getscheduler(thread.id) for thread in process.threads()}


def _autogroup_nice(process: psutil.Process) -> int:
    text = Path(f"/proc/{process.pid}/autogroup").read_text(encoding="ascii")
    return int(text.split("nice")[1])


def test_worker_processes_run_on_one_cpu_each(pipeline: Callable[..., dict[str, Any]]) -> None:
    """WAPIPE_WORKER_CPU_AFFINITY=spread (the default) runs the two pipeline processes on two CPUs,
    one each (and the media process on one too), and leaves the web process alone; with `none` the
    workers keep every CPU. WAPIPE_WORKER_NICE (10 by default) runs every thread of every worker
    process at that nice, and, the worker leading its own session, the session's CPU share too
    (its autogroup), while the web keeps nice 0; at 0 the workers run as started. Every worker
    thread runs under SCHED_BATCH (WAPIPE_WORKER_SCHEDULER=batch, the default), the web's under
    the normal policy; `normal` leaves the workers' alone."""
    cpus = os.sched_getaffinity(0)
    stack = pipeline(WAPIPE_WORKER_PROCESSES="2")

    def pinned() -> list[set[int]] | None:
        children = sorted(stack["worker"].children(), key=lambda child: child.create_time())
        found = [set(child.cpu_affinity()) for child in children]
        return found if len(found) == 3 and all(len(affinity) == 1 for affinity in found) else None

    if len(cpus) >= 2:
        first, second, _media = wait_for(pinned, timeout=30, what="three pinned worker processes")
        assert first != second
    assert set(psutil.Process(stack["web"].pid).cpu_affinity()) == cpus
    web = psutil.Process(stack["web"].pid)
    assert _nice_of_every_thread(web) == {0}
    assert _policy_of_every_thread(web) == {os.SCHED_OTHER}
    for child in stack["worker"].children():
        assert _nice_of_every_thread(child) == {10}
        assert _policy_of_every_thread(child) == {os.SCHED_BATCH}
    worker_main = psutil.Process(stack["worker"].pid)
    if os.getsid(worker_main.pid) == worker_main.pid and Path("/proc/self/autogroup").exists():
        assert _autogroup_nice(worker_main) == 10
        assert _autogroup_nice(web) == 0
    stack["worker"].stop()
    free = pipeline(
        WAPIPE_WORKER_PROCESSES="2",
        WAPIPE_WORKER_CPU_AFFINITY="none",
        WAPIPE_WORKER_NICE="0",
        WAPIPE_WORKER_SCHEDULER="normal",
    )
    wait_for(lambda: len(free["worker"].children()) >= 3, timeout=30, what="three worker processes")
    assert all(set(child.cpu_affinity()) == cpus for child in free["worker"].children())
    assert all(_nice_of_every_thread(child) == {0} for child in free["worker"].children())
    assert all(_policy_of_every_thread(child) == {os.SCHED_OTHER} for child in free["worker"].children())


def test_one_bad_item_is_dead_lettered_alone_and_the_rest_of_its_envelope_answered(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """In one signed POST: a message whose id is a lone surrogate, one whose type is a list, one
    with no id, a status with a numeric id, and two good messages. Each bad message is dead-lettered
    on its own with its reason (and `dlq list` can show it), the bad status is counted as dropped,
    the good ones are answered."""
    stack = pipeline()
    good = [
        {"from": "447700900123", "id": f"wamid.OK{n}", "type": "text", "text": {"body": f"ok {n}"}}
        for n in (1, 2)
    ]
    messages = [
        {"from": "447700900123", "id": "wamid.\ud800", "type": "text", "text": {"body": "surrogate"}},
        good[0],
        {"from": "447700900123", "id": "wamid.LIST", "type": ["text"], "text": {"body": "list type"}},
        {"from": "447700900123", "type": "text", "text": {"body": "no id"}},
        good[1],
    ]
    obj = envelope(messages)
    obj["entry"][0]["changes"][0]["value"]["statuses"] = [{"id": 42, "status": "read", "recipient_id": "1"}]
    assert post_webhook(stack["url"], obj) == 200
    fake_graph.wait_sends(2)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    assert sorted(sent_json(s)["text"]["body"] for s in fake_graph.sends()) == [
        "You said: ok 1",
        "You said: ok 2",
    ]
    letters = dead_letters(rclient)
    reasons = sorted(letter["record"]["reason"]["message"] for letter in letters)
    assert reasons == [
        "id is missing",
        "id is not valid Unicode (a lone surrogate)",
        "type is a JSON list, not a string",
    ]
    assert {letter["record"]["reason"]["type"] for letter in letters} == {"ItemRejected"}
    assert {letter["record"]["stage"] for letter in letters} == {"reply"}
    listing = subprocess.run(
        [sys.executable, "-m", "daemon", "dlq", "list"],
        env={**stack["env"], "WAPIPE_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert "3 dead letter(s)" in listing.stdout
    assert "ok 1" not in listing.stdout
    assert worker_metric(stack["env"], "wapipe_dropped_items_total", reason="invalid_status") == 1

"""Property-based tests (hypothesis): arbitrary requests at the edge, arbitrary signed envelopes
through the whole pipeline. Bounded in examples (``WAPIPE_FUZZ_EXAMPLES`` raises them and
randomizes, as ``make fuzz`` does) and derandomized in ``make test``, so that CI is repeatable."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.envelope import Item, item_problem
from daemon.signature import HEADER, sign
from tests.conftest import APP_SECRET
from tests.pipeline_helpers import dead_letters, drained, post_webhook, replies_to
from tests.support.fake_graph import FakeGraph
from tests.support.waiting import wait_for

EXAMPLES = int(os.environ.get("WAPIPE_FUZZ_EXAMPLES", "0"))


def bounded(examples: int) -> Any:
    return settings(
        max_examples=EXAMPLES or examples,
        deadline=None,
        derandomize=not EXAMPLES,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


ALLOWED = {200, 400, 401, 413, 415, 503}
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@pytest.fixture
def web(pipeline: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return pipeline(worker=False, WAPIPE_MAX_BODY_BYTES="65536", WAPIPE_LOG_LEVEL="WARNING")


@given(
    body=st.binary(max_size=2048) | json_values.map(lambda v: json.dumps(v).encode()),
    signature=st.sampled_from(["valid", "missing", "garbage", "other secret", "sha1"]),
    encoding=st.sampled_from([None, "identity", "gzip", "br", "x-anything"]),
    extra=st.dictionaries(st.sampled_from(["Content-Type", "X-Foo", "Accept"]), printable, max_size=2),
)
@bounded(150)
def test_any_request_gets_an_allowed_answer_and_only_signed_json_is_enqueued(
    web: dict[str, Any],
    rclient: redis.Redis,
    body: bytes,
    signature: str,
    encoding: str | None,
    extra: dict[str, str],
) -> None:
    """Arbitrary bytes or JSON, signed or not, any encoding header: 200, 400, 401, 413, 415 or 503,
    never 500; a 200 (and an enqueued message) only for a correctly signed, standard JSON body
    sent without compression."""
    headers = dict(extra)
    if signature == "valid":
        headers[HEADER] = sign(body, APP_SECRET)
    elif signature == "garbage":
        headers[HEADER] = "sha256=" + "zz" * 32
    elif signature == "other secret":
        headers[HEADER] = sign(body, "not-the-app-secret")
    elif signature == "sha1":
        headers["X-Hub-Signature"] = "sha1=" + "0" * 40
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    before = rclient.llen("dramatiq:wapipe")
    connection = http.client.HTTPConnection("127.0.0.1", int(web["env"]["PORT"]), timeout=10)
    try:
        connection.request("POST", "/webhook", body=body, headers=headers)
        status = connection.getresponse().status
    finally:
        connection.close()
    assert status in ALLOWED
    assert rclient.llen("dramatiq:wapipe") - before == (1 if status == 200 else 0)
    if status == 200:
        assert signature == "valid"
        assert encoding in (None, "identity")


KINDS = ["text", "image", "audio", "location", "contacts", "interactive", "button", "reaction",
         "order", "system", "unsupported", "sticker", "document", "video", "edit", "revoke"]  # fmt: skip
ids = st.one_of(
    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=30),
    st.just("wamid.\ud800"),
    st.integers(),
    st.none(),
)
messages = st.fixed_dictionaries(
    {
        "id": ids,
        "type": st.one_of(st.sampled_from(KINDS), st.integers(), st.lists(st.text(max_size=3), max_size=2)),
    },
    optional={
        "from": st.one_of(st.from_regex(r"\A[1-9][0-9]{6,14}\Z"), st.integers()),
        "timestamp": st.one_of(st.text(max_size=10), st.integers()),
        "group_id": st.text(max_size=5),
        "text": json_values,
        "image": json_values,
        "location": json_values,
        "interactive": json_values,
        "button": json_values,
        "contacts": json_values,
        "order": json_values,
        "reaction": json_values,
        "errors": json_values,
        "context": json_values,
    },
)
statuses = st.fixed_dictionaries(
    {"id": ids, "status": st.one_of(st.sampled_from(["sent", "read", "failed"]), json_values)}
)
changes = st.fixed_dictionaries(
    {
        "field": st.sampled_from(["messages", "messages", "messages", "account_update", "made_up_field"]),
        "value": st.fixed_dictionaries(
            {
                "messaging_product": st.just("whatsapp"),
                "metadata": st.fixed_dictionaries(
                    {"phone_number_id": st.sampled_from(["620000000000001", "620000000000002"])}
                ),
                "messages": st.lists(messages, max_size=3),
            },
            optional={
                "statuses": st.lists(statuses, max_size=2),
                "contacts": st.lists(
                    st.dictionaries(st.sampled_from(["wa_id", "user_id", "profile"]), json_values), max_size=2
                ),
                "errors": st.lists(
                    st.fixed_dictionaries({"code": st.one_of(st.integers(), st.text(max_size=4))}), max_size=1
                ),
            },
        ),
    }
)
envelopes = st.fixed_dictionaries(
    {
        "object": st.just("whatsapp_business_account"),
        "entry": st.lists(
            st.fixed_dictionaries({"id": st.just("1"), "changes": st.lists(changes, min_size=1, max_size=2)}),
            min_size=1,
            max_size=2,
        ),
    }
)


def message_items(envelope: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Every message of an envelope with its business number (messages field only)."""
    found = []
    for entry in envelope["entry"]:
        for change in entry["changes"]:
            if change["field"] == "messages":
                pnid = change["value"]["metadata"]["phone_number_id"]
                found.extend((message, pnid) for message in change["value"]["messages"])
    return found


@pytest.fixture
def stack(pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph) -> dict[str, Any]:
    """One web and worker for all the examples of a test (each example starts from empty Redis)."""
    return pipeline(WAPIPE_GRAPH_ATTEMPTS="1", WAPIPE_RETRY_MAX="1", WHATSAPP_MEDIA_HOSTS="127.0.0.1")


@pytest.mark.timeout(300)
@given(batch=st.lists(envelopes, min_size=1, max_size=6))
@bounded(15)
def test_every_message_of_any_signed_envelope_is_handled_or_dead_lettered(
    stack: dict[str, Any], rclient: redis.Redis, batch: list[dict[str, Any]]
) -> None:
    """Arbitrary signed envelopes (odd ids, types, bodies, contacts, statuses, other fields) through
    web and worker: every message ends handled (its handled mark) or dead-lettered on its own as
    unreadable; the worker never crashes and no run fails with an unexpected error."""
    for key in rclient.scan_iter("wapipe:*"):  # the previous example's marks and dead-letter reasons
        rclient.delete(key)
    for queue in ("wapipe", "wapipe_media"):
        rclient.delete(f"dramatiq:{queue}.XQ", f"dramatiq:{queue}.XQ.msgs")
    for envelope in batch:
        assert post_webhook(stack["url"], envelope) == 200
    wait_for(lambda: drained(rclient), timeout=60, what="every message handled")
    letters = dead_letters(rclient, "wapipe") + dead_letters(rclient, "wapipe_media")
    rejected = sum(1 for letter in letters if letter["record"]["reason"]["type"] == "ItemRejected")
    unreadable = 0
    seen: set[tuple[str, str]] = set()
    for envelope in batch:
        for message, pnid in message_items(envelope):
            if item_problem(Item("message", "messages", pnid, None, message)) is not None:
                unreadable += 1
            elif (pnid, message["id"]) not in seen:
                seen.add((pnid, message["id"]))
                assert replies_to(rclient, pnid, message["id"]) is not None, message
    assert rejected == unreadable
    assert [
        letter["record"]["reason"]
        for letter in letters
        if letter["record"]["reason"]["type"] != "ItemRejected"
    ] == []
    worker = stack["worker"]
    assert worker.alive()
    assert " ERROR " not in worker.output(), worker.output()[-3000:]

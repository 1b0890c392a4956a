"""The Graph API client's brief retries: stamina's policy, with the first attempt made before
stamina's retry context is built (see ``GraphClient._with_retries``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import stamina
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

from daemon.config import Settings
from daemon.graph import GraphClient, GraphError
from tests.conftest import ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN
from tests.support.fake_graph import FakeGraph, Reply, graph_error


@pytest.fixture
def retries_seen() -> Iterator[list[RetryDetails]]:
    """What stamina's instrumentation reports, instead of its default logging/metrics hooks."""
    seen: list[RetryDetails] = []
    set_on_retry_hooks([seen.append])
    try:
        yield seen
    finally:
        set_on_retry_hooks(None)


@pytest.fixture
async def graph(fake_graph: FakeGraph) -> AsyncIterator[GraphClient]:
    settings = Settings.from_env(
        {
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
            "WHATSAPP_GRAPH_URL": fake_graph.url,
            "WAPIPE_GRAPH_ATTEMPTS": "3",
        }
    )
    client = GraphClient(aiohttp.ClientSession(), settings)
    try:
        yield client
    finally:
        await client.close()


BODY = {"to": "+15550001", "type": "text", "text": {"body": "hi"}}


async def test_a_first_failure_is_stamina_s_first_failed_attempt(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """A 503 on the first attempt is reported by stamina as retry 1 with its back-off, and the second
    attempt's success is returned: the same as stamina wrapped around both attempts."""
    fake_graph.script("send", Reply(503))
    result = await graph.send_message("1", BODY)
    assert result.message_id is not None
    assert len(fake_graph.sends()) == 2
    [retry] = retries_seen
    assert retry.retry_num == 1
    assert isinstance(retry.caused_by, GraphError) and retry.caused_by.http_status == 503
    assert retry.wait_for > 0


async def test_retry_after_zero_still_means_retry(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """A 429 with ``Retry-After: 0`` (the hook returns 0.0, falsy) is retried, not raised."""
    fake_graph.script("send", Reply(429, headers={"Retry-After": "0"}))
    await graph.send_message("1", BODY)
    assert len(fake_graph.sends()) == 2
    assert [r.retry_num for r in retries_seen] == [1]


async def test_a_permanent_error_is_raised_after_one_attempt(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """A 400 Graph error is not retried: one request, the error raised, stamina never involved."""
    fake_graph.script("send", graph_error(131047, 400))
    with pytest.raises(GraphError) as raised:
        await graph.send_message("1", BODY)
    assert raised.value.code == 131047
    assert len(fake_graph.sends()) == 1
    assert retries_seen == []


async def test_attempts_are_bounded_and_the_last_failure_is_raised(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """Three 5xx in a row with WAPIPE_GRAPH_ATTEMPTS=3: three requests, two retries, the third error raised."""
    fake_graph.script("send", Reply(500), Reply(502), Reply(504))
    with pytest.raises(GraphError) as raised:
        await graph.send_message("1", BODY)
    assert raised.value.http_status == 504
    assert len(fake_graph.sends()) == 3
    assert [r.retry_num for r in retries_seen] == [1, 2]


async def test_stamina_deactivated_means_one_attempt(graph: GraphClient, fake_graph: FakeGraph) -> None:
    """``stamina.set_active(False)`` turns retries off for the first failure too."""
    fake_graph.script("send", Reply(503))
    stamina.set_active(False)
    try:
        with pytest.raises(GraphError):
            await graph.send_message("1", BODY)
    finally:
        stamina.set_active(True)
    assert len(fake_graph.sends()) == 1

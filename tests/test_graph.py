"""The Graph API client against the fake Graph API: what is retried in-process (stamina, through
``daemon.retrying``), what is an unknown outcome, and connection reuse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stamina.instrumentation import RetryDetails

from daemon import graph as graph_module
from daemon.config import Settings
from daemon.graph import (
    AnswerCut,
    DownloadTooSlow,
    GraphClient,
    GraphError,
    GraphUnreachable,
    MediaExpired,
    MediaRefused,
    RequestInvalid,
    SendOutcomeUnknown,
)
from daemon.store.media import TempFile
from tests.conftest import ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN
from tests.support.fake_graph import FakeGraph, Reply, graph_error


def settings_for(fake_graph: FakeGraph, **extra: str) -> Settings:
    return Settings.from_env(
        {
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
            "WHATSAPP_GRAPH_URL": fake_graph.url,
            "WAPIPE_GRAPH_ATTEMPTS": "3",
            "WHATSAPP_MEDIA_HOSTS": "127.0.0.1",
            **extra,
        }
    )


@pytest.fixture
def graph(fake_graph: FakeGraph) -> Iterator[GraphClient]:
    client = GraphClient(settings_for(fake_graph))
    try:
        yield client
    finally:
        client.close()


BODY = {"to": "+15550001", "type": "text", "text": {"body": "hi"}}


def test_a_first_failure_is_stamina_s_first_failed_attempt(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """A 503 on the first attempt is reported by stamina as retry 1 with its back-off, and the second
    attempt's success is returned: the same as stamina wrapped around both attempts."""
    fake_graph.script("send", Reply(503))
    result = graph.send_message("1", BODY)
    assert result.message_id is not None
    assert len(fake_graph.sends()) == 2
    [retry] = retries_seen
    assert retry.retry_num == 1
    assert isinstance(retry.caused_by, GraphError)
    assert retry.caused_by.http_status == 503
    assert retry.wait_for > 0


def test_retry_after_zero_still_means_retry(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """A 429 with ``Retry-After: 0`` (the hook returns 0.0, falsy) is retried, not raised."""
    fake_graph.script("send", Reply(429, headers={"Retry-After": "0"}))
    graph.send_message("1", BODY)
    assert len(fake_graph.sends()) == 2
    assert [r.retry_num for r in retries_seen] == [1]


def test_a_permanent_error_is_raised_after_one_attempt(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """A 400 Graph error is not retried: one request, the error raised, stamina never involved."""
    fake_graph.script("send", graph_error(131047, 400))
    with pytest.raises(GraphError) as raised:
        graph.send_message("1", BODY)
    assert raised.value.code == 131047
    assert len(fake_graph.sends()) == 1
    assert retries_seen == []


def test_attempts_are_bounded_and_the_last_failure_is_raised(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """Three 5xx in a row with WAPIPE_GRAPH_ATTEMPTS=3: three requests, two retries, the third error raised."""
    fake_graph.script("send", Reply(500), Reply(502), Reply(504))
    with pytest.raises(GraphError) as raised:
        graph.send_message("1", BODY)
    assert raised.value.http_status == 504
    assert len(fake_graph.sends()) == 3
    assert [r.retry_num for r in retries_seen] == [1, 2]


def test_an_unreachable_graph_api_is_retried_then_reported_unreachable(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """No connection can be made: nothing was sent, so every attempt is made and GraphUnreachable raised."""
    fake_graph.refuse_connections()
    with pytest.raises(GraphUnreachable):
        graph.send_message("1", BODY)
    assert [r.retry_num for r in retries_seen] == [1, 2]
    assert fake_graph.sends() == []


def test_a_send_answered_too_late_is_an_unknown_outcome_and_not_retried(
    fake_graph: FakeGraph, retries_seen: list[RetryDetails]
) -> None:
    """The request went out and no answer came within the timeout: SendOutcomeUnknown, one request."""
    fake_graph.script("send", Reply(delay=1.0))
    client = GraphClient(settings_for(fake_graph, WAPIPE_GRAPH_TIMEOUT_SECONDS="0.3"))
    try:
        with pytest.raises(SendOutcomeUnknown):
            client.send_message("1", BODY)
    finally:
        client.close()
    assert len(fake_graph.sends()) == 1
    assert retries_seen == []


def test_a_connection_cut_after_the_request_is_an_unknown_outcome(
    graph: GraphClient, fake_graph: FakeGraph
) -> None:
    """The server drops the connection instead of answering: the send may have happened."""
    fake_graph.script("send", Reply(drop=True))
    with pytest.raises(SendOutcomeUnknown):
        graph.send_message("1", BODY)
    assert len(fake_graph.sends()) == 1


@pytest.mark.parametrize(
    "answer",
    [
        Reply(200, raw=b"<html>ok</html>", headers={"Content-Type": "text/html"}),
        Reply(204, raw=b""),
        Reply(200, raw=b"[1, 2]"),
        Reply(302, raw=b"", headers={"Location": "/elsewhere"}),
    ],
    ids=["200-html", "204", "200-json-list", "302"],
)
def test_an_answer_that_is_not_a_readable_success_may_mean_sent(
    graph: GraphClient, fake_graph: FakeGraph, retries_seen: list[RetryDetails], answer: Reply
) -> None:
    """A 2xx whose body is not a JSON object, or a redirect, to a send: not an error Meta gave, not
    a success wapipe can read. The message may have been delivered: SendOutcomeUnknown, never
    retried, never taken for a refusal."""
    fake_graph.script("send", answer)
    with pytest.raises(SendOutcomeUnknown):
        graph.send_message("1", BODY)
    assert len(fake_graph.sends()) == 1
    assert retries_seen == []


def test_ids_from_a_webhook_cannot_reach_another_path(graph: GraphClient, fake_graph: FakeGraph) -> None:
    """A media id like ``../../x?y`` is sent as one escaped path segment: the request is still the
    media lookup of that id, with the bearer token going nowhere else."""
    fake_graph.add_media("../../x?y")
    info = graph.media_info("../../x?y", "1")
    assert info["id"] == "../../x?y"
    [lookup] = fake_graph.of_kind("media_info")
    assert lookup.path == "/v25.0/../../x?y"  # decoded by the server, matched as one id
    assert lookup.query == {"phone_number_id": "1"}


def test_an_invalid_media_url_is_refused_before_anything_is_sent(
    graph: GraphClient, fake_graph: FakeGraph, sink: TempFile, retries_seen: list[RetryDetails]
) -> None:
    """A URL http.client cannot send (a space, a control character): RequestInvalid, not an unknown
    outcome; nothing reaches the server and nothing is retried."""
    for url in (f"{fake_graph.url}/download/a b", f"{fake_graph.url}/download/a\r\nX: y"):
        with pytest.raises(RequestInvalid):
            graph.download(url, sink, max_bytes=1000)
    assert fake_graph.of_kind("download") == []
    assert retries_seen == []


def test_a_download_cut_before_its_announced_length_is_retried_and_never_returned(
    graph: GraphClient, fake_graph: FakeGraph, sink: TempFile
) -> None:
    """Content-Length 1,000, ten bytes, connection closed: AnswerCut after every attempt, not a
    10-byte "file"."""
    fake_graph.add_media("cut", b"z" * 1000, cut_after=10)
    with pytest.raises(AnswerCut, match="990 short"):
        graph.download(f"{fake_graph.url}/download/cut", sink, max_bytes=10_000)
    assert len(fake_graph.of_kind("download")) == 3


def test_a_dripping_download_is_abandoned_under_the_rate_floor(
    fake_graph: FakeGraph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One byte every 50 ms is under WAPIPE_MEDIA_MIN_BYTES_PER_SECOND once the grace period is over
    (shortened here): DownloadTooSlow, though every read arrived well within the read timeout."""
    monkeypatch.setattr(graph_module, "RATE_GRACE_SECONDS", 0.3)
    fake_graph.add_media("drip", b"d" * 1000, drip_seconds=0.05)
    client = GraphClient(settings_for(fake_graph, WAPIPE_GRAPH_ATTEMPTS="1"))
    temp = TempFile(tmp_path)
    try:
        with pytest.raises(DownloadTooSlow):
            client.download(f"{fake_graph.url}/download/drip", temp, max_bytes=10_000)
        assert temp.size < 100
    finally:
        temp.discard()
        client.close()


def test_requests_reuse_one_keep_alive_connection(graph: GraphClient, fake_graph: FakeGraph) -> None:
    """Sequential calls from one thread share one pooled connection (no per-request connection setup)."""
    for n in range(20):
        graph.mark_read("1", f"wamid.{n}")
    peers = {r.peer for r in fake_graph.of_kind("read")}
    assert len(fake_graph.of_kind("read")) == 20
    assert len(peers) == 1


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[TempFile]:
    temp = TempFile(tmp_path)
    try:
        yield temp
    finally:
        temp.discard()


def test_a_download_follows_a_redirect_to_an_allowed_host(
    graph: GraphClient, fake_graph: FakeGraph, sink: TempFile
) -> None:
    """302 to another path on a listed host: followed, the file streamed whole with its type."""
    fake_graph.add_media("m2", b"x" * 200_000, "image/png", chunked=True)
    fake_graph.script("download", Reply(302, headers={"Location": "/download/m2"}))
    content_type = graph.download(f"{fake_graph.url}/download/m1", sink, max_bytes=1_000_000)
    assert content_type == "image/png"
    assert sink.size == 200_000
    assert [r.path for r in fake_graph.of_kind("download")] == ["/download/m1", "/download/m2"]
    assert all(r.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}" for r in fake_graph.of_kind("download"))


def test_a_redirect_to_an_unlisted_host_is_refused_before_contacting_it(
    graph: GraphClient, fake_graph: FakeGraph, sink: TempFile
) -> None:
    """302 to a host not in WHATSAPP_MEDIA_HOSTS: MediaRefused, the token never sent there."""
    fake_graph.add_media("m3")
    other = f"http://localhost:{fake_graph.port}/download/m3"
    fake_graph.script("download", Reply(302, headers={"Location": other}))
    with pytest.raises(MediaRefused, match="not in WHATSAPP_MEDIA_HOSTS"):
        graph.download(f"{fake_graph.url}/download/m1", sink, max_bytes=1_000_000)
    assert len(fake_graph.of_kind("download")) == 1


def test_a_download_over_the_cap_is_stopped_while_streaming(
    graph: GraphClient, fake_graph: FakeGraph, sink: TempFile
) -> None:
    """No Content-Length (chunked) and more bytes than allowed: refused once past the cap."""
    fake_graph.add_media("big", b"y" * 300_000, chunked=True)
    with pytest.raises(MediaRefused, match="stopped while streaming"):
        graph.download(f"{fake_graph.url}/download/big", sink, max_bytes=100_000)
    assert sink.size <= 100_000


def test_an_expired_media_url_is_media_expired(
    graph: GraphClient, fake_graph: FakeGraph, sink: TempFile
) -> None:
    """404 on the URL means a fresh URL is needed: MediaExpired, not retried in-process."""
    with pytest.raises(MediaExpired):
        graph.download(f"{fake_graph.url}/download/gone", sink, max_bytes=1_000_000)
    assert len(fake_graph.of_kind("download")) == 1

"""Fixtures mirroring the runtime: a real Redis, a fake Graph API, real wapipe processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from stamina.instrumentation import RetryDetails, set_on_retry_hooks

from daemon.config import Settings
from daemon.web import make_app
from tests.support.fake_graph import FakeGraph
from tests.support.procs import Proc, base_env
from tests.support.redis_server import RedisServer
from tests.support.waiting import free_port, wait_for

APP_SECRET = "test-app-secret-0123456789"
VERIFY_TOKEN = "test-verify-token"
ACCESS_TOKEN = "test-access-token"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (the bundled binary, AOF on) for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session Redis, flushed before and after the test."""
    if redis_server.process is None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield redis_server.url
    if redis_server.process is None:  # a test stopped it: bring it back for the next one
        redis_server.start()
    redis_server.client().flushall()


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def fake_graph() -> Iterator[FakeGraph]:
    graph = FakeGraph().start()
    try:
        yield graph
    finally:
        graph.stop()


@pytest.fixture
def retries_seen() -> Iterator[list[RetryDetails]]:
    """What stamina's instrumentation reports, instead of its default logging/metrics hooks."""
    seen: list[RetryDetails] = []
    set_on_retry_hooks([seen.append])
    try:
        yield seen
    finally:
        set_on_retry_hooks(None)


def pipeline_env(redis_url: str, graph_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a wapipe process in tests: short retries, fast polling, real Redis."""
    defaults = {
        "REDIS_URL": redis_url,
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
        "WHATSAPP_GRAPH_URL": graph_url,
        "WAPIPE_DATA_DIR": str(data_dir),
        "WAPIPE_HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "WAPIPE_METRICS_PORT": str(free_port()),
        "WAPIPE_WORKER_PROCESSES": "1",
        "WAPIPE_WORKER_THREADS": "4",
        "WAPIPE_MEDIA_WORKER_THREADS": "2",
        "WAPIPE_RETRY_MIN_BACKOFF_MS": "100",
        "WAPIPE_RETRY_MAX_BACKOFF_MS": "1000",
        "WAPIPE_GRAPH_TIMEOUT_SECONDS": "3",
        "WAPIPE_SHUTDOWN_TIMEOUT_SECONDS": "5",
        "WAPIPE_LOG_LEVEL": "DEBUG",
        # Most tests message one recipient many times; the pair limit has tests of its own.
        "WAPIPE_PAIR_INTERVAL_MS": "0",
    }
    return base_env(**(defaults | extra))


def settings_for(redis_url: str, graph_url: str = "http://127.0.0.1:9", **extra: str) -> Settings:
    return Settings.from_env(pipeline_env(redis_url, graph_url, Path("/nonexistent-wapipe-test"), **extra))


@pytest.fixture
def start_proc(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start ``wapipe <args>`` subprocesses; every one is stopped at the end, even on failure."""
    started: list[Proc] = []

    def start(name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, args, env, tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def pipeline(
    redis_url: str, fake_graph: FakeGraph, tmp_path: Path, start_proc: Callable[..., Proc]
) -> Callable[..., dict[str, object]]:
    """Start a real ``wapipe web`` and ``wapipe worker``; returns their URL and processes."""

    def start(worker: bool = True, **extra: str) -> dict[str, object]:
        env = pipeline_env(redis_url, fake_graph.url, tmp_path / "data", **extra)
        web = start_proc("web", ["web"], env)
        url = f"http://127.0.0.1:{env['PORT']}"
        wait_for(lambda: _ready(url, web), timeout=20, what="wapipe web to be ready")
        result: dict[str, object] = {"url": url, "web": web, "env": env}
        if worker:
            proc = start_proc("worker", ["worker"], env)
            wait_for(lambda: "worker_ready" in proc.output() or _dead(proc), timeout=30, what="worker")
            assert proc.alive(), proc.output()
            result["worker"] = proc
        return result

    return start


def _dead(proc: Proc) -> bool:
    return not proc.alive()


def _ready(url: str, proc: Proc) -> bool:
    import urllib.error
    import urllib.request

    if not proc.alive():
        raise AssertionError(f"wapipe web exited:\n{proc.output()}")
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
async def make_client(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Start the web app in-process (``make(url=None, **settings)``); every client started is
    closed at the end."""
    clients: list[TestClient[Any, Any]] = []

    async def make(url: str | None = None, **extra: str) -> TestClient[Any, Any]:
        settings = settings_for(redis_url, **extra)
        client: TestClient[Any, Any] = TestClient(TestServer(make_app(settings, url or redis_url)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for started in clients:
        await started.close()

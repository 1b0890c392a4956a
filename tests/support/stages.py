"""Run a stage alone: its context on a real Redis and a fake Graph API, without a worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actors.context import Context, Resources
from actors.metrics import WorkerMetrics
from daemon.bot import takes_conversation
from daemon.config import Settings
from daemon.graph import GraphClient
from daemon.handler import Handler, load_handler
from tests.conftest import pipeline_env


@contextmanager
def resources(
    redis_url: str, graph_url: str, data_dir: Path, handler: Handler | None = None, **env: str
) -> Iterator[Resources]:
    """A worker's resources (closed on exit) with the test settings and ``env`` on top."""
    settings = Settings.from_env(pipeline_env(redis_url, graph_url, data_dir, **env))
    opened = Resources(
        settings=settings,
        redis_url=redis_url,
        graph=GraphClient(settings),
        handler=handler or load_handler(None),
        conversational=takes_conversation(handler or load_handler(None)),
        metrics=WorkerMetrics(),
        run_coroutine=asyncio.run,
    )
    try:
        yield opened
    finally:
        opened.close()


def context(resources: Resources, message_id: str | None = None, **options: Any) -> Context:
    """The context of one run (a fresh message id unless given: a retry keeps its id)."""
    return resources.context(message_id or str(uuid.uuid4()), dict(options))


def counted(family: Any, *labels: str) -> float:
    """The value of a counter ``family``'s series with ``labels``, read as a scrape would."""
    for metric in family.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and tuple(sample.labels.values()) == labels:
                return float(sample.value)
    raise LookupError(f"no series {labels} in {family}")

"""The worker's metrics endpoint: one exposition per ``wapipe worker``, summed over its processes.

Runs in the ``wapipe worker`` main process (which does no work itself) and reads the multiprocess
files its worker processes write into the directory that belongs to this invocation only.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler
from prometheus_client.multiprocess import MultiProcessCollector


def serve_worker_metrics(directory: Path, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` on (host, port) in a daemon thread; ``shutdown()`` stops it."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    handler = MetricsHandler.factory(registry)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="wapipe-metrics", daemon=True)
    thread.start()
    return server

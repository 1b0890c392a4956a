"""The worker's metrics endpoint: one exposition per ``wapipe worker``, summed over its processes.

Each ``wapipe worker`` owns a directory ``$WAPIPE_DATA_DIR/metrics/worker-<pid>-<random>`` into
which its worker processes write prometheus-client's multiprocess files, and holds an exclusive
``flock`` on its ``.lock`` file for as long as any of its processes lives. Another worker never
shares or wipes it; a directory whose lock nobody holds was left by a worker that was killed, and
the next worker to start on that data directory removes it.

The main process (which does no work itself) serves the sum on ``WAPIPE_METRICS_PORT``, or the
next free port above when another program (another worker) holds it, so several workers on one
host (``honcho start -c worker=2``) run side by side on 9191, 9192, …; each lists itself for
Prometheus's file-based service discovery in ``$WAPIPE_DATA_DIR/metrics/targets/<its directory>.json``.

Each running ``wapipe worker`` of a data directory also holds a *slot*: the lowest number ``k``
whose ``slot-<k>.lock`` it could lock. Its worker processes take the CPUs after those of the
workers with lower slots (``WAPIPE_WORKER_CPU_AFFINITY=spread``).

prometheus-client decides at its first import whether it runs in multiprocess mode, so this module
imports it only in :func:`bind_metrics`, after ``wapipe worker`` set ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

#: Ports tried from ``WAPIPE_METRICS_PORT`` upward before giving up.
PORT_TRIES = 32
LOCK_NAME = ".lock"


def _locked_by_someone(lock_path: Path) -> bool:
    """True when a live process holds the flock on ``lock_path``."""
    try:
        handle = lock_path.open("a")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(base: Path) -> list[str]:
    """Remove the directories (and target files) of workers that no longer run; return their names.

    A directory without a lock file (written by an older wapipe) counts as stale once the pid in its
    name is gone.
    """
    removed: list[str] = []
    for directory in sorted(base.glob("worker-*")):
        if not directory.is_dir():
            continue
        lock = directory / LOCK_NAME
        if lock.exists():
            stale = not _locked_by_someone(lock)
        else:
            parts = directory.name.split("-")
            stale = len(parts) > 1 and parts[1].isdigit() and not _pid_alive(int(parts[1]))
        if stale:
            shutil.rmtree(directory, ignore_errors=True)
            (base / "targets" / f"{directory.name}.json").unlink(missing_ok=True)
            removed.append(directory.name)
    return removed


#: The most ``wapipe worker``s one data directory may run at once.
MAX_SLOTS = 64


def _claim_slot(base: Path) -> tuple[int, IO[str]]:
    """The lowest free slot number and its locked file (held until this worker's processes end)."""
    for slot in range(MAX_SLOTS):
        handle = (base / f"slot-{slot}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return slot, handle
    raise OSError(errno.EBUSY, f"{MAX_SLOTS} workers already run on this data directory")


@dataclass
class MetricsDir:
    """This ``wapipe worker``'s own multiprocess directory and host slot, locked while its
    processes live (the lock files are inherited by its worker processes)."""

    path: Path
    slot: int
    _locks: tuple[IO[str], ...]

    @classmethod
    def claim(cls, data_dir: Path) -> MetricsDir:
        """Remove stale directories under ``data_dir/metrics``, then take a slot and our own directory."""
        base = data_dir / "metrics"
        base.mkdir(parents=True, exist_ok=True)
        slot, slot_lock = _claim_slot(base)
        removed = remove_stale(base)
        if removed:
            log.info("stale_metrics_removed", extra={"directories": len(removed)})
        path = Path(tempfile.mkdtemp(prefix=f"worker-{os.getpid()}-", dir=base))
        lock = (path / LOCK_NAME).open("w")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return cls(path, slot, (slot_lock, lock))

    @property
    def target_file(self) -> Path:
        return self.path.parent / "targets" / f"{self.path.name}.json"

    def advertise(self, host: str, port: int) -> None:
        """List this worker for Prometheus's ``file_sd_configs`` (written atomically)."""
        address = _scrape_host(host)
        target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.target_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.target_file.with_suffix(".tmp")
        temporary.write_text(json.dumps([{"targets": [target], "labels": {}}]) + "\n", encoding="utf-8")
        os.replace(temporary, self.target_file)

    def remove(self) -> None:
        self.target_file.unlink(missing_ok=True)
        shutil.rmtree(self.path, ignore_errors=True)
        for lock in self._locks:
            with contextlib.suppress(OSError):
                lock.close()


def _scrape_host(host: str) -> str:
    """The address Prometheus should scrape for a server bound to ``host``."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached by the host's name
        return socket.gethostname()
    return host


def bind_metrics(directory: Path, host: str, first_port: int) -> ThreadingHTTPServer:
    """A (not yet serving) exposition of ``directory`` on the first free port from ``first_port``.

    Raises:
        OSError: no port could be bound (the last error; EADDRINUSE after :data:`PORT_TRIES` ports).
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import MetricsHandler
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    handler = MetricsHandler.factory(registry)
    ports = [0] if first_port == 0 else range(first_port, min(first_port + PORT_TRIES, 65536))
    error: OSError = OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    for port in ports:
        try:
            server = ThreadingHTTPServer((host, port), handler)
        except OSError as failed:
            if failed.errno != errno.EADDRINUSE:
                raise
            error = failed
            continue
        server.daemon_threads = True
        return server
    raise error


def serve(server: ThreadingHTTPServer) -> threading.Thread:
    """Serve ``GET /metrics`` in a daemon thread; ``server.shutdown()`` stops it."""
    thread = threading.Thread(target=server.serve_forever, name="wapipe-metrics", daemon=True)
    thread.start()
    return thread

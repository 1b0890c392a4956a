"""``wapipe worker``'s processes: a main process, ``WAPIPE_WORKER_PROCESSES`` pipeline processes and
one media process.

Each worker process runs a :class:`dramatiq.Worker` on the broker of
:func:`actors.broker.build_broker`, built from the settings the main process loaded: the children
are forked after the configuration was read, so every one of them has the same settings, ``.env``
included. The pipeline processes (``WAPIPE_WORKER_THREADS`` threads each) consume the queue
``wapipe`` (verify, parse, reply); the media process (``WAPIPE_MEDIA_WORKER_THREADS`` threads)
consumes ``wapipe_media`` alone, so downloads that crawl or hang can take all of its threads and
never one of a reply's. The main process does no work; it serves the summed metrics, says
``worker_ready`` once every process has booted, and supervises.
With ``WAPIPE_WORKER_CPU_AFFINITY=spread`` each worker process is pinned to one CPU, continuing
after the CPUs of the workers that started before on the same data directory (their slots).

Stopping is the same whoever sends the signal, which matters under Procfile runners and container
runtimes that signal the whole process group (honcho, foreman, systemd's default ``KillMode``,
``docker stop`` with an init):

- The first SIGTERM (or SIGINT, or SIGHUP) a worker process receives starts its graceful stop:
  no new message is taken, messages in flight finish for up to ``WAPIPE_SHUTDOWN_TIMEOUT_SECONDS``,
  prefetched ones go back to their queue. Further SIGTERMs are ignored (the runner's and the main
  process's copies of the same request arrive together), so a graceful stop is never turned into
  an abrupt exit by a duplicate. The runner's SIGKILL is the hard stop: what was in flight then is
  redelivered after the heartbeat timeout and answered once, as after any crash.
- The main process forwards its first signal to the worker processes and waits for them. A second
  SIGINT (Ctrl-C twice) kills them at once.
- A worker process that dies unexpectedly makes the main process stop the others and exit 1; a
  supervisor (systemd, the PaaS, ``wapipe run``) restarts the whole worker.
- A worker process whose main process dies (``kill -9`` of the main alone) gets SIGTERM (Linux).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq

from daemon import logs
from daemon.config import Settings
from daemon.embedded import die_with_parent
from daemon.pipeline import MEDIA_QUEUE, PIPELINE_QUEUE
from daemon.startup import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_REDIS

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Extra time, beyond the shutdown timeout, before the main process kills a worker that hangs.
KILL_GRACE_SECONDS = 10.0


def _start_method() -> str:
    """fork where it is safe (Linux): children get the loaded settings without reading them again."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


@dataclass(frozen=True, slots=True)
class Role:
    """What one worker process does: its index, CPU slot, queue and thread count."""

    index: int
    cpu_index: int
    queue: str
    threads: int


def run_worker_process(settings: Settings, redis_url: str, role: Role, booted: Any) -> None:
    """A worker process's life: boot, work until the first stop signal, stop gracefully, exit.

    ``booted`` (a multiprocessing Event) is set once its worker threads run.
    """
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stopping.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    die_with_parent()
    logs.configure(settings.log_level, settings.log_format)
    code = _work(settings, redis_url, role, booted, stopping)
    logging.shutdown()
    os._exit(code)  # skip interpreter teardown: every thread left is a daemon, nothing to flush


def _work(settings: Settings, redis_url: str, role: Role, booted: Any, stopping: threading.Event) -> int:
    from dramatiq.errors import BrokerConnectionError

    from actors.broker import build_broker, pin_to_one_cpu

    index = role.index
    cpu = pin_to_one_cpu(settings.worker_cpu_affinity, role.cpu_index)
    try:
        broker = build_broker(settings, redis_url, threads=role.threads)
        broker.emit_after("process_boot")
        worker = dramatiq.Worker(
            broker,
            queues={role.queue},
            worker_threads=role.threads,
            worker_timeout=settings.worker_poll_ms,
        )
        worker.start()
    except BrokerConnectionError as error:
        log.error("worker_process_boot_failed", extra={"worker": index, "error": type(error).__name__})
        return EXIT_REDIS
    except Exception as error:  # noqa: BLE001 - one line with the reason, not a traceback per process
        log.error(
            "worker_process_boot_failed",
            extra={"worker": index, "error": type(error).__name__, "detail": str(error)[:300]},
        )
        return EXIT_FAILURE
    booted.set()
    log.info(
        "worker_process_ready",
        extra={"worker": index, "queue": role.queue, "pid": os.getpid(), "threads": role.threads, "cpu": cpu},
    )
    while not stopping.wait(1.0):
        pass
    log.info("worker_process_stopping", extra={"worker": index})
    started = time.monotonic()
    worker.stop(timeout=int(settings.shutdown_timeout_seconds * 1000))
    broker.close()
    log.info(
        "worker_process_stopped",
        extra={"worker": index, "seconds": round(time.monotonic() - started, 3)},
    )
    return EXIT_OK


def lower_priority(nice: int) -> tuple[int, bool] | None:
    """Let the web have the CPU first: run the worker processes (forked after this) at ``nice``.

    During a burst the web must acknowledge Meta's webhooks quickly, while what it queued can wait a
    moment; at the same priority, the worker processes' threads take the cores the web needs (its
    acks waited ~5× longer on the 2-core benchmark machine). The kernel shares the CPU between
    sessions (autogroups) before ``nice`` counts, and a Procfile runner, ``wapipe run`` or the
    benchmark starts each process in a session of its own: so when the session is this worker's
    alone (:func:`session_is_ours`), the session's nice is set too (``/proc/self/autogroup``).
    A nice already higher is kept. Returns the nice and whether the session's was set, or None
    when ``nice`` is 0 (the workers run as started).
    """
    if nice <= 0:
        return None
    nice = max(nice, os.getpriority(os.PRIO_PROCESS, 0))
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)  # this thread's; the forked processes inherit it
    except OSError as error:  # a sandbox that refuses even a lower priority
        log.warning("worker_priority_refused", extra={"error": error.strerror or type(error).__name__})
        return None
    session = False
    if session_is_ours():
        with contextlib.suppress(OSError):  # no autogroups (disabled, or not Linux)
            Path("/proc/self/autogroup").write_text(f"{nice}\n", encoding="ascii")
            session = True
    return nice, session


def session_is_ours() -> bool:
    """Whether this process's session holds nothing but this process and, leading it, its parent:
    true when it leads the session (``wapipe run``, a container) or when a Procfile runner started
    it through a shell of its own (honcho runs ``sh -c 'wapipe worker'`` in a new session); false
    in a terminal's session, which the web may share. Before the worker processes are forked."""
    session, me = os.getsid(0), os.getpid()
    if session == me:
        return True
    if session != os.getppid():
        return False
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:  # gone meanwhile, or not Linux
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, …
        if int(fields[3]) == session:
            members.add(int(entry.name))
    return members <= {session, me}


def schedule_as_batch(policy: str) -> bool:
    """With ``policy`` "batch", run the worker processes (forked after this) under Linux's
    ``SCHED_BATCH``: a thread woken up does not preempt the one running, and runs when that one
    blocks or its slice ends. A worker process's threads hand messages and the GIL to one another
    for every message; under the normal policy the woken thread preempts the thread that woke it,
    while that one still holds the GIL, and the two switch back and forth for nothing (a quarter of
    a worker's Python time was spent in ``Condition.notify`` on the 2-core benchmark machine).
    Measured there: 25 % less CPU per message, 40 % more replies per second. Returns whether it
    was set: not on other systems, nor where a sandbox refuses it (then a warning says so)."""
    if policy != "batch" or not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # this thread's; inherited
    except OSError as error:
        log.warning(
            "worker_batch_scheduling_refused", extra={"error": error.strerror or type(error).__name__}
        )
        return False
    return True


class Supervisor:
    """Starts the worker processes and stops them together (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        *,
        first_cpu: int = 0,
        target: Callable[[Settings, str, Role, Any], None] = run_worker_process,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.target = target
        count = settings.worker_processes
        self.roles = [
            *(Role(i, first_cpu + i, PIPELINE_QUEUE, settings.worker_threads) for i in range(count)),
            Role(count, first_cpu + count, MEDIA_QUEUE, settings.media_worker_threads),
        ]
        self.processes: list[Any] = []
        self._booted: list[Any] = []
        self._ready = False
        self._stopping = False
        self._signals = 0
        self._died: tuple[int, int | None] | None = None

    def start(self) -> None:
        """Fork the worker processes, with the stop signals blocked until each has its handlers."""
        context: Any = multiprocessing.get_context(_start_method())
        lowered = lower_priority(self.settings.worker_nice)
        batch = schedule_as_batch(self.settings.worker_scheduler)
        if lowered is not None or batch:
            nice, session = lowered or (0, False)
            log.info("worker_priority_lowered", extra={"nice": nice, "session": session, "batch": batch})
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for role in self.roles:
                booted = context.Event()
                process = context.Process(
                    target=self.target,
                    args=(self.settings, self.redis_url, role, booted),
                    name=f"wapipe-worker-{role.index}",
                    daemon=False,
                )
                process.start()
                self.processes.append(process)
                self._booted.append(booted)
        finally:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._on_signal)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if not self._stopping:
            self._stopping = True
            log.info("worker_stopping", extra={"signal": signal.Signals(signum).name})
            self._send(signal.SIGTERM)
        elif signum == signal.SIGINT and self._signals > 1:
            log.warning("worker_killed", extra={"signal": "SIGINT"})
            self._send(signal.SIGKILL)

    def _send(self, signum: int) -> None:
        for process in self.processes:
            if process.exitcode is None and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def wait(self) -> int:
        """Until every worker process ended; the exit code of ``wapipe worker``."""
        kill_at: float | None = None
        while True:
            alive = [process for process in self.processes if process.exitcode is None]
            if not alive:
                break
            multiprocessing.connection.wait([process.sentinel for process in alive], timeout=0.5)
            if not self._ready and not self._stopping and all(event.is_set() for event in self._booted):
                self._ready = True
                log.info(
                    "worker_ready",
                    extra={
                        "processes": len(self.processes),
                        "threads": sum(role.threads for role in self.roles),
                    },
                )
            for process in self.processes:
                if process.exitcode is not None and not self._stopping:
                    self._died = (process.pid, process.exitcode)
                    log.critical(
                        "worker_process_died",
                        extra={
                            "pid": process.pid,
                            "exit_code": process.exitcode,
                            "hint": "stopping the rest",
                        },
                    )
                    self._stopping = True
                    self._send(signal.SIGTERM)
            if self._stopping and kill_at is None:
                kill_at = time.monotonic() + self.settings.shutdown_timeout_seconds + KILL_GRACE_SECONDS
            if kill_at is not None and time.monotonic() > kill_at:
                log.error("worker_process_hung", extra={"hint": "killing it"})
                self._send(signal.SIGKILL)
                kill_at = float("inf")
        for process in self.processes:
            process.join()
        if self._died is not None:
            code = self._died[1]
            return code if code in (EXIT_CONFIG, EXIT_REDIS) else EXIT_FAILURE
        return EXIT_OK

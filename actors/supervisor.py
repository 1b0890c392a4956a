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
- A worker process whose main process dies (``kill -9`` of the main alone) gets SIGTERM (Linux).

A worker process that dies (SIGKILL, the OOM killer, a crash in C code) is replaced by the main
process, as Dramatiq's and Sidekiq's supervisors do, and the others go on working:

- What it had fetched and not acked goes back on its queue at once (its broker id is the main
  process's choice, so the main knows its ack sets: :func:`daemon.store.queues.requeue_fetched`);
  if Redis does not answer then, the heartbeat timeout recovers them, as after the death of a
  whole worker.
- Its live-only gauges leave the summed metrics; ``wapipe_worker_restarts_total{process}`` counts
  the replacement, and ``worker_process_died`` then ``worker_process_replaced`` are logged.
- More than :data:`RESTART_LIMIT` deaths within :data:`RESTART_WINDOW_SECONDS` is a crash loop
  (a message that kills its process every time, memory that runs out at once): the main process
  stops the others and exits 1, for its supervisor (systemd, ``wapipe run``) to see.
- A process that exits on its own before it booted (its configuration, Redis unreachable) stops
  the worker with its exit code, as at start: a replacement would fail the same way.
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
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dramatiq
import redis

from daemon import logs
from daemon.config import Settings
from daemon.embedded import die_with_parent
from daemon.pipeline import MEDIA_QUEUE, PIPELINE_QUEUE
from daemon.startup import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_REDIS

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Extra time, beyond the shutdown timeout, before the main process kills a worker that hangs.
KILL_GRACE_SECONDS = 10.0
#: A worker whose processes died more than this many times within :data:`RESTART_WINDOW_SECONDS`
#: is in a crash loop: it stops (exit 1) rather than replace them again.
RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 60.0
#: The longest the main process waits for Redis to requeue a dead process's messages.
REQUEUE_TIMEOUT_SECONDS = 2.0


def _start_method() -> str:
    """fork where it is safe (Linux): children get the loaded settings without reading them again."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


@dataclass(frozen=True, slots=True)
class Role:
    """What one worker process does: its index, CPU slot, queue and thread count, and the broker
    id it fetches under (a new one for each process started in the role)."""

    index: int
    cpu_index: int
    queue: str
    threads: int
    broker_id: str | None = None

    @property
    def kind(self) -> str:
        """``pipeline`` or ``media``, as ``wapipe_worker_restarts_total`` labels it."""
        return "media" if self.queue == MEDIA_QUEUE else "pipeline"


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
        broker = build_broker(settings, redis_url, threads=role.threads, broker_id=role.broker_id)
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
    """Starts the worker processes, replaces those that die, and stops them together (see the
    module docstring)."""

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
        #: Each role's current process, the role as it was started (its broker id) and its
        #: "booted" event.
        self.processes: list[Any] = []
        self._started: list[Role] = []
        self._booted: list[Any] = []
        self._context: Any = None
        self._ended: set[int] = set()  # pids of the processes already seen to end
        self._deaths: deque[float] = deque()  # when processes died, within the restart window
        self._restarts: Any = None  # wapipe_worker_restarts_total, once started
        self._ready = False
        self._stopping = False
        self._signals = 0
        self._code = EXIT_OK

    def start(self) -> None:
        """Fork the worker processes, with the stop signals blocked until each has its handlers."""
        self._context = multiprocessing.get_context(_start_method())
        lowered = lower_priority(self.settings.worker_nice)
        batch = schedule_as_batch(self.settings.worker_scheduler)
        if lowered is not None or batch:
            nice, session = lowered or (0, False)
            log.info("worker_priority_lowered", extra={"nice": nice, "session": session, "batch": batch})
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for role in self.roles:
                process, started, booted = self._fork(role)
                self.processes.append(process)
                self._started.append(started)
                self._booted.append(booted)
        finally:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._on_signal)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        from actors.metrics import worker_restarts  # prometheus-client: after the worker set its dir

        self._restarts = worker_restarts()

    def _fork(self, role: Role) -> tuple[Any, Role, Any]:
        """Start a process in ``role`` under a new broker id (the stop signals are blocked)."""
        started = replace(role, broker_id=str(uuid.uuid4()))
        booted = self._context.Event()
        process = self._context.Process(
            target=self.target,
            args=(self.settings, self.redis_url, started, booted),
            name=f"wapipe-worker-{role.index}",
            daemon=False,
        )
        with warnings.catch_warnings():
            # Python 3.12+ warns that a fork of a process with threads may deadlock the child on a
            # lock another thread held. The main process's only other threads serve the metrics
            # (reading files, logging nothing); the locks a child takes (logging's, the import
            # lock) are reset at fork by CPython.
            warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
            process.start()
        return process, started, booted

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

    def _stop(self, code: int) -> None:
        """Stop the other processes; the worker will exit with ``code``."""
        self._code = code
        self._stopping = True
        self._send(signal.SIGTERM)

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
            for index, process in enumerate(self.processes):
                if process.exitcode is not None and process.pid not in self._ended:
                    self._ended.add(process.pid)
                    self._process_ended(index, process)
            if self._stopping and kill_at is None:
                kill_at = time.monotonic() + self.settings.shutdown_timeout_seconds + KILL_GRACE_SECONDS
            if kill_at is not None and time.monotonic() > kill_at:
                log.error("worker_process_hung", extra={"hint": "killing it"})
                self._send(signal.SIGKILL)
                kill_at = float("inf")
        for process in self.processes:
            process.join()
        return self._code

    def _process_ended(self, index: int, process: Any) -> None:
        """One of the processes ended: done, a boot failure (stop), or a death (replace it)."""
        code, pid = process.exitcode, process.pid
        role, booted = self._started[index], self._booted[index].is_set()
        if self._stopping and code == EXIT_OK:
            return
        if not booted and code > 0:  # its own exit at boot: a replacement would fail the same way
            log.critical(
                "worker_process_died",
                extra={"worker": role.index, "pid": pid, "exit_code": code, "hint": "stopping the rest"},
            )
            if not self._stopping:
                self._stop(code if code in (EXIT_CONFIG, EXIT_REDIS) else EXIT_FAILURE)
            return
        from actors.metrics import process_gone

        process_gone(pid)
        requeued = self._requeue(role)  # its consumers may have fetched just before it booted
        if self._stopping:  # killed while stopping (hung), or crashed then: nothing to replace
            return
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths[0] < now - RESTART_WINDOW_SECONDS:
            self._deaths.popleft()
        fields = {"worker": role.index, "kind": role.kind, "pid": pid, "exit_code": code}
        if len(self._deaths) > RESTART_LIMIT:
            log.critical(
                "worker_crash_loop",
                extra={
                    **fields,
                    "requeued": requeued,
                    "deaths": len(self._deaths),
                    "seconds": RESTART_WINDOW_SECONDS,
                    "hint": "stopping the rest",
                },
            )
            self._stop(EXIT_FAILURE)
            return
        log.error("worker_process_died", extra={**fields, "requeued": requeued, "hint": "replacing it"})
        with self._signals_blocked():
            if self._stopping:  # a stop signal came meanwhile: nothing to replace
                return
            try:
                replacement, started, event = self._fork(self.roles[index])
            except OSError as error:  # no memory or process left for a fork
                log.critical(
                    "worker_process_not_replaced",
                    extra={"worker": role.index, "error": error.strerror or type(error).__name__},
                )
                self._stop(EXIT_FAILURE)
                return
            self.processes[index], self._started[index], self._booted[index] = replacement, started, event
        if self._restarts is not None:
            self._restarts.labels(role.kind).inc()
        log.info(
            "worker_process_replaced",
            extra={"worker": role.index, "kind": role.kind, "pid": replacement.pid, "replaces": pid},
        )

    @contextlib.contextmanager
    def _signals_blocked(self) -> Iterator[None]:
        """The stop signals wait while a process is forked: the main process's handler then sees
        the new process, and the new process runs its own handlers before it takes one."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _requeue(self, role: Role) -> int | None:
        """Put back what the dead process of ``role`` had fetched and not acked; how many, or None
        when Redis did not answer (the heartbeat timeout recovers them then)."""
        from daemon.store.queues import requeue_fetched

        assert role.broker_id is not None
        client = redis.Redis.from_url(
            self.redis_url,
            socket_timeout=REQUEUE_TIMEOUT_SECONDS,
            socket_connect_timeout=REQUEUE_TIMEOUT_SECONDS,
        )
        try:  # a connection of its own, closed before anything is forked
            return requeue_fetched(client, role.broker_id, (role.queue,))
        except redis.RedisError as error:
            log.warning(
                "requeue_deferred",
                extra={
                    "worker": role.index,
                    "error": type(error).__name__,
                    "hint": "its messages run again after WAPIPE_HEARTBEAT_TIMEOUT_MS",
                },
            )
            return None
        finally:
            client.close()

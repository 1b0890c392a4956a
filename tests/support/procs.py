"""Run real ``wapipe`` processes from tests and always clean them up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from tests.support.waiting import free_port, wait_for

WAPIPE = [sys.executable, "-m", "daemon"]
#: The console script, as a user (or a Procfile runner) starts wapipe: its sys.path[0] is the
#: script's folder, not the working directory.
WAPIPE_SCRIPT = str(Path(sys.executable).parent / "wapipe")


class Proc:
    """A ``wapipe`` subprocess in its own session; its output goes to a log file.

    ``cwd`` defaults to the log folder, never the repo root: a developer's .env must not leak in.
    ``command`` replaces ``python -m daemon`` (e.g. with :data:`WAPIPE_SCRIPT`, or ``honcho``).
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        *,
        cwd: Path | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*(WAPIPE if command is None else command), *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd or log_dir,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait; then SIGKILL this process and every process it started."""
        family = self.children()
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill(family)
        self._log.close()
        return self.process.returncode

    def kill(self, family: list[psutil.Process] | None = None) -> None:
        """SIGKILL the process and its descendants (only ours: found through our own PID)."""
        family = self.children() if family is None else family
        for proc in [*family]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=10)
        psutil.wait_procs(family, timeout=5)


def wait_exit(proc: Proc, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.alive():
        stuck = [_described(p) for p in running([psutil.Process(proc.pid), *proc.children()])]
        lines = [line for line in proc.output().splitlines() if "supervisor" in line or "Traceback" in line]
        raise AssertionError(
            f"{proc.name} still running after {timeout} s; still running: {stuck}\n"
            + "\n".join(lines[-40:])
            + f"\n--- last of its output:\n{proc.output()[-3000:]}"
        )
    assert proc.process.returncode is not None
    return proc.process.returncode


def base_env(**overrides: str) -> dict[str, str]:
    """A clean environment for a wapipe subprocess: PATH and the interpreter's basics only."""
    env = {
        key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT") if key in os.environ
    }
    env.update(overrides)
    return env


def family(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants, as they are now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _described(process: psutil.Process) -> str:
    """A process's pid and the end of its command line (``daemon worker``), for a failure message."""
    try:
        return f"{process.pid} {' '.join(process.cmdline()[-2:])}"
    except psutil.Error:
        return f"{process.pid} (gone)"


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running (not gone, not zombies)."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


def sandbox_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    """A user's fresh environment for `wapipe run` in sandbox mode: no REDIS_URL, no Meta setting,
    a small worker, free ports."""
    defaults = {
        "PORT": str(port),
        "WAPIPE_DATA_DIR": str(data_dir),
        "WAPIPE_WORKER_PROCESSES": "1",
        "WAPIPE_WORKER_THREADS": "2",
        "WAPIPE_METRICS_PORT": str(free_port()),
        "WAPIPE_SHUTDOWN_TIMEOUT_SECONDS": "5",
    }
    return base_env(**(defaults | extra))


@contextlib.contextmanager
def sandbox_deployment(
    folder: Path, handler: str, *, data_dir: Path | None = None, port: int | None = None
) -> Iterator[dict[str, str]]:
    """`wapipe run` in sandbox mode started from ``folder`` (a bot's folder) with
    ``WAPIPE_HANDLER=handler``; yields its environment, and stops everything on exit. Given a
    ``data_dir`` (the caller's, kept) and a ``port``, a second deployment starts where one stopped."""
    own = data_dir is None
    data_dir = (
        Path(tempfile.mkdtemp(prefix="wapipe-sbx-")) if data_dir is None else data_dir
    )  # short: a socket
    env = sandbox_env(data_dir, port or free_port(), WAPIPE_HANDLER=handler)
    run = Proc("run", ["run"], env, data_dir, cwd=folder, command=[WAPIPE_SCRIPT])
    try:
        wait_for(lambda: "worker_ready" in run.output() or not run.alive(), timeout=60, what="wapipe run")
        assert run.alive(), run.output()
        wait_for(lambda: "sandbox_emulator_recorded" in run.output(), timeout=20, what="the web")
        yield env
    finally:
        run.stop()
        if own:
            shutil.rmtree(data_dir, ignore_errors=True)


def wapipe(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``wapipe ARGS`` (the console script) from ``folder``, its output captured."""
    return subprocess.run(
        [WAPIPE_SCRIPT, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=30, check=False
    )

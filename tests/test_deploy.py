"""Deploying as people deploy: secrets in `.env`, the Procfile under honcho, runners' signals,
several workers on one host, handlers from the bot's folder, one-line start-up errors."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from tests.conftest import ACCESS_TOKEN, pipeline_env
from tests.pipeline_helpers import drained, listed_targets, post_webhook
from tests.support.fake_graph import FakeGraph, sent_json
from tests.support.meta import text_envelope
from tests.support.procs import WAPIPE_SCRIPT, Proc, base_env, family, running, wait_exit
from tests.support.waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HONCHO = [str(BIN / "honcho")]

#: A bot's own handler module, in the folder the bot is started from.
MY_BOT = """
import os, pathlib, time

def handle(message):
    if message.text == "slow" and not pathlib.Path("slow.started").exists():
        pathlib.Path("slow.started").write_text(str(os.getpid()))
        time.sleep(60)  # killed by the runner before it ends
    return [{"type": "text", "text": {"body": "bot says: " + (message.text or "").upper()}}]
"""


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start processes (wapipe, honcho); every one and its descendants are stopped at the end."""
    started: list[Proc] = []

    def start(name: str, args: list[str], env: dict[str, str], **options: Any) -> Proc:
        proc = Proc(name, args, env, tmp_path, **options)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop(timeout=15)


def bot_folder(tmp_path: Path, settings: dict[str, str] | None = None) -> Path:
    """A bot's folder as the README describes it: the Procfile, my_bot.py and maybe a `.env`."""
    folder = tmp_path / "bot"
    folder.mkdir()
    shutil.copy(ROOT / "Procfile", folder / "Procfile")
    (folder / "my_bot.py").write_text(MY_BOT, encoding="utf-8")
    if settings is not None:
        lines = [f"{key}={value}" for key, value in settings.items() if key not in base_env()]
        (folder / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def user_env(**extra: str) -> dict[str, str]:
    """A user's shell: the virtualenv's bin on PATH, nothing of wapipe's unless given."""
    env = base_env(**extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_secrets_in_dotenv_reach_every_process_and_the_handler_loads_from_the_bot_folder(
    tmp_path: Path, redis_url: str, fake_graph: FakeGraph, launch: Callable[..., Proc]
) -> None:
    """Every secret and setting only in `.env` (the environment has none): `wapipe web` and `wapipe
    worker` (2 processes), started with the console script from the bot's folder, answer a signed
    webhook with a real (non-sandbox) reply made by `my_bot.py` there, sent with `.env`'s token."""
    port = free_port()
    settings = pipeline_env(
        redis_url,
        fake_graph.url,
        tmp_path / "data",
        PORT=str(port),
        WAPIPE_WORKER_PROCESSES="2",
        WAPIPE_HANDLER="my_bot:handle",
    )
    folder = bot_folder(tmp_path, settings)
    web = launch("web", ["web"], user_env(), cwd=folder, command=[WAPIPE_SCRIPT])
    worker = launch("worker", ["worker"], user_env(), cwd=folder, command=[WAPIPE_SCRIPT])
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: ready(url) or not web.alive(), timeout=20, what="web")
    wait_for(
        lambda: "worker_ready" in worker.output() or not worker.alive(),
        timeout=30,
        what="two worker processes",
    )
    assert web.alive(), web.output()
    assert worker.alive(), worker.output()
    for n in range(4):  # enough for both worker processes to answer some
        assert post_webhook(url, text_envelope(f"wamid.ENV{n}", f"hello {n}")) == 200
    sends = fake_graph.wait_sends(4)
    assert sorted(sent_json(send)["text"]["body"] for send in sends) == [
        f"bot says: HELLO {n}" for n in range(4)
    ]
    assert {send.headers["Authorization"] for send in sends} == {f"Bearer {ACCESS_TOKEN}"}
    assert "sandbox" not in worker.output().lower().replace("sandbox=false", "")


@pytest.mark.timeout(240)
def _autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text(encoding="ascii").split("nice")[1])


def test_the_procfile_under_honcho_serves_the_sandbox_two_workers_and_stops_at_once(
    tmp_path: Path, redis_url: str, rclient: redis.Redis, launch: Callable[..., Proc]
) -> None:
    """`honcho start -c worker=2` with the project's Procfile in a bot folder, REDIS_URL set, sandbox
    mode: the web listens on loopback only, `wapipe simulate` gets its answer through the emulator the
    web recorded in Redis (nothing taken from PORT, which honcho sets per process), both workers serve
    metrics on their own ports, listed for Prometheus; each worker's session (honcho's `sh -c` and
    the worker's tree) yields the CPU to the web's (autogroup nice 10 against 0); SIGTERM to honcho
    stops every process within its 5 s grace, without a SIGKILL, and leaves no metrics files behind."""
    folder = bot_folder(tmp_path)
    data_dir = tmp_path / "data"
    port = free_port()
    env = user_env(
        REDIS_URL=redis_url,
        WAPIPE_DATA_DIR=str(data_dir),
        WAPIPE_WORKER_PROCESSES="1",
        WAPIPE_WORKER_THREADS="2",
        WAPIPE_MEDIA_WORKER_THREADS="2",
        WAPIPE_METRICS_PORT=str(free_port()),
    )
    honcho = launch("honcho", ["start", "-c", "worker=2", "-p", str(port)], env, cwd=folder, command=HONCHO)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: ready(url) or not honcho.alive(), timeout=30, what="honcho's web")
    wait_for(
        lambda: honcho.output().count("worker_ready") == 2 or not honcho.alive(),
        timeout=30,
        what="two workers",
    )
    assert honcho.alive(), honcho.output()
    web = next(p for p in family(honcho.pid) if p.cmdline()[-2:] == [WAPIPE_SCRIPT, "web"])
    listening = {c.laddr.ip for c in web.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}
    if Path("/proc/self/autogroup").exists():
        workers = [p for p in family(honcho.pid) if p.cmdline()[-2:] == [WAPIPE_SCRIPT, "worker"]]
        assert len(workers) == 6  # two workers, each a main process, a pipeline and a media process
        assert {_autogroup_nice(p.pid) for p in workers} == {10}
        assert _autogroup_nice(web.pid) == 0

    answer = launch("simulate", ["simulate", "--text", "hi honcho"], env, cwd=folder)
    assert wait_exit(answer, timeout=30) == 0, answer.output()
    assert answer.output() == "You said: hi honcho\n"

    targets = wait_for(
        lambda: len(listed_targets(data_dir)) == 2 and listed_targets(data_dir), what="2 targets"
    )
    for target in targets:
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
            assert b"wapipe_worker_threads 4.0" in response.read()  # 2 + 2 for media

    everything = family(honcho.pid)
    stopped_at = time.monotonic()
    honcho.process.send_signal(signal.SIGTERM)
    assert wait_exit(honcho, timeout=15) is not None
    took = time.monotonic() - stopped_at
    assert took < 5, f"{took:.1f} s:\n{honcho.output()}"
    assert "SIGKILL" not in honcho.output()
    assert wait_for(lambda: not running(everything), timeout=5, what="every process gone") is True
    assert list((data_dir / "metrics").glob("worker-*")) == []
    assert listed_targets(data_dir) == []
    assert rclient.get("wapipe:sandbox:emulator") is None


@pytest.mark.parametrize("target", ["group", "main"])
def test_sigterm_to_the_worker_group_or_its_main_process_stops_every_process(
    tmp_path: Path,
    redis_url: str,
    fake_graph: FakeGraph,
    launch: Callable[..., Proc],
    target: str,
) -> None:
    """SIGTERM to the whole process group of `wapipe worker` (systemd's default KillMode, honcho,
    containers: every process gets it, and the main forwards its own copy) or to the main process
    alone: with nothing in flight, all its processes exit 0 well within 5 s."""
    env = pipeline_env(redis_url, fake_graph.url, tmp_path / "data", WAPIPE_WORKER_PROCESSES="2")
    worker = launch("worker", ["worker"], env)
    wait_for(lambda: "worker_ready" in worker.output(), timeout=30, what="worker")
    everything = family(worker.pid)
    assert len(everything) == 4  # the main process, 2 pipeline processes, the media process
    started = time.monotonic()
    if target == "group":
        os.killpg(worker.pid, signal.SIGTERM)
    else:
        worker.process.send_signal(signal.SIGTERM)
    assert wait_exit(worker, timeout=15) == 0, worker.output()
    assert wait_for(lambda: not running(everything), timeout=5, what="worker processes gone") is True
    assert time.monotonic() - started < 5
    assert worker.output().count("worker_process_stopped") == 3


@pytest.mark.timeout(240)
def test_work_in_flight_at_the_runners_sigkill_is_answered_once_by_the_next_worker(
    tmp_path: Path,
    redis_url: str,
    rclient: redis.Redis,
    fake_graph: FakeGraph,
    launch: Callable[..., Proc],
) -> None:
    """A handler still running when honcho gives up (5 s after its SIGTERM) is SIGKILLed with the
    rest; the next worker started on that data dir removes the killed one's metrics directory, and
    the message goes back to the queue and is answered exactly once."""
    port = free_port()
    data_dir = tmp_path / "data"
    settings = pipeline_env(
        redis_url,
        fake_graph.url,
        data_dir,
        PORT=str(port),
        WAPIPE_HANDLER="my_bot:handle",
        WAPIPE_HEARTBEAT_TIMEOUT_MS="1000",
        WAPIPE_SHUTDOWN_TIMEOUT_SECONDS="30",
    )
    folder = bot_folder(tmp_path, settings)
    honcho = launch("honcho", ["start"], user_env(), cwd=folder, command=HONCHO)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: ready(url) and "worker_ready" in honcho.output(), timeout=30, what="honcho")
    assert post_webhook(url, text_envelope("wamid.SLOW", "slow")) == 200
    wait_for(lambda: (folder / "slow.started").exists(), timeout=20, what="the slow handler to start")
    assert list((data_dir / "metrics").glob("worker-*"))

    everything = family(honcho.pid)
    honcho.process.send_signal(signal.SIGTERM)
    assert wait_exit(honcho, timeout=20) is not None
    assert "SIGKILL" in honcho.output()
    wait_for(lambda: not running(everything), timeout=10, what="every process killed")
    assert fake_graph.sends() == []
    assert len(list((data_dir / "metrics").glob("worker-*"))) == 1  # the killed worker's

    after = launch("worker-2", ["worker"], user_env(), cwd=folder, command=[WAPIPE_SCRIPT])
    [send] = fake_graph.wait_sends(1, timeout=30)
    assert sent_json(send)["text"]["body"] == "bot says: SLOW"
    assert "stale_metrics_removed" in after.output()
    assert len(list((data_dir / "metrics").glob("worker-*"))) == 1  # the new worker's own
    wait_for(lambda: drained(rclient), timeout=20, what="queue drained")
    assert len(fake_graph.sends()) == 1


def take_port() -> socket.socket:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


@pytest.mark.parametrize(
    ("command", "case", "code", "named"),
    [
        ("web", "port in use", 2, "PORT: cannot listen on 127.0.0.1:{port}: the port is already in use"),
        (
            "worker",
            "handler missing",
            2,
            "WAPIPE_HANDLER=missing_bot:handle: no module 'missing_bot' in {cwd}",
        ),
        ("worker", "handler broken", 2, "importing 'broken_bot' failed: ZeroDivisionError"),
        ("worker", "media dir is a file", 2, "WAPIPE_MEDIA_DIR: cannot write in"),
        ("worker", "data dir is a file", 2, "WAPIPE_DATA_DIR: cannot write in"),
        (
            "web",
            "redis unreachable",
            3,
            "REDIS_URL: cannot reach Redis at redis://127.0.0.1:{dead}/0 (waited 1 s)",
        ),
        (
            "worker",
            "redis unreachable",
            3,
            "REDIS_URL: cannot reach Redis at redis://127.0.0.1:{dead}/0 (waited 1 s)",
        ),
        ("web", "half-configured", 2, "WHATSAPP_ACCESS_TOKEN: is required: WHATSAPP_APP_SECRET is set"),
    ],
)
def test_startup_errors_are_one_line_naming_the_setting(
    tmp_path: Path, redis_url: str, command: str, case: str, code: int, named: str
) -> None:
    """A user's mistake at start is one line on stderr naming the setting (no traceback), with the
    documented exit code: 2 for configuration, 3 for Redis unreachable after the start-up wait."""
    folder = tmp_path / "bot"
    folder.mkdir()
    (folder / "broken_bot.py").write_text("handle = 1 / 0\n", encoding="utf-8")
    holder = take_port()
    dead = free_port()
    env = pipeline_env(
        redis_url,
        "http://127.0.0.1:9",
        tmp_path / "data",
        WAPIPE_REDIS_START_WAIT_SECONDS="1",
        WAPIPE_LOG_LEVEL="WARNING",
    )
    changes = {
        "port in use": {"PORT": str(holder.getsockname()[1])},
        "handler missing": {"WAPIPE_HANDLER": "missing_bot:handle"},
        "handler broken": {"WAPIPE_HANDLER": "broken_bot:handle"},
        "media dir is a file": {"WAPIPE_MEDIA_DIR": str(folder / "broken_bot.py")},
        "data dir is a file": {"WAPIPE_DATA_DIR": str(folder / "broken_bot.py")},
        "redis unreachable": {"REDIS_URL": f"redis://127.0.0.1:{dead}/0"},
        "half-configured": {"WHATSAPP_ACCESS_TOKEN": ""},
    }[case]
    env.update(changes)
    if case == "half-configured":
        env.pop("WHATSAPP_VERIFY_TOKEN")
        env.pop("WHATSAPP_GRAPH_URL")
    try:
        proc = Proc(command, [command], env, tmp_path, cwd=folder, command=[WAPIPE_SCRIPT])
        try:
            assert wait_exit(proc, timeout=30) == code
            output = proc.output().strip()
        finally:
            proc.stop()
    finally:
        holder.close()
    lines = [line for line in output.splitlines() if "redis_waiting" not in line]
    assert len(lines) == 1, output
    expected = named.format(port=env.get("PORT"), cwd=folder.resolve(), dead=dead)
    assert expected in lines[0]
    assert lines[0].startswith(f"wapipe {command}: ") or lines[0].startswith("wapipe: configuration error")
    assert "Traceback" not in output


def test_a_killed_main_process_takes_its_worker_processes_down(
    tmp_path: Path, redis_url: str, fake_graph: FakeGraph, launch: Callable[..., Proc]
) -> None:
    """kill -9 of the main process: its worker processes get SIGTERM and stop by themselves (never
    orphans consuming messages unsupervised). (A worker process killed is replaced:
    tests/test_worker_recovery.py.)"""
    env = pipeline_env(redis_url, fake_graph.url, tmp_path / "data", WAPIPE_WORKER_PROCESSES="2")
    worker = launch("worker", ["worker"], env)
    wait_for(lambda: "worker_ready" in worker.output(), timeout=30, what="worker")
    children = worker.children()
    assert len(children) == 3
    worker.process.kill()
    worker.process.wait(timeout=10)
    assert wait_for(lambda: not running(children), timeout=20, what="the other processes gone") is True
    assert worker.output().count("worker_process_stopped") == 3

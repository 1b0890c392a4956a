"""Side by side with the peers: ``make bench PEERS=DIR`` (``python -m bench.peers DIR``).

``DIR`` holds one folder per peer server. Two kinds are known, by folder name:

- ``seed-node``: the original Node design (Express, Bull on Redis, axios). Installed with ``npm ci``
  into a temporary directory; it gets a Redis of its own with AOF (``appendfsync everysec``), as
  durable as wapipe's.
- ``pywa``: pywa on FastAPI and uvicorn. Installed into a virtualenv of its own from its pinned
  ``requirements.txt``.

A folder of another name is skipped with a line. wapipe and each peer then run the same scenario,
``--rounds`` times, interleaved (wapipe, each peer, wapipe, …), each started afresh on its own
Redis, against one fake Graph API and one load generator:

1. **burst**: ``--messages`` unique signed text webhooks as fast as possible over 64 connections,
   while the system replies to them: ingest per second *while processing*, ack p99, replies per
   second (to the last reply), and CPU milliseconds per replied message of the system's own
   processes (wapipe: web, workers, Redis; seed-node: Node and its Redis; pywa: uvicorn) — not the
   load generator's or the fake Graph API's;
2. **steady**: ``--rate`` messages per second for ``--rate-seconds``: reply latency p50 and p99.

Every accepted message must be answered once: a run that lost or doubled one says so. Each
figure is the median of the rounds; wapipe's is also given as a ratio to the best peer's (for
latencies and CPU, lower is better, and the ratio is wapipe's over the best).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.baselines import SECRET
from bench.load import PHONE_NUMBER_ID, as_fast_as_possible, at_rate, requests
from bench.run import (
    PY,
    ROOT,
    CPUShare,
    Graph,
    ms,
    percentile,
    port_open,
    process,
    start_worker,
    summarize_ingest,
    wapipe_env,
)
from tests.support.redis_server import RedisServer
from tests.support.waiting import free_port, wait_for

#: The figures compared, and whether higher is better.
FIGURES = {
    "ingest_per_second": True,
    "ack_p99_ms": False,
    "replies_per_second": True,
    "cpu_ms_per_message": False,
    "reply_p50_ms": False,
    "reply_p99_ms": False,
}
#: Reported for the systems that keep their state in Redis, without a ratio: what Redis holds, in
#: bytes per handled message, once a burst is done (the seed stack's as its Bull settings keep it).
REDIS_FIGURE = "redis_bytes_per_message"


@dataclass
class System:
    """One running system: where webhooks go, and the processes whose CPU it spends."""

    name: str
    webhook_url: str
    pids: dict[str, int]
    #: The system's Redis, when it keeps its state there.
    redis: Any = None


#: Starts a system on a fresh Redis: (stack, its folder, the fake Graph API's URL) → System.
Starter = Callable[[ExitStack, Path, str], System]


def _redis(stack: ExitStack, folder: Path) -> RedisServer:
    server = RedisServer(folder / "redis")  # AOF, appendfsync everysec
    server.start()
    stack.callback(server.kill)
    return server


def start_wapipe(processes: int, threads: int, extra: dict[str, str] | None = None) -> Starter:
    """wapipe's web and worker on a Redis of their own; ``extra``: more settings (experiments)."""

    def start(stack: ExitStack, folder: Path, graph_url: str) -> System:
        redis_server = _redis(stack, folder)
        env = wapipe_env(
            redis_server.url, graph_url, folder / "data", PORT=str(free_port()),
            WAPIPE_METRICS_PORT=str(free_port()), WAPIPE_WORKER_PROCESSES=str(processes),
            WAPIPE_WORKER_THREADS=str(threads), **(extra or {}),
        )  # fmt: skip
        web = stack.enter_context(process([PY, "-m", "daemon", "web"], env, folder / "web.log"))
        wait_for(lambda: port_open(int(env["PORT"])), timeout=20, what="wapipe web")
        worker = start_worker(stack, env, folder, "worker")
        assert redis_server.process is not None
        pids = {"web": web.pid, "workers": worker.pid, "redis": redis_server.process.pid}
        return System("wapipe", f"http://127.0.0.1:{env['PORT']}/webhook", pids, redis_server.client())

    return start


def install_seed_node(source: Path, into: Path) -> Starter:
    """``npm ci`` a copy of the seed stack; returns its starter."""
    home = into / "seed-node"
    shutil.copytree(source, home)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=home, check=True, capture_output=True)

    def start(stack: ExitStack, folder: Path, graph_url: str) -> System:
        redis_server = _redis(stack, folder)
        port = free_port()
        env = _base_env() | {
            "PORT": str(port), "REDIS_URL": redis_server.url, "GRAPH_URL": graph_url,
            "GRAPH_TOKEN": "bench-token", "APP_SECRET": SECRET, "VERIFY_TOKEN": "bench",
        }  # fmt: skip
        node = stack.enter_context(process(["node", str(home / "server.js")], env, folder / "seed.log"))
        wait_for(lambda: port_open(port), timeout=30, what="seed-node")
        assert redis_server.process is not None
        return System(
            "seed-node",
            f"http://127.0.0.1:{port}/webhook",
            {"node": node.pid, "redis": redis_server.process.pid},
            redis_server.client(),
        )

    return start


def install_pywa(source: Path, into: Path) -> Starter:
    """A virtualenv with the pywa peer's pinned requirements; returns its starter."""
    venv = into / "pywa-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "-r", str(source / "requirements.txt")]
    subprocess.run(pip, check=True, capture_output=True)
    home = into / "pywa"
    shutil.copytree(source, home)

    def start(stack: ExitStack, folder: Path, graph_url: str) -> System:
        port = free_port()
        env = _base_env() | {
            "GRAPH_URL": graph_url, "GRAPH_TOKEN": "bench-token", "APP_SECRET": SECRET,
            "VERIFY_TOKEN": "bench", "PHONE_ID": PHONE_NUMBER_ID, "PYWA_MODE": "sync",
        }  # fmt: skip
        command = [
            str(venv / "bin" / "uvicorn"), "--app-dir", str(home), "app:server", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        server = stack.enter_context(process(command, env, folder / "pywa.log"))
        wait_for(lambda: port_open(port), timeout=30, what="pywa")
        # pywa serves its webhook at "/" unless told otherwise (its ``webhook_endpoint``).
        return System("pywa", f"http://127.0.0.1:{port}/", {"uvicorn": server.pid})

    return start


INSTALLERS: dict[str, Callable[[Path, Path], Starter]] = {
    "seed-node": install_seed_node,
    "pywa": install_pywa,
}


def _base_env() -> dict[str, str]:
    return {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}


def scenario(system: System, graph: Graph, args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """One round of the scenario on ``system``: the burst, then the steady rate."""
    graph.clear()
    batch = requests(f"{prefix}-burst", args.messages)
    memory_before = _settled_memory(system.redis)
    cpu = CPUShare(system.pids)
    started = time.time()
    posted = asyncio.run(as_fast_as_possible(system.webhook_url, batch, secret=SECRET))
    accepted = {r.message_id for r in posted if r.status == 200}
    if not accepted:
        raise RuntimeError(f"{system.name} accepted none of the burst's webhooks")
    received = graph.wait_received(accepted, timeout=args.deadline)
    spent = cpu.per_message(len(accepted))
    answered = graph.stats()["received_all"]
    ingest = summarize_ingest(posted)
    figures: dict[str, Any] = {
        "accepted": len(accepted),
        "refused": len(posted) - len(accepted),
        "answered_twice": sum(1 for i in accepted if answered.get(i, 0) > 1),
        "ingest_per_second": ingest["per_second"],
        "ack_p99_ms": ingest["ack_p99_ms"],
        "replies_per_second": round(len(accepted) / (max(received[i] for i in accepted) - started), 1),
        "cpu_ms_per_message": round(sum(spent[name] for name in system.pids), 2),
        "cpu_by_process": {name: spent[name] for name in system.pids},
    }
    if system.redis is not None:
        used = _settled_memory(system.redis) - (memory_before or 0)
        figures[REDIS_FIGURE] = round(used / len(accepted))
    graph.clear()
    steady = requests(f"{prefix}-steady", int(args.rate * args.rate_seconds))
    posted = asyncio.run(at_rate(system.webhook_url, steady, secret=SECRET, rate=args.rate))
    replied = graph.wait_received({r.message_id for r in posted if r.status == 200}, timeout=60)
    latencies = [replied[r.message_id] - r.sent_at for r in posted if r.status == 200]
    figures["reply_p50_ms"] = ms(percentile(latencies, 0.5))
    figures["reply_p99_ms"] = ms(percentile(latencies, 0.99))
    return figures


def _settled_memory(client: Any) -> int | None:
    """Redis's ``used_memory`` once it has stopped changing for half a second (the queues drained,
    the last writes made), waiting at most 15 s; None without a Redis."""
    if client is None:
        return None
    deadline = time.monotonic() + 15
    last = int(client.info("memory")["used_memory"])
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = int(client.info("memory")["used_memory"])
        if now == last:
            break
        last = now
    return last


def side_by_side(peers_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Install the peers found in ``peers_dir``, run every system ``args.rounds`` times interleaved,
    and compare."""
    tmp = Path(tempfile.mkdtemp(prefix="wapipe-peers-"))
    try:
        return compare(*_run_all(peers_dir, tmp, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_all(
    peers_dir: Path, tmp: Path, args: argparse.Namespace
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    extra = dict(setting.split("=", 1) for setting in args.wapipe_setting)
    starters: dict[str, Starter] = {"wapipe": start_wapipe(args.processes, args.threads, extra)}
    skipped = []
    for folder in sorted(path for path in peers_dir.iterdir() if path.is_dir()):
        installer = INSTALLERS.get(folder.name)
        if installer is None:
            skipped.append(folder.name)
            continue
        print(f"installing {folder.name} …", flush=True)
        starters[folder.name] = installer(folder, tmp)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in starters}
    with ExitStack() as stack:
        graph_port = free_port()
        stack.enter_context(
            process([PY, "-m", "bench.fake_graph", str(graph_port)], dict(os.environ), tmp / "graph.log")
        )
        wait_for(lambda: port_open(graph_port), timeout=20, what="fake graph")
        graph = Graph(graph_port)
        for round_number in range(args.rounds):
            for name, start in starters.items():
                folder = tmp / f"{name}-{round_number}"
                folder.mkdir()
                with ExitStack() as running:
                    system = start(running, folder, graph.url)
                    runs[name].append(scenario(system, graph, args, f"{name}-{round_number}"))
                print(f"round {round_number + 1}: {name} done", flush=True)
    return runs, skipped


def compare(runs: dict[str, list[dict[str, Any]]], skipped: list[str] | None = None) -> dict[str, Any]:
    """Each system's median figures, and wapipe's ratio to the best peer's."""
    medians = {
        name: {
            figure: statistics.median(run[figure] for run in rounds)
            for figure in [*FIGURES, REDIS_FIGURE]
            if all(figure in run for run in rounds)
        }
        for name, rounds in runs.items()
    }
    ratios: dict[str, dict[str, Any]] = {}
    peers = [name for name in medians if name != "wapipe"]
    for figure, higher_is_better in FIGURES.items():
        if not peers:
            break
        values = {name: medians[name][figure] for name in peers}
        best = (max if higher_is_better else min)(values, key=lambda name: values[name])
        ratios[figure] = {"best_peer": best, "ratio": round(medians["wapipe"][figure] / values[best], 2)}
    return {
        "runs": runs,
        "medians": medians,
        "wapipe_vs_best_peer": ratios,
        "lost_or_doubled": {
            name: sum(run["refused"] + run["answered_twice"] for run in rounds)
            for name, rounds in runs.items()
        },
        "skipped": skipped or [],
    }


def table(report: dict[str, Any]) -> str:
    medians, ratios = report["medians"], report["wapipe_vs_best_peer"]
    names = list(medians)
    width = max(len(figure) for figure in [*FIGURES, REDIS_FIGURE]) + 2
    lines = [f"{'':<{width}}" + "".join(f"{name:>12}" for name in names) + "  wapipe / best peer"]
    for figure in FIGURES:
        ratio = ratios.get(figure)
        note = f"  {ratio['ratio']}x ({ratio['best_peer']})" if ratio else ""
        lines.append(f"{figure:<{width}}" + "".join(f"{medians[name][figure]:>12g}" for name in names) + note)
    lines.append(
        f"{REDIS_FIGURE:<{width}}"
        + "".join(
            f"{medians[name][REDIS_FIGURE]:>12g}" if REDIS_FIGURE in medians[name] else f"{'-':>12}"
            for name in names
        )
    )
    lines.append(
        f"{'lost or doubled':<{width}}" + "".join(f"{report['lost_or_doubled'][name]:>12}" for name in names)
    )
    if report["skipped"]:
        lines.append(f"skipped (unknown peers): {', '.join(report['skipped'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("peers", type=Path, help="a folder of peer servers (seed-node, pywa)")
    parser.add_argument("--messages", type=int, default=3000, help="webhooks in each burst")
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second in the steady run")
    parser.add_argument("--rate-seconds", type=float, default=20.0, help="length of the steady run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every system")
    parser.add_argument("--processes", type=int, default=2, help="wapipe worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per wapipe worker process")
    parser.add_argument("--deadline", type=float, default=120.0, help="longest wait for a burst's replies")
    parser.add_argument(
        "--wapipe-setting", action="append", default=[], metavar="NAME=VALUE", help="another wapipe setting"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peers.json")
    args = parser.parse_args(argv)
    if not args.peers.is_dir():
        parser.error(f"{args.peers} is not a folder")
    report = side_by_side(args.peers, args)
    report["parameters"] = {
        "rounds": args.rounds, "messages": args.messages, "rate": args.rate,
        "rate_seconds": args.rate_seconds, "processes": args.processes, "threads": args.threads,
        "wapipe_settings": args.wapipe_setting,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(report))
    print(f"JSON in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

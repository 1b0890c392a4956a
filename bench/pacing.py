"""One user's burst against the pair limit: ``python -m bench.pacing``.

Posts ``--messages`` webhooks of one user (the benchmark's) in ``--over`` seconds to the real stack
(Redis, ``wapipe web``, ``wapipe worker`` with its default processes and threads) and the
benchmark's fake Graph API, with the pair limit at ``--interval-ms`` and ``--burst`` (Meta's and
wapipe's defaults: 6 s, 20), then samples every ``--every`` seconds, for ``--seconds`` or until
every message is answered: the replies received, the reply stage's retries
(``wapipe_actor_messages_total{actor="reply",outcome="retried"}``), and the CPU of the worker's
processes and of Redis; the workers' CPU with nothing to do is measured first (``--idle``).
Prints one line per sample and a JSON summary. Everything started is stopped at the end, even on
failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.baselines import SECRET
from bench.load import at_rate, requests
from bench.run import PY, Graph, cpu_seconds, http_ok, port_open, process, retried, start_worker, wapipe_env
from tests.support.redis_server import RedisServer
from tests.support.waiting import free_port, wait_for


def measure(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="wapipe-pacing-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)  # last, once everything stopped
        redis_server = RedisServer(tmp / "redis")
        redis_server.start()
        stack.callback(redis_server.kill)
        assert redis_server.process is not None
        redis_pid = redis_server.process.pid
        graph_port = free_port()
        stack.enter_context(
            process([PY, "-m", "bench.fake_graph", str(graph_port)], dict(os.environ), tmp / "graph.log")
        )
        wait_for(lambda: port_open(graph_port), timeout=20, what="fake graph")
        graph = Graph(graph_port)
        env = wapipe_env(
            redis_server.url, graph.url, tmp / "data", PORT=str(free_port()), WAPIPE_METRICS_PORT=str(free_port()),
            WAPIPE_WORKER_PROCESSES=str(args.processes), WAPIPE_WORKER_THREADS=str(args.threads),
            WAPIPE_PAIR_INTERVAL_MS=str(args.interval_ms), WAPIPE_PAIR_BURST=str(args.burst),
            WAPIPE_SEND_RATE="80",
        )  # fmt: skip
        web_url = f"http://127.0.0.1:{env['PORT']}"
        web = stack.enter_context(process([PY, "-m", "daemon", "web"], env, tmp / "web.log"))
        wait_for(lambda: http_ok(web_url + "/readyz"), timeout=20, what="wapipe web")
        worker = start_worker(stack, env, tmp, "worker")
        metrics_url = f"http://127.0.0.1:{env['WAPIPE_METRICS_PORT']}/metrics"
        time.sleep(1.0)  # the worker's boot is not part of the measure
        idle_before = cpu_seconds(worker.pid)
        time.sleep(args.idle)  # the workers with nothing to do, for comparison
        idle_percent = round(100 * (cpu_seconds(worker.pid) - idle_before) / args.idle, 2)
        cpu_before = {"workers": cpu_seconds(worker.pid), "redis": cpu_seconds(redis_pid)}
        started = time.monotonic()
        batch = requests("pace", args.messages, users=1)
        posted = asyncio.run(
            at_rate(web_url + "/webhook", batch, secret=SECRET, rate=args.messages / args.over)
        )
        accepted = sum(1 for result in posted if result.status == 200)
        rows: list[dict[str, Any]] = []
        while True:
            time.sleep(args.every)
            elapsed = time.monotonic() - started
            answered = len(graph.stats()["received"])
            row = {
                "seconds": round(elapsed, 1),
                "answered": answered,
                "retried": retried(metrics_url),
                "workers_cpu_s": round(cpu_seconds(worker.pid) - cpu_before["workers"], 2),
                "redis_cpu_s": round(cpu_seconds(redis_pid) - cpu_before["redis"], 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            done = (elapsed >= args.seconds) if args.seconds else (answered >= accepted)
            if done:
                break
        last = rows[-1]
        seconds = last["seconds"]
        summary = {
            "messages": args.messages,
            "accepted": accepted,
            "answered": last["answered"],
            "answered_twice": sum(1 for n in graph.stats()["received_all"].values() if n > 1),
            "seconds": seconds,
            "retried": last["retried"],
            "workers_cpu_s": last["workers_cpu_s"],
            "workers_cpu_percent": round(100 * last["workers_cpu_s"] / seconds, 2),
            "workers_idle_cpu_percent": idle_percent,
            "redis_cpu_percent": round(100 * last["redis_cpu_s"] / seconds, 2),
            "web_alive": web.poll() is None,
            "parameters": vars(args),
        }
        return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=500, help="messages of the one user")
    parser.add_argument("--over", type=float, default=10.0, help="seconds the messages are posted over")
    parser.add_argument("--interval-ms", type=int, default=6000, help="WAPIPE_PAIR_INTERVAL_MS")
    parser.add_argument("--burst", type=int, default=20, help="WAPIPE_PAIR_BURST")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--seconds", type=float, default=0.0, help="sample this long (0: until every message is answered)"
    )
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measured first")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

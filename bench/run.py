"""``make bench``: the real stack (Redis, wapipe web, wapipe worker) against a fake Graph API, driven
by a load generator acting as Meta, next to two baselines measured in the same run.

Prints a table and writes JSON (``bench/results/latest.json`` unless ``--out``). Every load is
bounded in count and time; everything started is stopped at the end, even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench.baselines import SECRET
from bench.load import USERS, Result, as_fast_as_possible, at_rate, requests
from tests.support.redis_server import RedisServer
from tests.support.waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
#: The processes whose CPU counts as wapipe's (the load generator's and the fake Graph API's do not).
SERVER_PROCESSES = ("web", "workers", "redis")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def summarize_ingest(results: list[Result]) -> dict[str, Any]:
    ok = [r for r in results if r.status == 200]
    span = max(r.answered_at for r in results) - min(r.sent_at for r in results)
    latencies = [r.answered_at - r.sent_at for r in ok]
    return {
        "requests": len(results),
        "accepted": len(ok),
        "per_second": round(len(ok) / span, 1),
        "ack_p50_ms": ms(percentile(latencies, 0.5)),
        "ack_p99_ms": ms(percentile(latencies, 0.99)),
    }


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    handle = log.open("wb")
    proc = subprocess.Popen(
        args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        handle.close()


def retried(metrics_url: str) -> int:
    """The reply stage's retries so far (a message waiting for a rate-limit slot or for the user's
    message before it comes back as one), from the worker's metrics."""
    from tests.pipeline_helpers import samples

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        found = samples(response.read().decode())
    return int(found.get(("wapipe_actor_messages_total", (("actor", "reply"), ("outcome", "retried"))), 0))


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def port_open(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


class Graph:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def set_delay(self, ms: float) -> None:
        """Every later ``/messages`` answer waits ``ms`` milliseconds."""
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/delay?ms={ms:g}", method="PUT"), timeout=10
        ).read()

    def clear(self) -> None:
        urllib.request.urlopen(
            urllib.request.Request(self.url + "/stats", method="DELETE"), timeout=10
        ).read()

    def wait_received(self, ids: set[str], timeout: float) -> dict[str, float]:
        def done() -> dict[str, float] | None:
            received = self.stats()["received"]
            return received if ids <= received.keys() else None

        return wait_for(done, timeout=timeout, interval=0.2, what=f"{len(ids)} replies")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for proc in family:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class CPUShare:
    """CPU milliseconds per message spent by each process of the run (where the 2 cores go)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.before["load_generator"] = time.process_time()

    def per_message(self, messages: int) -> dict[str, float]:
        after = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        after["load_generator"] = time.process_time()
        return {name: round((after[name] - self.before[name]) * 1000 / messages, 2) for name in after}


class PeakRSS:
    """Samples the resident memory of process trees every 200 ms; keeps the peak per name."""

    def __init__(self) -> None:
        self.roots: dict[str, int] = {}
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        self.roots[name] = pid

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name, pid in list(self.roots.items()):
                try:
                    root = psutil.Process(pid)
                    total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                except psutil.Error:
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0), total)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {name: round(peak / 2**20, 1) for name, peak in self.peaks.items()}


def key_family(key: str) -> str:
    """A key's layout without its ids: ``wapipe:reply:…``, ``wapipe:seen:msg:…``, ``dramatiq:wapipe.msgs``."""
    if not key.startswith("wapipe:"):
        return key
    named = [part if part.isalpha() and part.islower() else "…" for part in key.split(":")]
    return ":".join(part for i, part in enumerate(named) if part != "…" or named[i - 1] != "…")


def retention_seconds(env: dict[str, str]) -> tuple[dict[str, int], int]:
    """How long wapipe keeps each key layout a handled message leaves, with ``env``'s settings, and
    the message dedup window."""
    from daemon.config import Settings

    settings = Settings.from_env(env)
    window = settings.message_dedup_ttl_seconds + 86_400  # records.EXTRA_SECONDS
    traced = settings.trace_retention_hours * 3600
    return {
        "wapipe:rec:…": window,
        # The default handler keeps no turns: the index keeps messages as long as their sent ids.
        "wapipe:conv:…:messages": max(traced, settings.status_retention_days * 86_400),
        "wapipe:journey:…": traced,
        "wapipe:outbound:…": traced,
        "wapipe:reply:…": traced,
        "wapipe:status:…": settings.status_retention_days * 86_400,
        "wapipe:seen:status:…": settings.status_dedup_ttl_seconds,
    }, settings.message_dedup_ttl_seconds


class RedisFootprint:
    """What Redis keeps for the messages handled after it was made: bytes (``used_memory``) and keys,
    in all and by key layout (``MEMORY USAGE`` summed over every key); and, each layout weighed by
    how long it is kept (``retention``, s), what a message costs on average over the dedup window
    (``window``, s), which is what Redis holds per message/s sustained divided by the window."""

    def __init__(self, client: Any, retention: dict[str, int], window: int) -> None:
        self.client = client
        self.retention, self.window = retention, window
        self.before = int(client.info("memory")["used_memory"])
        self.families_before = self.families()

    def families(self) -> dict[str, tuple[int, int]]:
        sizes: dict[str, list[int]] = {}
        batch: list[str] = []

        def flush() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key in batch:
                pipe.memory_usage(key, samples=0)
            for key, used in zip(batch, pipe.execute(), strict=True):
                entry = sizes.setdefault(key_family(key), [0, 0])
                entry[0] += 1
                entry[1] += int(used or 0)
            batch.clear()

        for raw in self.client.scan_iter(count=1000):
            batch.append(raw.decode() if isinstance(raw, bytes) else raw)
            if len(batch) >= 1000:
                flush()
        flush()
        return {family: (count, used) for family, (count, used) in sizes.items()}

    def per_message(self, messages: int) -> dict[str, Any]:
        used = int(self.client.info("memory")["used_memory"])
        after = self.families()
        by_family = {}
        for family in sorted(set(after) | set(self.families_before)):
            count, size = after.get(family, (0, 0))
            count0, size0 = self.families_before.get(family, (0, 0))
            if (count - count0) or (size - size0):
                by_family[family] = {
                    "keys_per_message": round((count - count0) / messages, 2),
                    "bytes_per_message": round((size - size0) / messages),
                }
        for family, entry in by_family.items():
            entry["kept_seconds"] = self.retention.get(family, self.window)
        # Redis's steady size per message/s sustained: each layout's bytes for as long as it is kept.
        sustained = sum(entry["bytes_per_message"] * entry["kept_seconds"] for entry in by_family.values())
        return {
            "messages": messages,
            "bytes_per_message": round((used - self.before) / messages),
            "bytes_per_message_over_window": round(sustained / self.window),
            "window_seconds": self.window,
            "mb_per_message_per_second_sustained": round(sustained / 1e6),
            "keys_per_message": round(sum(f["keys_per_message"] for f in by_family.values()), 2),
            "by_key_layout": by_family,
        }


def commands_per_message(client: Any, messages: int) -> dict[str, dict[str, float]]:
    """Redis's own count of each command since its statistics were last reset (``CONFIG
    RESETSTAT``), and the server time it spent in them (µs), per message, busiest first."""
    found = {}
    for name, stats in client.info("commandstats").items():
        command = name.removeprefix("cmdstat_")
        found[command] = {
            "calls": round(int(stats["calls"]) / messages, 2),
            "server_us": round(float(stats["usec"]) / messages, 1),
        }
    return dict(sorted(found.items(), key=lambda item: -item[1]["server_us"]))


def drained(client: Any) -> bool:
    """No pipeline message is waiting or running (the queues' message hashes are empty)."""
    return all(
        client.hlen(key) == 0 for key in client.scan_iter(match="dramatiq:*.msgs") if b".XQ" not in key
    )


def lone_after_idle(url: str, args: argparse.Namespace, prefix: str) -> list[Result]:
    """``args.idle`` webhooks posted one at a time, each after ``args.idle_gap`` s of silence."""
    results: list[Result] = []
    for n in range(args.idle):
        time.sleep(args.idle_gap)  # the idle period is what this measures
        results += asyncio.run(
            as_fast_as_possible(url, requests(f"{prefix}{n}", 1, args.users), secret=SECRET)
        )
    return results


def wapipe_env(redis_url: str, graph_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env.update(
        REDIS_URL=redis_url,
        WHATSAPP_APP_SECRET=SECRET,
        WHATSAPP_VERIFY_TOKEN="bench",
        WHATSAPP_ACCESS_TOKEN="bench-token",
        WHATSAPP_GRAPH_URL=graph_url,
        WAPIPE_DATA_DIR=str(data_dir),
        WAPIPE_HOST="127.0.0.1",
        WAPIPE_LOG_LEVEL="WARNING",
        WAPIPE_SEND_RATE="0",
        WAPIPE_PAIR_INTERVAL_MS="0",
        WAPIPE_MAX_QUEUE_DEPTH="1000000",
        WAPIPE_SHUTDOWN_TIMEOUT_SECONDS="10",
    )
    env.update(extra)
    return env


def start_worker(stack: ExitStack, env: dict[str, str], tmp: Path, name: str) -> subprocess.Popen[bytes]:
    """Start ``wapipe worker``; ready when its metrics show every thread of every process booted."""
    worker = stack.enter_context(process([PY, "-m", "daemon", "worker"], env, tmp / f"{name}.log"))
    threads = int(env["WAPIPE_WORKER_PROCESSES"]) * int(env["WAPIPE_WORKER_THREADS"]) + int(
        env.get("WAPIPE_MEDIA_WORKER_THREADS", "8")
    )
    url = f"http://127.0.0.1:{env['WAPIPE_METRICS_PORT']}/metrics"

    def booted() -> bool:
        if worker.poll() is not None:
            raise RuntimeError(f"{name} exited: see {tmp / (name + '.log')}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return f"wapipe_worker_threads {threads:.1f}" in response.read().decode()
        except OSError:
            return False

    wait_for(booted, timeout=60, what=name)
    return worker


def measure(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="wapipe-bench-"))
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "parameters": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
    }
    rss = PeakRSS()
    with ExitStack() as stack:
        redis_server = RedisServer(tmp / "redis")
        redis_server.start()
        stack.callback(redis_server.kill)
        client = redis_server.client()
        graph_port = free_port()
        fake_graph = stack.enter_context(
            process([PY, "-m", "bench.fake_graph", str(graph_port)], dict(os.environ), tmp / "graph.log")
        )
        wait_for(lambda: port_open(graph_port), timeout=20, what="fake graph")
        graph = Graph(graph_port)

        # 1. Ingest: the two baselines and wapipe web alone, same load.
        ingest: dict[str, Any] = {}
        for mode in ("bare", "hmac_lpush"):
            port = free_port()
            with process(
                [PY, "-m", "bench.baselines", mode, str(port), redis_server.url],
                dict(os.environ),
                tmp / f"{mode}.log",
            ):
                wait_for(lambda port=port: port_open(port), timeout=20, what=mode)
                batch = requests(f"base-{mode}", args.ingest, args.users)
                ingest[mode] = summarize_ingest(
                    asyncio.run(as_fast_as_possible(f"http://127.0.0.1:{port}/webhook", batch, secret=SECRET))
                )
                if mode == "bare":
                    bare_idle = lone_after_idle(f"http://127.0.0.1:{port}/webhook", args, "bare-idle")
        client.flushall()
        env = wapipe_env(
            redis_server.url, graph.url, tmp / "data", PORT=str(free_port()), WAPIPE_METRICS_PORT=str(free_port()),
            WAPIPE_WORKER_PROCESSES=str(args.processes), WAPIPE_WORKER_THREADS=str(args.threads),
            **dict(setting.split("=", 1) for setting in args.setting),
        )  # fmt: skip
        web_url = f"http://127.0.0.1:{env['PORT']}"
        web = stack.enter_context(process([PY, "-m", "daemon", "web"], env, tmp / "web.log"))
        rss.watch("web", web.pid)
        wait_for(lambda: http_ok(web_url + "/readyz"), timeout=20, what="wapipe web")
        asyncio.run(
            as_fast_as_possible(web_url + "/webhook", requests("warm", 200, args.users), secret=SECRET)
        )
        client.flushall()
        before = int(client.info("memory")["used_memory"])
        results = asyncio.run(
            as_fast_as_possible(
                web_url + "/webhook", requests("ingest", args.ingest, args.users), secret=SECRET
            )
        )
        ingest["wapipe"] = summarize_ingest(results)
        queued = int(client.llen("dramatiq:wapipe"))
        ingest["redis_bytes_per_queued_message"] = round(
            (int(client.info("memory")["used_memory"]) - before) / max(queued, 1)
        )
        ingest["wapipe_vs_hmac_lpush"] = round(
            ingest["wapipe"]["per_second"] / ingest["hmac_lpush"]["per_second"], 2
        )
        ingest["wapipe_vs_bare"] = round(ingest["wapipe"]["per_second"] / ingest["bare"]["per_second"], 2)
        report["ingest"] = ingest
        client.flushall()

        # 2. End to end: as fast as possible, then a fixed rate, then a lone message after idle.
        worker = start_worker(stack, env, tmp, "worker")
        rss.watch("worker", worker.pid)
        warm = requests("warm2", 100, args.users)
        asyncio.run(as_fast_as_possible(web_url + "/webhook", warm, secret=SECRET))
        graph.wait_received({i for i, _ in warm}, timeout=60)
        graph.clear()
        batch = requests("e2e", args.messages, args.users)
        wait_for(lambda: drained(client), timeout=30, what="the warm-up drained")
        footprint = RedisFootprint(client, *retention_seconds(env))
        assert redis_server.process is not None
        cpu = CPUShare(
            {
                "web": web.pid,
                "workers": worker.pid,
                "redis": redis_server.process.pid,
                "fake_graph": fake_graph.pid,
            }
        )
        client.config_resetstat()
        metrics_url = f"http://127.0.0.1:{env['WAPIPE_METRICS_PORT']}/metrics"
        retries_before = retried(metrics_url)
        started = time.time()
        posted = asyncio.run(as_fast_as_possible(web_url + "/webhook", batch, secret=SECRET))
        accepted = {r.message_id for r in posted if r.status == 200}
        received = graph.wait_received(accepted, timeout=args.deadline)
        spent = cpu.per_message(len(accepted))
        wait_for(lambda: drained(client), timeout=30, what="the end-to-end run drained")
        report["redis_commands_per_message"] = commands_per_message(client, len(accepted))
        report["redis_per_handled_message"] = footprint.per_message(len(accepted))
        while_processing = summarize_ingest(posted)
        end_to_end = {
            "messages": len(accepted),
            "replied_per_second": round(len(accepted) / (max(received[i] for i in accepted) - started), 1),
            "ingest_per_second_with_workers": while_processing["per_second"],
            "ack_p99_ms_with_workers": while_processing["ack_p99_ms"],
            "cpu_ms_per_message": spent,
            # wapipe's own processes only: not the load generator's, not the fake Graph API's.
            "server_cpu_ms_per_message": round(sum(spent[name] for name in SERVER_PROCESSES), 2),
            "reply_retries_per_message": round((retried(metrics_url) - retries_before) / len(accepted), 2),
        }
        graph.clear()
        steady = requests("steady", int(args.rate * args.rate_seconds), args.users)
        posted = asyncio.run(at_rate(web_url + "/webhook", steady, secret=SECRET, rate=args.rate))
        received = graph.wait_received({r.message_id for r in posted if r.status == 200}, timeout=60)
        latencies = [received[r.message_id] - r.sent_at for r in posted if r.status == 200]
        end_to_end[f"latency_at_{args.rate:g}_per_s"] = {
            "p50_ms": ms(percentile(latencies, 0.5)),
            "p95_ms": ms(percentile(latencies, 0.95)),
            "p99_ms": ms(percentile(latencies, 0.99)),
        }
        idle = [
            graph.wait_received({result.message_id}, timeout=30)[result.message_id] - result.sent_at
            for result in lone_after_idle(web_url + "/webhook", args, "idle")
        ]
        bare_acks = [result.answered_at - result.sent_at for result in bare_idle]
        end_to_end["latency_after_idle"] = {
            "p50_ms": ms(percentile(idle, 0.5)),
            "p95_ms": ms(percentile(idle, 0.95)),
            "p99_ms": ms(percentile(idle, 0.99)),
            "max_ms": ms(max(idle)),
            # The same lone request to the bare aiohttp handler: what waking this machine up costs.
            "bare_handler_ack_p50_ms": ms(percentile(bare_acks, 0.5)),
        }
        report["end_to_end"] = end_to_end

        # 3. Backpressure: a burst of 10x the queue limit, refused with 503 and re-sent as Meta does.
        report["overload"] = overload(args, env, tmp, stack, graph, client, rss)

        # 4. The shared per-number limiter: observed send rate against WAPIPE_SEND_RATE.
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        limited_env = {**env, "WAPIPE_SEND_RATE": str(args.limit), "WAPIPE_METRICS_PORT": str(free_port())}
        start_worker(stack, limited_env, tmp, "worker-limited")
        graph.clear()
        batch = requests("limited", args.limit * 4, args.users)
        asyncio.run(as_fast_as_possible(web_url + "/webhook", batch, secret=SECRET))
        graph.wait_received({i for i, _ in batch}, timeout=60)
        sends = sorted(graph.stats()["sends"])
        busiest = max(sum(1 for t in sends if first <= t < first + 1.0) for first in sends)
        report["limiter"] = {
            "limit_per_second": args.limit,
            "sends": len(sends),
            "observed_per_second": round((len(sends) - 1) / (sends[-1] - sends[0]), 1),
            "busiest_1s_window": busiest,
        }
    report["peak_rss_mb"] = rss.stop()
    return report


def overload(
    args: argparse.Namespace,
    env: dict[str, str],
    tmp: Path,
    stack: ExitStack,
    graph: Graph,
    client: Any,
    rss: PeakRSS,
) -> dict[str, Any]:
    """A second web with a queue limit of ``args.overload_limit`` takes a burst of 10x that.

    The fake Graph API answers after ``args.overload_graph_ms`` here, as a real one does, which
    holds the workers to about threads / (2 x that) messages/s: the burst outruns them however
    fast they are, so the limit is really reached.
    """
    limited = {**env, "PORT": str(free_port()), "WAPIPE_MAX_QUEUE_DEPTH": str(args.overload_limit)}
    url = f"http://127.0.0.1:{limited['PORT']}"
    web = stack.enter_context(process([PY, "-m", "daemon", "web"], limited, tmp / "web-overload.log"))
    rss.watch("web_overload", web.pid)
    wait_for(lambda: http_ok(url + "/readyz"), timeout=20, what="web with a queue limit")
    graph.clear()
    graph.set_delay(args.overload_graph_ms)
    try:
        return _overload_burst(args, url, graph, client)
    finally:
        graph.set_delay(0)


def _overload_burst(args: argparse.Namespace, url: str, graph: Graph, client: Any) -> dict[str, Any]:
    burst = requests("burst", args.overload_limit * 10, args.users)
    bodies = dict(burst)
    peak_redis = 0

    def sample_redis() -> None:
        nonlocal peak_redis
        peak_redis = max(peak_redis, int(client.info("memory")["used_memory"]))

    started = time.time()
    results = asyncio.run(as_fast_as_possible(url + "/webhook", burst, secret=SECRET))
    sample_redis()
    shed = [r for r in results if r.status == 503]
    pending = [r.message_id for r in results if r.status != 200]
    rounds = 0
    deadline = time.monotonic() + args.deadline
    while pending and time.monotonic() < deadline:  # Meta re-sends what was not acknowledged
        rounds += 1
        time.sleep(0.2)  # pacing between Meta's retries
        retry = asyncio.run(
            as_fast_as_possible(url + "/webhook", [(i, bodies[i]) for i in pending], secret=SECRET)
        )
        sample_redis()
        pending = [r.message_id for r in retry if r.status != 200]
    received = graph.wait_received(set(bodies), timeout=args.deadline)
    counts = Counter(graph.stats()["received_all"])
    return {
        "queue_limit": args.overload_limit,
        "graph_delay_ms": args.overload_graph_ms,
        "burst": len(burst),
        "refused_503_first_pass": len(shed),
        "resend_rounds": rounds,
        "all_answered": len(received) == len(bodies) and not pending,
        "answered_twice": sum(1 for i in bodies if counts.get(i, 0) > 1),
        "seconds_to_drain": round(max(received[i] for i in bodies) - started, 1),
        "peak_redis_mb": round(peak_redis / 2**20, 1),
    }


def table(report: dict[str, Any]) -> str:
    ingest, e2e, limiter = report["ingest"], report["end_to_end"], report["limiter"]
    rate_key = next(key for key in e2e if key.startswith("latency_at_"))
    rows = [
        ("ingest while workers process", f"{e2e['ingest_per_second_with_workers']:.0f}/s", f"ack p99 {e2e['ack_p99_ms_with_workers']} ms, during the end-to-end run"),
        ("ingest: bare aiohttp", f"{ingest['bare']['per_second']:.0f}/s", f"p50 {ingest['bare']['ack_p50_ms']} ms, p99 {ingest['bare']['ack_p99_ms']} ms"),
        ("ingest: aiohttp+HMAC+LPUSH", f"{ingest['hmac_lpush']['per_second']:.0f}/s", f"p50 {ingest['hmac_lpush']['ack_p50_ms']} ms, p99 {ingest['hmac_lpush']['ack_p99_ms']} ms"),
        ("ingest: wapipe web, workers idle", f"{ingest['wapipe']['per_second']:.0f}/s", f"p50 {ingest['wapipe']['ack_p50_ms']} ms, p99 {ingest['wapipe']['ack_p99_ms']} ms; {ingest['wapipe_vs_hmac_lpush']}x the HMAC+LPUSH baseline"),
        ("Redis per queued webhook", f"{ingest['redis_bytes_per_queued_message']} B", ""),
        ("Redis per handled message", f"{report['redis_per_handled_message']['bytes_per_message']} B",
         f"{report['redis_per_handled_message']['bytes_per_message_over_window']} B over the dedup window (each "
         f"record for as long as it is kept); {report['redis_per_handled_message']['mb_per_message_per_second_sustained']}"
         " MB of Redis per message/s sustained"),
        ("end to end (replies/s)", f"{e2e['replied_per_second']:.0f}/s", f"{e2e['messages']} text messages, ingest {e2e['ingest_per_second_with_workers']:.0f}/s meanwhile"),
        ("CPU per replied message", f"{e2e['server_cpu_ms_per_message']:.1f} ms", "web, workers, Redis: " + ", ".join(f"{k} {v}" for k, v in e2e["cpu_ms_per_message"].items() if k in SERVER_PROCESSES) + "; not counted: " + ", ".join(f"{k} {v}" for k, v in e2e["cpu_ms_per_message"].items() if k not in SERVER_PROCESSES)),
        (f"reply latency {rate_key[11:]}", f"p50 {e2e[rate_key]['p50_ms']} ms", f"p95 {e2e[rate_key]['p95_ms']} ms, p99 {e2e[rate_key]['p99_ms']} ms"),
        ("reply latency after idle", f"p50 {e2e['latency_after_idle']['p50_ms']} ms", f"max {e2e['latency_after_idle']['max_ms']} ms; the bare aiohttp handler's ack after the same idle: p50 {e2e['latency_after_idle']['bare_handler_ack_p50_ms']} ms"),
        ("overload 10x the queue limit", f"{report['overload']['refused_503_first_pass']} x 503",
         f"{report['overload']['burst']} posted at a limit of {report['overload']['queue_limit']} (Graph answers in "
         f"{report['overload']['graph_delay_ms']:g} ms); all answered once: "
         f"{report['overload']['all_answered'] and not report['overload']['answered_twice']}, drained in "
         f"{report['overload']['seconds_to_drain']} s, Redis peak {report['overload']['peak_redis_mb']} MB"),
        ("limiter", f"{limiter['observed_per_second']}/s", f"limit {limiter['limit_per_second']}/s, busiest 1 s window {limiter['busiest_1s_window']}"),
        ("peak RSS", ", ".join(f"{k} {v} MB" for k, v in report["peak_rss_mb"].items()), ""),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:<14} {note}" for name, value, note in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=3000, help="messages in the end-to-end run")
    parser.add_argument("--ingest", type=int, default=3000, help="webhooks per ingest run")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="fixed rate for the latency run (per second)"
    )
    parser.add_argument("--rate-seconds", type=float, default=10.0, help="length of the fixed-rate run")
    parser.add_argument("--idle", type=int, default=8, help="lone messages after idle")
    parser.add_argument("--idle-gap", type=float, default=1.5, help="seconds of idle before each")
    parser.add_argument("--limit", type=int, default=50, help="WAPIPE_SEND_RATE for the limiter run")
    parser.add_argument(
        "--overload-limit", type=int, default=300, help="queue limit of the overload run (x10 posted)"
    )
    parser.add_argument(
        "--overload-graph-ms", type=float, default=20.0, help="Graph API answer delay in the overload run"
    )
    parser.add_argument(
        "--users", type=int, default=USERS, help="users the messages come from, in turn (1: one user's flood)"
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a wapipe setting for the run's web and worker (repeatable), e.g. WAPIPE_USER_ORDER=false",
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument(
        "--deadline", type=float, default=90.0, help="longest wait for the end-to-end replies"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = measure(args)
    report["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(report))
    print(f"\n{report['seconds']} s; JSON in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Helpers for tests that drive a real web + worker pair."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from daemon.store import records
from tests.conftest import APP_SECRET
from tests.support.meta import meta_bytes, signed

QUEUE_HASHES = (
    "dramatiq:wapipe.msgs",
    "dramatiq:wapipe.DQ.msgs",
    "dramatiq:wapipe_media.msgs",
    "dramatiq:wapipe_media.DQ.msgs",
)


def post_webhook(url: str, obj: Any, secret: str = APP_SECRET, timeout: float = 10) -> int:
    """POST ``obj`` as Meta would (exact bytes, signed); return the status, or 0 when no answer came."""
    body = meta_bytes(obj)
    request = urllib.request.Request(url + "/webhook", data=body, headers=signed(body, secret), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return 0  # refused or timed out: indeterminate, Meta would deliver it again


def drained(client: redis.Redis) -> bool:
    """No message of the pipeline is ready, delayed or in flight."""
    return all(client.hlen(key) == 0 for key in QUEUE_HASHES)


def record_of(client: redis.Redis, phone_number_id: str, subject: str) -> records.Record | None:
    """The message record of ``subject``, wherever its time put it (a test's search of every
    bucket; wapipe itself goes straight to the record from the message's time)."""
    field = records.digest(phone_number_id, subject)
    for key in client.scan_iter(match="wapipe:rec:*:*", count=1000):
        found = records.parsed(client.hget(key, field))
        if found is not None:
            return found
    return None


def replies_to(client: redis.Redis, phone_number_id: str, subject: str) -> int | None:
    """How many messages answered ``subject`` once it is done (its record's handled count), else None."""
    record = record_of(client, phone_number_id, subject)
    return None if record is None else record.handled


def dead_letters(client: redis.Redis, queue: str = "wapipe") -> list[dict[str, Any]]:
    """Dead-lettered messages with the reason recorded beside each."""
    result = []
    for redis_id in client.zrange(f"dramatiq:{queue}.XQ", 0, -1):
        message = json.loads(client.hget(f"dramatiq:{queue}.XQ.msgs", redis_id))
        reason = client.hget("wapipe:dlq:reasons", redis_id)
        result.append({"message": message, "record": json.loads(reason) if reason else None})
    return result


def rewrite_ids(obj: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A copy whose message and status ids carry ``prefix`` (so samples do not deduplicate each
    other), and whose messages are dated by the test's clock (the samples' fixed dates are long
    past: their 24-hour windows have closed)."""
    obj = copy.deepcopy(obj)
    now = str(int(time.time()))
    for entry in obj.get("entry", []):
        for change in entry.get("changes", []):
            value = change.get("value", {})
            for key in ("messages", "statuses"):
                for item in value.get(key, []):
                    if "id" in item:
                        item["id"] = f"{prefix}:{item['id']}"
                    if key == "messages" and "timestamp" in item:
                        item["timestamp"] = now
    return obj


def listed_targets(data_dir: Path) -> list[str]:
    """The worker addresses listed for Prometheus's file-based service discovery."""
    found: list[str] = []
    for path in sorted((data_dir / "metrics" / "targets").glob("*.json")):
        for group in json.loads(path.read_text()):
            found.extend(group["targets"])
    return found


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def samples(text: str) -> Samples:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def worker_metric(env: dict[str, str], name: str, **labels: str) -> float:
    """One sample of the worker started with ``env`` (its own WAPIPE_METRICS_PORT)."""
    return value(samples(scrape(f"http://127.0.0.1:{env['WAPIPE_METRICS_PORT']}/metrics")), name, **labels)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``wapipe ARGS`` with ``env``; its output, whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dlq_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``wapipe dlq ARGS`` with ``env``; its output, whatever its exit code."""
    return cli(env, "dlq", *args)

"""Metrics, dashboard, alert rules: live scrapes checked by value and by promtool, and a real Prometheus."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.pipeline_helpers import drained, listed_targets, post_webhook, samples, scrape, value
from tests.support.fake_graph import FakeGraph
from tests.support.meta import meta_bytes, text_envelope
from tests.support.procs import Proc
from tests.support.waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
PROM = GRAFANA / "prometheus"


def tool(name: str) -> str:
    """The path of a Prometheus tool; a skip locally, a failure in CI, when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing: install Debian's `prometheus` package (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def dashboard_exprs() -> list[str]:
    board = json.loads((GRAFANA / "dashboards" / "wapipe.json").read_text(encoding="utf-8"))
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text(encoding="utf-8"))
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


WEB_FAMILIES = {
    "wapipe_webhook_requests_total",
    "wapipe_webhook_request_duration_seconds",
    "wapipe_queue_messages",
    "wapipe_queue_oldest_message_age_seconds",
}
WORKER_FAMILIES = {
    "wapipe_worker_threads",
    "wapipe_worker_busy_threads",
    "wapipe_worker_restarts_total",
    "wapipe_actor_messages_total",
    "wapipe_actor_duration_seconds",
    "wapipe_graph_requests_total",
    "wapipe_graph_request_duration_seconds",
    "wapipe_reply_latency_seconds",
    "wapipe_inbound_messages_total",
    "wapipe_statuses_total",
    "wapipe_duplicates_total",
    "wapipe_media_downloads_total",
    "wapipe_media_bytes_total",
    "wapipe_rate_limit_waits_total",
    "wapipe_unhandled_fields_total",
    "wapipe_webhook_error_items_total",
    "wapipe_dropped_items_total",
    "wapipe_ordering_waits_total",
    "wapipe_ordering_dropped_total",
    "wapipe_outside_window_total",
    "wapipe_active_conversations",
}


def names_in(text: str) -> set[str]:
    """Every sample name of an exposition, plus the family names of histograms."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            names.add(name)
            names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


@pytest.fixture
def metered(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> dict[str, Any]:
    """A pipeline after 10 text webhooks (one sent twice) and 2 forged ones."""
    stack = pipeline()
    for n in range(10):
        assert post_webhook(stack["url"], text_envelope(f"wamid.M{n}", f"m{n}")) == 200
    assert post_webhook(stack["url"], text_envelope("wamid.M0", "m0")) == 200  # a duplicate
    for _ in range(2):
        body = meta_bytes(text_envelope("wamid.FORGED"))
        request = urllib.request.Request(stack["url"] + "/webhook", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=5)
    fake_graph.wait_sends(10)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    stack["web_metrics"] = f"{stack['url']}/metrics"
    stack["worker_metrics"] = f"http://127.0.0.1:{stack['env']['WAPIPE_METRICS_PORT']}/metrics"
    return stack


def test_live_scrapes_have_every_family_with_the_right_values(metered: dict[str, Any]) -> None:
    """After a run: accepted = webhooks sent, queues back to 0, each stage counted, every label set present."""
    web_text = scrape(metered["web_metrics"])
    web = samples(web_text)
    assert names_in(web_text) >= WEB_FAMILIES
    assert value(web, "wapipe_webhook_requests_total", outcome="accepted") == 11
    assert value(web, "wapipe_webhook_requests_total", outcome="bad_signature") == 2
    assert value(web, "wapipe_webhook_requests_total", outcome="overloaded") == 0
    assert value(web, "wapipe_webhook_request_duration_seconds_count") == 13
    for state in ("ready", "delayed", "in_flight", "dead"):
        assert value(web, "wapipe_queue_messages", queue="wapipe", state=state) == 0
    assert value(web, "wapipe_queue_oldest_message_age_seconds", queue="wapipe") == 0

    def worker_done() -> dict[Any, float] | None:
        found = samples(scrape(metered["worker_metrics"]))
        return (
            found
            if value(found, "wapipe_actor_messages_total", actor="reply", outcome="succeeded") == 10
            else None
        )

    worker = wait_for(worker_done, timeout=10, what="worker counters")
    assert names_in(scrape(metered["worker_metrics"])) >= WORKER_FAMILIES
    assert value(worker, "wapipe_worker_threads") == 6  # 4 + 2 in the media process
    assert value(worker, "wapipe_worker_busy_threads", actor="reply") == 0
    assert value(worker, "wapipe_actor_messages_total", actor="verify", outcome="succeeded") == 11
    assert value(worker, "wapipe_actor_messages_total", actor="parse", outcome="succeeded") == 11
    assert value(worker, "wapipe_actor_messages_total", actor="reply", outcome="dead_lettered") == 0
    # Each run counts, a message's that waited in the queue for the user's one before it too.
    retried = value(worker, "wapipe_actor_messages_total", actor="reply", outcome="retried")
    assert value(worker, "wapipe_actor_duration_seconds_count", actor="reply") == 10 + retried
    assert value(worker, "wapipe_inbound_messages_total", type="text") == 10
    assert value(worker, "wapipe_inbound_messages_total", type="unknown") == 0
    assert value(worker, "wapipe_duplicates_total", kind="message") == 1
    assert value(worker, "wapipe_graph_requests_total", endpoint="send", result="ok") == 10
    assert value(worker, "wapipe_graph_requests_total", endpoint="mark_read", result="ok") == 10
    assert value(worker, "wapipe_graph_requests_total", endpoint="send", result="auth") == 0
    assert value(worker, "wapipe_graph_request_duration_seconds_count", endpoint="send") == 10
    assert value(worker, "wapipe_reply_latency_seconds_count") == 10
    assert value(worker, "wapipe_media_downloads_total", outcome="failed") == 0
    assert value(worker, "wapipe_rate_limit_waits_total", limit="pair") == 0
    for text in (web_text, scrape(metered["worker_metrics"])):
        assert not re.search(r"wamid\.|447700900123", text), "ids must never be labels"


def test_promtool_finds_nothing_to_fix_in_either_scrape(metered: dict[str, Any]) -> None:
    """`promtool check metrics` is clean on the live web and worker expositions."""
    promtool = tool("promtool")
    for url in (metered["web_metrics"], metered["worker_metrics"]):
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=scrape(url),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "", result.stdout
        assert result.stderr.strip() == "", result.stderr


def test_two_workers_on_one_machine_keep_their_own_metrics(
    pipeline: Callable[..., dict[str, Any]], start_proc: Callable[..., Proc]
) -> None:
    """Two `wapipe worker`s with one data dir and one WAPIPE_METRICS_PORT (as `honcho start -c
    worker=2` runs them): the second serves on the next free port, both are listed for Prometheus's
    file_sd, each serves its own sum; stopping one removes its files and leaves the other intact."""
    stack = pipeline()
    other = start_proc("worker-b", ["worker"], {**stack["env"], "WAPIPE_WORKER_THREADS": "3"})
    wait_for(lambda: "worker_ready" in other.output(), timeout=30, what="second worker")
    data_dir = Path(stack["env"]["WAPIPE_DATA_DIR"])
    targets = wait_for(
        lambda: len(listed_targets(data_dir)) == 2 and listed_targets(data_dir), what="2 targets"
    )
    assert f"127.0.0.1:{stack['env']['WAPIPE_METRICS_PORT']}" in targets
    threads = {
        value(samples(scrape(f"http://{target}/metrics")), "wapipe_worker_threads") for target in targets
    }
    assert threads == {5, 6}
    metrics_root = data_dir / "metrics"
    assert len(list(metrics_root.glob("worker-*"))) == 2
    assert other.stop() == 0
    assert len(list(metrics_root.glob("worker-*"))) == 1
    [remaining] = listed_targets(data_dir)
    assert value(samples(scrape(f"http://{remaining}/metrics")), "wapipe_worker_threads") == 6


def test_the_dashboard_is_generated_and_well_formed() -> None:
    """Committed JSON = grafana/build_dashboard.py's output; stable uid, datasource variable, described panels."""
    committed = json.loads((GRAFANA / "dashboards" / "wapipe.json").read_text(encoding="utf-8"))
    sys.path.insert(0, str(GRAFANA))
    try:
        import build_dashboard
    finally:
        sys.path.remove(str(GRAFANA))
    assert committed == json.loads(json.dumps(build_dashboard.dashboard()))
    assert committed["uid"] == "wapipe-pipeline"
    [variable] = committed["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [panel["id"] for panel in committed["panels"]]
    assert len(ids) == len(set(ids))
    text = json.dumps(committed)
    assert "$$hashKey" not in text
    for panel in committed["panels"]:
        assert panel["description"].strip(), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    titles = " ".join(panel["title"].lower() for panel in committed["panels"])
    for topic in ("ingress", "rejections", "queue depth", "busy vs capacity", "actor latency", "reply latency",
                  "graph api errors", "dead letters", "media"):  # fmt: skip
        assert topic in titles, topic


def test_grafana_provisioning_and_scrape_config_are_well_formed() -> None:
    """Provisioning files declare a Prometheus datasource and a file dashboard provider; scrape config has both jobs."""
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["apiVersion"] == 1
    assert datasource["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "wapipe.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    assert provider["providers"][0]["options"]["path"]
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == {"wapipe-web", "wapipe-worker"}
    assert config["rule_files"] == ["alerts.yml"]


def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    """`promtool check rules` and `promtool test rules` pass; every required alert exists."""
    promtool = tool("promtool")
    for args in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ):
        result = subprocess.run(
            [promtool, *args], cwd=PROM, capture_output=True, text=True, check=False, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "WapipeBacklogGrowing",
        "WapipeOldestMessageTooOld",
        "WapipeDeadLettersGrowing",
        "WapipeGraphErrorRatioHigh",
        "WapipeNoWorkerUp",
        "WapipePipelineStalled",
        "WapipeWorkerProcessRestarted",
    } <= names


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.mark.timeout(300)
def test_a_real_prometheus_scrapes_both_and_every_expression_is_valid(
    metered: dict[str, Any], tmp_path: Path
) -> None:
    """Prometheus with the shipped config (the web's port and the workers' target folder adjusted)
    sees up == 1 for web and for the worker it found through the file the worker wrote; every
    dashboard and alert expression evaluates, and names only metrics that exist."""
    prometheus = tool("prometheus")
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    web_target = metered["web_metrics"].split("//")[1].split("/")[0]
    targets = Path(metered["env"]["WAPIPE_DATA_DIR"]) / "metrics" / "targets"
    [web_job, worker_job] = config["scrape_configs"]
    web_job["static_configs"][0]["targets"] = [web_target]
    worker_job["file_sd_configs"][0]["files"] = [str(targets / "*.json")]  # as the worker wrote it
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def both_up() -> bool:
            try:
                result = query(base, "up")["data"]["result"]
            except OSError:
                return False
            return {r["metric"]["job"] for r in result if r["value"][1] == "1"} == {
                "wapipe-web",
                "wapipe-worker",
            }

        wait_for(both_up, timeout=60, interval=0.5, what="up == 1 for both jobs")
        time.sleep(3)  # the check needs a few scrapes for rate() windows; this is the thing under test
        exposed = (
            names_in(scrape(metered["web_metrics"])) | names_in(scrape(metered["worker_metrics"])) | {"up"}
        )
        for expr in dashboard_exprs() + rule_exprs():
            evaluated = expr.replace("$__rate_interval", "1m")
            answer = query(base, evaluated)
            assert answer["status"] == "success", (expr, answer)
            for name in re.findall(r"\b(wapipe_[a-z_]+)", expr):
                assert name in exposed or re.sub(r"_(bucket|sum|count)$", "", name) in exposed, (name, expr)
        # The queue and outcome expressions return data, not only valid empty results.
        assert query(base, "max by (queue, state) (wapipe_queue_messages)")["data"]["result"]
        assert query(base, "sum(wapipe_worker_threads)")["data"]["result"][0]["value"][1] == "6"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

"""The side-by-side comparison of `make bench PEERS=DIR`: medians of the rounds, each figure of
wapipe as a ratio to the best peer's (higher is better for throughput, lower for latency and CPU),
and every lost or doubled message counted against its system."""

from __future__ import annotations

from typing import Any

from bench.peers import FIGURES, compare, table


def _run(
    ingest: float, ack: float, replies: float, cpu: float, p50: float, p99: float, **extra: int
) -> dict[str, Any]:
    return {
        "ingest_per_second": ingest, "ack_p99_ms": ack, "replies_per_second": replies,
        "cpu_ms_per_message": cpu, "reply_p50_ms": p50, "reply_p99_ms": p99,
        "refused": extra.get("refused", 0), "answered_twice": extra.get("answered_twice", 0),
    }  # fmt: skip


def test_each_figure_is_compared_with_the_best_peer_for_it() -> None:
    """The best peer is the fastest for rates and the lowest for latencies and CPU, per figure;
    medians are taken over the rounds; a refused or doubled message is counted."""
    report = compare(
        {
            "wapipe": [_run(800, 90, 900, 2.0, 5, 9), _run(1000, 110, 1100, 2.2, 7, 11)],
            "seed-node": [_run(1600, 70, 600, 2.1, 4, 12)] * 2,
            "pywa": [_run(1700, 250, 300, 3.0, 4.5, 8, answered_twice=1)] * 2,
        },
        ["unknown-peer"],
    )
    ratios = report["wapipe_vs_best_peer"]
    assert set(ratios) == set(FIGURES)
    assert ratios["ingest_per_second"] == {"best_peer": "pywa", "ratio": 0.53}
    assert ratios["ack_p99_ms"] == {"best_peer": "seed-node", "ratio": 1.43}
    assert ratios["replies_per_second"] == {"best_peer": "seed-node", "ratio": 1.67}
    assert ratios["cpu_ms_per_message"] == {"best_peer": "seed-node", "ratio": 1.0}
    assert ratios["reply_p99_ms"] == {"best_peer": "pywa", "ratio": 1.25}
    assert report["medians"]["wapipe"]["replies_per_second"] == 1000
    assert report["lost_or_doubled"] == {"wapipe": 0, "seed-node": 0, "pywa": 2}
    shown = table(report)
    [line] = [line for line in shown.splitlines() if line.startswith("replies_per_second")]
    assert line.endswith("1.67x (seed-node)")
    assert "skipped (unknown peers): unknown-peer" in shown


def test_without_peers_there_is_nothing_to_compare_with() -> None:
    """wapipe alone: its medians, and no ratios."""
    report = compare({"wapipe": [_run(800, 90, 900, 2.0, 5, 9)]})
    assert report["wapipe_vs_best_peer"] == {}
    assert "wapipe / best peer" in table(report)


def test_redis_bytes_are_reported_for_the_systems_that_keep_state_in_redis() -> None:
    """What Redis holds per handled message is a median of the rounds of each system that has a
    Redis (wapipe, the seed stack), shown as "-" for one that has none, and not given a ratio."""
    with_redis = [{**_run(800, 90, 900, 2.0, 5, 9), "redis_bytes_per_message": b} for b in (60, 80)]
    report = compare({"wapipe": with_redis, "pywa": [_run(1700, 250, 300, 3.0, 4.5, 8)]})
    assert report["medians"]["wapipe"]["redis_bytes_per_message"] == 70
    assert "redis_bytes_per_message" not in report["medians"]["pywa"]
    assert "redis_bytes_per_message" not in report["wapipe_vs_best_peer"]
    [line] = [line for line in table(report).splitlines() if line.startswith("redis_bytes")]
    assert line.split()[1:] == ["70", "-"]

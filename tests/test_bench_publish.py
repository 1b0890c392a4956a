"""`make bench-publish`: the committed results file is the source of the README's performance
table, which is generated from it, never typed by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench import publish

COMMITTED = publish.RESULTS


def _committed() -> dict[str, Any]:
    return dict(json.loads(COMMITTED.read_text(encoding="utf-8")))


def test_the_readme_table_is_the_one_the_committed_results_make(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's table between its markers equals what docs/performance.json renders: a figure
    edited by hand in either place fails here."""
    assert publish.main(["--check"]) == 0, capsys.readouterr().err
    results = _committed()
    assert results["peers"] is not None, "the committed results include the side-by-side run"
    block = publish.current_block(publish.README.read_text(encoding="utf-8"))
    ingest = results["bench"]["end_to_end"]["ingest_per_second_with_workers"]
    assert f"{ingest:,.0f}/s" in block


def _files(tmp_path: Path, peers_age_seconds: float = 0) -> tuple[Path, Path, Path, Path]:
    committed = _committed()
    bench, peers = tmp_path / "latest.json", tmp_path / "peers.json"
    bench.write_text(json.dumps(committed["bench"]), encoding="utf-8")
    peers.write_text(json.dumps(committed["peers"]), encoding="utf-8")
    when = bench.stat().st_mtime - peers_age_seconds
    os.utime(peers, (when, when))
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Title\n\nBefore.\n\n{publish.BEGIN}\nold table\n{publish.END}\n\nAfter.\n", encoding="utf-8"
    )
    return bench, peers, readme, tmp_path / "performance.json"


def test_publishing_writes_the_results_and_rewrites_only_the_table(tmp_path: Path) -> None:
    """The latest results and the side-by-side run are copied into the results file with the commit
    and date; the README around the markers is left as it was, and the table is then in step."""
    bench, peers, readme, results = _files(tmp_path)
    paths = ["--bench", str(bench), "--peers", str(peers), "--readme", str(readme), "--results", str(results)]
    assert publish.main(paths) == 0
    written = json.loads(results.read_text(encoding="utf-8"))
    assert written["bench"] == json.loads(bench.read_text(encoding="utf-8"))
    assert written["peers"] == json.loads(peers.read_text(encoding="utf-8"))
    assert written["commit"]
    assert written["published"]
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nBefore.\n\n")
    assert text.endswith("\n\nAfter.\n")
    assert "old table" not in text
    assert publish.current_block(text) == publish.render(written)
    assert publish.main(["--check", "--readme", str(readme), "--results", str(results)]) == 0
    # A figure typed over by hand is caught.
    edited = text.replace("wapipe / best peer", "wapipe / the best peer")
    readme.write_text(edited, encoding="utf-8")
    assert publish.main(["--check", "--readme", str(readme), "--results", str(results)]) == 1


def test_a_side_by_side_run_from_another_time_is_left_out(tmp_path: Path) -> None:
    """peers.json written two hours before latest.json belongs to another run: it is not published
    next to figures it was not measured with."""
    bench, peers, readme, results = _files(tmp_path, peers_age_seconds=7200)
    paths = ["--bench", str(bench), "--peers", str(peers), "--readme", str(readme), "--results", str(results)]
    assert publish.main(paths) == 0
    assert json.loads(results.read_text(encoding="utf-8"))["peers"] is None
    assert "No peers were measured in this run." in readme.read_text(encoding="utf-8")

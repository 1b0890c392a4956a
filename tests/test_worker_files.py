"""Files a killed worker leaves behind (metrics directories, partial downloads) are removed by the
next worker to start, and never those of a worker or a download still running."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from daemon.store.media import PART_GRACE_SECONDS, TempFile, remove_abandoned_parts
from daemon.worker_metrics import LOCK_NAME, MetricsDir, remove_stale


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_workers_metrics_directory_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A directory whose lock nobody holds (its worker was killed) goes, with its Prometheus target
    file; a locked one (a running worker) stays; an old-style directory without a lock goes only
    when the pid in its name is gone."""
    base = tmp_path / "metrics"
    (base / "targets").mkdir(parents=True)
    killed = base / "worker-111-abc"
    killed.mkdir()
    (killed / LOCK_NAME).touch()
    (killed / "counter_111.db").write_bytes(b"x")
    (base / "targets" / "worker-111-abc.json").write_text("[]")
    live = base / "worker-222-def"
    live.mkdir()
    holder = (live / LOCK_NAME).open("w")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    old_dead = base / f"worker-{dead_pid()}-old"
    old_dead.mkdir()
    old_live = base / f"worker-{os.getpid()}-old"
    old_live.mkdir()
    try:
        assert sorted(remove_stale(base)) == sorted(["worker-111-abc", old_dead.name])
    finally:
        holder.close()
    assert sorted(p.name for p in base.glob("worker-*")) == sorted([live.name, old_live.name])
    assert list((base / "targets").iterdir()) == []


def test_workers_on_one_data_dir_take_distinct_slots_and_free_them(tmp_path: Path) -> None:
    """Each worker claims the lowest free slot (its CPUs start after those of lower slots) and its own
    directory; listing writes a file_sd target; removing frees the slot and deletes both."""
    first = MetricsDir.claim(tmp_path)
    second = MetricsDir.claim(tmp_path)
    assert (first.slot, second.slot) == (0, 1)
    assert first.path != second.path
    first.advertise("127.0.0.1", 9191)
    assert json.loads(first.target_file.read_text()) == [{"targets": ["127.0.0.1:9191"], "labels": {}}]
    first.remove()
    assert not first.path.exists()
    assert not first.target_file.exists()
    third = MetricsDir.claim(tmp_path)
    assert third.slot == 0
    assert second.path.exists()  # a live worker's directory is never taken for stale
    second.remove()
    third.remove()


def test_abandoned_partial_downloads_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A `.part-*` file nobody holds, older than the grace period, is a killed download: removed. One
    whose download is still running (its writer holds the lock), or just created, is kept."""
    folder = tmp_path / "620000000000001"
    folder.mkdir()
    abandoned = folder / ".part-abandoned"
    abandoned.write_bytes(b"half a file")
    _age(abandoned, PART_GRACE_SECONDS + 5)
    fresh = folder / ".part-fresh"
    fresh.write_bytes(b"")
    running = TempFile(folder)
    running.write(b"still coming")
    _age(running.path, PART_GRACE_SECONDS + 5)
    stored = folder / ("0" * 64 + ".jpg")
    stored.write_bytes(b"a stored file")
    _age(stored, 3600)
    try:
        assert remove_abandoned_parts(tmp_path) == 1
        assert not abandoned.exists()
        assert fresh.exists()
        assert running.path.exists()
        assert stored.exists()
    finally:
        running.discard()

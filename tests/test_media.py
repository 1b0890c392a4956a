"""fetch_media through a real worker: download, verify, store, answer (the README's *Media*)."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from daemon.store.media import expected_digest, extension_for, host_allowed, remove_expired
from tests.pipeline_helpers import drained, post_webhook, rewrite_ids, worker_metric
from tests.support.fake_graph import FakeGraph, Reply, b64_sha256, media_bytes, sent_json
from tests.support.meta import envelope, text_envelope, webhook_samples
from tests.support.waiting import wait_for

PNID = "620000000000001"
MEDIA_ENV = {"WHATSAPP_MEDIA_HOSTS": "127.0.0.1"}

SAMPLES = {
    "image": ("image", "1405560000000001", "image/jpeg", ".jpg"),
    "video": ("video", "1405560000000002", "video/mp4", ".mp4"),
    "audio_voice_note": ("audio", "1405560000000003", "audio/ogg; codecs=opus", ".ogg"),
    "document": ("document", "1405560000000004", "application/pdf", ".pdf"),
    "sticker": ("sticker", "1405560000000005", "image/webp", ".webp"),
}


def media_message(media_id: str, kind: str = "image", **fields: Any) -> dict[str, Any]:
    content = media_bytes(media_id)
    body = {"id": media_id, "mime_type": "image/jpeg", "sha256": b64_sha256(content), **fields}
    return envelope([{"from": "447700900123", "id": f"wamid.M{media_id}", "type": kind, kind: body}])


def replies(graph: FakeGraph) -> list[str]:
    return [sent_json(s)["text"]["body"] for s in graph.sends()]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_each_media_type_is_stored_at_its_path_and_answered_with_its_size(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """Stored bytes equal the served bytes, at {phone_number_id}/{sha256}{ext}; the reply names the size."""
    samples = webhook_samples()
    for _, media_id, mime, _ in SAMPLES.values():
        fake_graph.add_media(media_id, mime_type=mime)
    stack = pipeline(**MEDIA_ENV)
    for name in SAMPLES:
        assert post_webhook(stack["url"], rewrite_ids(samples[name], name)) == 200
    fake_graph.wait_sends(len(SAMPLES))
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    media_dir = tmp_path / "data" / "media" / PNID
    for kind, media_id, _, ext in SAMPLES.values():
        content = media_bytes(media_id)
        stored = media_dir / f"{hashlib.sha256(content).hexdigest()}{ext}"
        assert stored.read_bytes() == content, kind
        assert f"Got your {kind} ({len(content)} bytes)." in replies(fake_graph)
    assert not (media_dir / "unverified").exists()
    # The fixture image's webhook url is on lookaside.fbsbx.com, which is not listed here: never used.
    assert all(r.path.startswith("/download/") for r in fake_graph.of_kind("download"))
    assert all(
        r.headers["Authorization"] == "Bearer test-access-token" for r in fake_graph.of_kind("download")
    )


def test_a_hash_mismatch_goes_under_unverified_and_is_still_answered(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """Bytes that do not match the webhook's sha256 are stored under unverified/, counted and answered."""
    fake_graph.add_media("777", content=b"tampered bytes")
    stack = pipeline(**MEDIA_ENV)
    assert post_webhook(stack["url"], media_message("777")) == 200
    fake_graph.wait_sends(1)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    unverified = files_under(tmp_path / "data" / "media" / PNID / "unverified")
    assert [p.read_bytes() for p in unverified] == [b"tampered bytes"]
    assert files_under(tmp_path / "data" / "media" / PNID) == unverified
    assert replies(fake_graph) == ["Got your image (14 bytes)."]
    assert worker_metric(stack["env"], "wapipe_media_downloads_total", outcome="unverified") == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "streamed"])
def test_an_oversized_file_is_refused_and_never_stored(
    pipeline: Callable[..., dict[str, Any]],
    fake_graph: FakeGraph,
    rclient: redis.Redis,
    tmp_path: Path,
    chunked: bool,
) -> None:
    """Over WAPIPE_MEDIA_MAX_BYTES the download stops (while streaming, too); the reply says so; no file left."""
    fake_graph.add_media("888", content=b"z" * 300_000, chunked=chunked)
    stack = pipeline(WAPIPE_MEDIA_MAX_BYTES="50000", **MEDIA_ENV)
    assert post_webhook(stack["url"], media_message("888")) == 200
    fake_graph.wait_sends(1)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    assert replies(fake_graph) == ["Got your image, but could not download it."]
    assert files_under(tmp_path / "data" / "media") == []
    assert len(fake_graph.of_kind("download")) == 1  # refused, not retried


def test_an_expired_url_is_refreshed(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """A 404 on the download URL gets a fresh URL from the Graph API, and the file is stored."""
    fake_graph.add_media("999")
    fake_graph.script("download", Reply(404))
    stack = pipeline(**MEDIA_ENV)
    assert post_webhook(stack["url"], media_message("999")) == 200
    fake_graph.wait_sends(1)
    assert replies(fake_graph) == [f"Got your image ({len(media_bytes('999'))} bytes)."]
    assert len(fake_graph.of_kind("media_info")) == 2
    assert len(fake_graph.of_kind("download")) == 2


def test_a_webhook_url_on_a_listed_host_is_used_directly_and_others_never_contacted(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """A listed webhook url saves the lookup; an unlisted one (same server, other host name) is never called."""
    fake_graph.add_media("111")
    fake_graph.add_media("222")
    stack = pipeline(**MEDIA_ENV)
    good = media_message("111", url=f"http://127.0.0.1:{fake_graph.port}/download/111?direct=1")
    evil = media_message("222", url=f"http://localhost:{fake_graph.port}/download/222?evil=1")
    assert post_webhook(stack["url"], good) == 200
    assert post_webhook(stack["url"], evil) == 200
    fake_graph.wait_sends(2)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    downloads = fake_graph.of_kind("download")
    assert not [d for d in downloads if "evil" in d.query]
    assert [d.query for d in downloads if d.path.endswith("/111")] == [{"direct": "1"}]
    assert [r.path for r in fake_graph.of_kind("media_info")] == ["/v25.0/222"]
    assert sorted(replies(fake_graph)) == sorted(
        [f"Got your image ({len(media_bytes(i))} bytes)." for i in ("111", "222")]
    )


def test_a_hostile_filename_changes_nothing_outside_the_media_dir(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """The sender's filename (../, absolute paths) never becomes a path: files only under media/{number}/."""
    fake_graph.add_media("333", mime_type="application/pdf")
    fake_graph.add_media("444", mime_type="application/pdf")
    stack = pipeline(**MEDIA_ENV)
    for media_id, filename in (("333", "../../../../escaped.pdf"), (("444", "/tmp/escaped-abs.pdf"))):
        obj = media_message(media_id, kind="document", filename=filename, mime_type="application/pdf")
        assert post_webhook(stack["url"], obj) == 200
    fake_graph.wait_sends(2)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    everything = files_under(tmp_path)
    assert not [p for p in everything if "escaped" in p.name]
    assert not Path("/tmp/escaped-abs.pdf").exists()
    media = files_under(tmp_path / "data" / "media")
    assert len(media) == 2
    assert all(p.parent == tmp_path / "data" / "media" / PNID and p.suffix == ".pdf" for p in media)


def test_transient_download_failures_end_in_a_could_not_download_reply(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis
) -> None:
    """A media host failing every time is retried boundedly, then the message is still answered."""
    fake_graph.add_media("555")
    fake_graph.script("download", *[Reply(503)] * 100)
    stack = pipeline(WAPIPE_GRAPH_ATTEMPTS="2", **MEDIA_ENV)
    assert post_webhook(stack["url"], media_message("555")) == 200
    fake_graph.wait_sends(1, timeout=40)
    assert replies(fake_graph) == ["Got your image, but could not download it."]
    assert len(fake_graph.of_kind("download")) == 2 * 4  # 2 in-process attempts × (1 run + 3 retries)
    assert worker_metric(stack["env"], "wapipe_media_downloads_total", outcome="failed") == 1


def test_a_cut_download_is_retried_and_never_stored(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """Content-Length 1,000 but the connection closes after 10 bytes, every time: each attempt is
    seen as cut, nothing is stored (not even under unverified/), and the user is told it could not
    be downloaded."""
    content = b"c" * 1000
    fake_graph.add_media("777", content, cut_after=10)
    stack = pipeline(WAPIPE_GRAPH_ATTEMPTS="2", **MEDIA_ENV)
    message = envelope([{"from": "447700900123", "id": "wamid.CUT", "type": "image",
                         "image": {"id": "777", "mime_type": "image/jpeg", "sha256": b64_sha256(content)}}])  # fmt: skip
    assert post_webhook(stack["url"], message) == 200
    fake_graph.wait_sends(1, timeout=40)
    assert replies(fake_graph) == ["Got your image, but could not download it."]
    assert len(fake_graph.of_kind("download")) == 2 * 4
    assert files_under(Path(stack["env"]["WAPIPE_DATA_DIR"]) / "media") == []


def test_dripping_downloads_never_hold_up_text_replies(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph
) -> None:
    """Downloads dripping one byte a second occupy every thread of the media process; texts sent
    after them are answered at once, by the pipeline processes, which never take a media message."""
    for n in range(4):
        fake_graph.add_media(f"90{n}", b"d" * 1000, drip_seconds=1.0)
    stack = pipeline(**MEDIA_ENV)  # 2 media threads (tests' setting): all of them will be stuck
    for n in range(4):
        assert post_webhook(stack["url"], media_message(f"90{n}")) == 200
    wait_for(lambda: len(fake_graph.of_kind("download")) >= 2, timeout=10, what="downloads under way")
    sent_at = time.monotonic()
    for n in range(3):  # other users' texts: a user's own wait for their earlier media (test_ordering)
        assert (
            post_webhook(stack["url"], text_envelope(f"wamid.T{n}", f"text {n}", sender=f"44770090055{n}"))
            == 200
        )
    fake_graph.wait_sends(3, timeout=10)
    assert time.monotonic() - sent_at < 5
    assert sorted(replies(fake_graph)) == [f"You said: text {n}" for n in range(3)]


def test_the_handler_receives_the_stored_file(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """A custom handler gets the local path, mime type, size and whether the hash matched."""
    (tmp_path / "media_bot.py").write_text(
        "from pathlib import Path\n"
        "def handle(m):\n"
        "    s = m.stored_media\n"
        "    data = Path(s.path).read_bytes()\n"
        "    return [{'type': 'text', 'text': {'body': f'{s.mime_type}|{s.size}|{s.sha256_ok}|{data!r}'}}]\n",
        encoding="utf-8",
    )
    fake_graph.add_media("666")
    stack = pipeline(WAPIPE_HANDLER="media_bot:handle", PYTHONPATH=str(tmp_path), **MEDIA_ENV)
    assert post_webhook(stack["url"], media_message("666")) == 200
    fake_graph.wait_sends(1)
    assert replies(fake_graph) == [f"image/jpeg|{len(media_bytes('666'))}|True|{media_bytes('666')!r}"]


def test_pure_helpers() -> None:
    """Extension table, host match (any port, http/https only) and digest decoding."""
    assert extension_for("audio/ogg; codecs=opus") == ".ogg"
    assert extension_for("application/x-evil") == ".bin"
    assert extension_for(None) == ".bin"
    hosts = ("lookaside.fbsbx.com",)
    assert host_allowed("https://lookaside.fbsbx.com/x?mid=1", hosts)
    assert host_allowed("http://LOOKASIDE.fbsbx.com:8443/x", hosts)
    assert not host_allowed("https://lookaside.fbsbx.com.evil.io/x", hosts)
    assert not host_allowed("file://lookaside.fbsbx.com/etc/passwd", hosts)
    digest = hashlib.sha256(b"hello whatsapp media\n").digest()
    assert expected_digest("jO5Vuued42SfqOY4L2SyaIlkIMPsFkGSssk0OXufXds=", None) == digest
    assert expected_digest(None, "8cee55bae79de3649fa8e6382f64b268896420c3ec164192b2c934397b9f5ddb") == digest
    assert expected_digest("not base64!", None) is None


def test_media_past_its_retention_is_deleted_by_the_workers(
    pipeline: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    """With WAPIPE_MEDIA_RETENTION_DAYS=2, a starting worker deletes the stored files (verified or
    not) last written more than 2 days ago and logs how many; younger files stay. Partial downloads
    are left to the abandoned-part cleanup, however old."""
    media_dir = tmp_path / "data" / "media"
    old = time.time() - 3 * 86_400
    files = {
        "old": media_dir / "620000000000001" / "aa.jpg",
        "old_unverified": media_dir / "620000000000001" / "unverified" / "bb.png",
        "young": media_dir / "620000000000001" / "cc.jpg",
    }
    part = tmp_path / "other" / "620000000000001" / ".part-dd"
    for name, path in [*files.items(), ("part", part)]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        if name != "young":
            os.utime(path, (old, old))
    assert remove_expired(media_dir, 10 * 86_400) == 0  # younger than ten days: all kept
    assert remove_expired(part.parent.parent, 86_400) == 0
    assert part.exists()
    stack = pipeline(WAPIPE_MEDIA_RETENTION_DAYS="2", WAPIPE_HEARTBEAT_TIMEOUT_MS="4000")  # sweeps each 1 s
    worker = stack["worker"]

    def purged() -> int:  # each worker process sweeps: two may share the files between them
        lines = [line for line in worker.output().splitlines() if "media_files_purged" in line]
        return sum(int(n) for line in lines for n in re.findall(r'files(?:=|": )(\d+)', line))

    wait_for(lambda: purged() >= 2, timeout=20, what="the media purge")
    assert {name for name, path in files.items() if path.exists()} == {"young"}
    assert purged() == 2


def test_a_file_the_media_directory_cannot_take_still_gets_its_answer(
    pipeline: Callable[..., dict[str, Any]], fake_graph: FakeGraph, rclient: redis.Redis, tmp_path: Path
) -> None:
    """The number's media folder cannot be made (a file is in its way, as a full or read-only disk
    refuses too): fetch_media was dead-lettered after 4 attempts and the user got no answer at all.
    Now the user gets "could not download it", once, at once, and nothing is left behind."""
    media = tmp_path / "data" / "media"
    media.mkdir(parents=True)
    (media / PNID).write_bytes(b"not a folder")
    fake_graph.add_media("889")
    stack = pipeline(**MEDIA_ENV)
    assert post_webhook(stack["url"], media_message("889")) == 200
    fake_graph.wait_sends(1)
    wait_for(lambda: drained(rclient), timeout=20, what="pipeline drained")
    assert replies(fake_graph) == ["Got your image, but could not download it."]
    assert rclient.zcard("dramatiq:wapipe_media.XQ") == 0
    assert files_under(media) == [media / PNID]
    assert "MediaNotStored" in stack["worker"].output()


def test_a_disk_that_fills_while_writing_leaves_no_partial_file(
    redis_url: str,
    rclient: redis.Redis,
    fake_graph: FakeGraph,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disk fills in the middle of a download (ENOSPC on a write, and again when the file is
    closed): the message goes on to reply without a file, and no partial file stays."""
    import errno

    from actors import fetch_media
    from daemon.pipeline import MessageItem
    from daemon.store import media as media_store
    from tests.support.stages import context, resources

    def full(self: media_store.TempFile, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(media_store.TempFile, "write", full)
    fake_graph.add_media("890", content=b"y" * 200_000)
    [message] = media_message("890")["entry"][0]["changes"][0]["value"]["messages"]
    item = MessageItem(message, PNID, None, None, time.time(), "env")
    with resources(redis_url, fake_graph.url, tmp_path, **MEDIA_ENV) as worker:
        fetch_media.run(context(worker), item)
        media = worker.settings.media_dir
    assert files_under(media) == []
    [queued] = rclient.lrange("dramatiq:wapipe", 0, -1)
    handed = rclient.hget("dramatiq:wapipe.msgs", queued)
    assert b'"actor_name":"reply"' in handed
    assert b"stored_media" not in handed or b'"stored_media":null' in handed

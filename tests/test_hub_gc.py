"""Garbage collection of file bytes (``kachery-hub gc``, serve's periodic run): what no project
references goes; what a file, a grace period or an upload in progress needs stays, also when an
upload races the collection. On SQLite with a folder store, PostgreSQL with a folder store, and
PostgreSQL with an S3 store (a real SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hub_fixtures import *  # noqa: F403
from hub_fixtures import HUB_URL, S3_KEYS, Hub, _fresh_postgres_database, _s3_client
from hub_process import HUB_CMD, HubProcess, forget_hubs, free_port, running
from sqlalchemy import text
from starlette.testclient import TestClient

import kachery_core as kc
from kachery_core import _hub
from kachery_hub import Settings, create_app
from kachery_hub import _gc
from kachery_hub._bytestore import LocalFolderStore, _LocalIncoming
from kachery_hub._gc import collect_garbage
from kachery_hub._s3store import S3ByteStore

KINDS = ["sqlite", "postgresql", "postgresql+s3"]


@pytest.fixture(params=KINDS)
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """An in-process hub: SQLite + folder (the embedded default), PostgreSQL + folder, PostgreSQL + S3."""
    kind = request.param
    database_url = storage_url = None
    if kind.startswith("postgresql"):
        database_url = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    if kind.endswith("s3"):
        endpoint = request.getfixturevalue("s3_server")
        for name, value in S3_KEYS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        bucket = "gc-" + secrets.token_hex(6)
        _s3_client(endpoint).create_bucket(Bucket=bucket)
        storage_url = f"s3://{bucket}/blobs?endpoint_url={endpoint}"
    app = create_app(Settings(data_dir=tmp_path / "hub", database_url=database_url, storage_url=storage_url,
                              public_urls=(HUB_URL,)))
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Hub(http=http, state=app.state.hub, root=tmp_path, monkeypatch=monkeypatch, kind=kind)
    _hub._injected.pop(HUB_URL, None)
    _hub._direct.pop(HUB_URL, None)
    forget_hubs()


def _sha1(uri: str) -> str:
    return kc.parse_sha1_uri(uri).sha1


def _delete(pid: str, sha1: str) -> None:
    assert _hub.connect().json("DELETE", f"/api/projects/{pid}/files/{sha1}") == {"deleted": True}


def _make_garbage(hub: Hub, pid: str, content: str) -> str:
    """Store ``content`` in project ``pid`` and remove it, leaving its bytes as garbage; returns its sha1."""
    store = hub.state.store
    if not isinstance(store, S3ByteStore):
        sha1 = _sha1(kc.store_text(content))
        _delete(pid, sha1)
        return sha1
    # An object store drops a project's copy when the file is removed. What it may keep: the copy of a
    # second upload of the same bytes completed at the same time, had the hub stopped before dropping
    # it (discard patched out). The upload id of the file's own copy stays pending (its URL may still
    # work) until the sweep of abandoned uploads: hours later, as backdating it makes it.
    import httpx2

    data = content.encode()
    sha1 = hashlib.sha1(data).hexdigest()
    client = _hub.connect()
    path = f"/api/projects/{pid}/files/{sha1}"
    uploads = [client.json("POST", path + "/upload", json={"size": len(data)})["upload"] for _ in range(2)]
    for upload in uploads:
        assert httpx2.put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
    client.json("POST", path + "/complete", json={"upload_id": uploads[0]["upload_id"]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "discard", lambda sha1, upload_id: None)
        client.json("POST", path + "/complete", json={"upload_id": uploads[1]["upload_id"]})
    _delete(pid, sha1)
    left = [k.rsplit("/", 1)[-1] for k in _stored(hub, sha1)]
    assert uploads[1]["upload_id"] in left and uploads[0]["upload_id"] not in left
    with hub.state.db.begin() as conn:
        conn.execute(text("UPDATE pending_uploads SET created_at = created_at - 3 * 3600 WHERE sha1 = :s"), {"s": sha1})
    return sha1


def _stored(hub: Hub, sha1: str) -> list[str]:
    """Keys of the objects holding ``sha1``'s bytes in the hub's store."""
    return [o.key for o in hub.state.store.objects() if o.sha1 == sha1]


def _row(hub: Hub, sha1: str) -> Any:
    with hub.state.db.begin() as conn:
        return conn.execute(text("SELECT * FROM blobs WHERE sha1 = :s"), {"s": sha1}).first()


def _fresh_load(hub: Hub, uri_or_sha1: str) -> str:
    """Load a file from the hub as a new client of the same user would (no local cache)."""
    hub.sign_in("reader-" + secrets.token_hex(3), "a@example.org")
    return kc.load_text(uri_or_sha1 if "://" in uri_or_sha1 else f"sha1://{uri_or_sha1}")


def test_unreferenced_bytes_are_removed_and_referenced_ones_kept(hub: Hub) -> None:
    pid = hub.sign_in("A", "a@example.org")
    kept = kc.store_text("still in the project")
    gone = _make_garbage(hub, pid, "no longer wanted " * 100)
    assert _stored(hub, gone) and _row(hub, gone) is not None

    report = collect_garbage(hub.state, grace_seconds=0)
    assert _stored(hub, gone) == [] and _row(hub, gone) is None
    assert report.removed >= 1 and report.bytes_freed >= len("no longer wanted " * 100)
    assert report.kept_protected == 0 and report.considered >= 2
    assert _stored(hub, _sha1(kept)) and _fresh_load(hub, kept) == "still in the project"
    if isinstance(hub.state.store, LocalFolderStore):
        assert list(hub.state.store.tmp_dir.iterdir()) == []  # nothing left aside

    again = collect_garbage(hub.state, grace_seconds=0)
    assert (again.removed, again.bytes_freed) == (0, 0)


def test_a_file_in_another_project_keeps_the_bytes(hub: Hub) -> None:
    hub.sign_in("B", "b@example.org")
    uri = kc.store_text("shared by two projects")
    pa = hub.sign_in("A", "a@example.org")
    _make_garbage(hub, pa, "shared by two projects")
    report = collect_garbage(hub.state, grace_seconds=0)
    assert _row(hub, _sha1(uri)) is not None and _stored(hub, _sha1(uri))
    assert report.removed == (1 if hub.kind.endswith("s3") else 0)  # an object store: A's own copy
    hub.sign_in("B2", "b@example.org")
    assert kc.load_text(uri) == "shared by two projects"


def test_bytes_within_the_grace_period_are_kept_and_a_dry_run_removes_nothing(hub: Hub) -> None:
    pid = hub.sign_in("A", "a@example.org")
    sha1 = _make_garbage(hub, pid, "deleted a moment ago")

    report = collect_garbage(hub.state, grace_seconds=3600)
    assert report.removed == 0 and report.kept_protected >= 1
    dry = collect_garbage(hub.state, grace_seconds=0, dry_run=True)
    assert dry.dry_run and dry.removed >= 1 and dry.bytes_freed >= len("deleted a moment ago")
    assert "would remove" in dry.summary()
    assert _stored(hub, sha1) and _row(hub, sha1) is not None

    done = collect_garbage(hub.state, grace_seconds=0)
    assert (done.removed, done.bytes_freed) == (dry.removed, dry.bytes_freed)
    assert done.abandoned_uploads == dry.abandoned_uploads
    assert _stored(hub, sha1) == [] and _row(hub, sha1) is None


def test_an_upload_in_progress_keeps_the_bytes_it_found(hub: Hub) -> None:
    """gc runs while an upload of bytes it considers garbage is on its way: the file loads afterwards."""
    pid = hub.sign_in("A", "a@example.org")
    content = "uploaded again while gc runs " * 50
    sha1 = _make_garbage(hub, pid, content)
    reports = []
    if isinstance(hub.state.store, LocalFolderStore):
        # The upload has streamed and verified its bytes, found the old blob in place, and is about to record it.
        finish = _LocalIncoming.finish

        def finish_then_collect(self: _LocalIncoming, expected_sha1: str) -> int:
            size = finish(self, expected_sha1)
            reports.append(collect_garbage(hub.state, grace_seconds=0))
            return size

        hub.monkeypatch.setattr(_LocalIncoming, "finish", finish_then_collect)
    else:
        # The client's bytes are in the store; the hub checks them before recording the upload.
        store = hub.state.store
        assert isinstance(store, S3ByteStore)
        staged_size = store.staged_size

        def staged_then_collect(sha1_: str, upload_id: str) -> int | None:
            reports.append(collect_garbage(hub.state, grace_seconds=0))
            return staged_size(sha1_, upload_id)

        hub.monkeypatch.setattr(store, "staged_size", staged_then_collect)
    hub.sign_in("A2", "a@example.org")  # a computer that does not have the bytes cached
    assert _sha1(kc.store_text(content)) == sha1
    hub.monkeypatch.undo()
    assert len(reports) == 1 and reports[0].removed == 1  # the old blob (object store: the stray copy)
    if hub.kind.endswith("s3"):
        assert reports[0].kept_protected == 2  # the upload's object and its blob: pending
    assert _stored(hub, sha1) and _row(hub, sha1) is not None
    assert _fresh_load(hub, sha1) == content
    assert collect_garbage(hub.state, grace_seconds=0).removed == 0


def test_a_file_recorded_between_the_scan_and_the_removal_keeps_its_bytes(hub: Hub) -> None:
    pid = hub.sign_in("A", "a@example.org")
    content = "recorded again just in time " * 50
    sha1 = _make_garbage(hub, pid, content)
    remove_blob = _gc._remove_blob
    seen: list[str] = []

    def record_then_remove(*args: Any) -> int | None:
        seen.append(args[2])
        hub.sign_in("A2", "a@example.org")
        assert _sha1(kc.store_text(content)) == sha1  # the scan found no file; now there is one
        return remove_blob(*args)

    hub.monkeypatch.setattr(_gc, "_remove_blob", record_then_remove)
    report = collect_garbage(hub.state, grace_seconds=0)
    hub.monkeypatch.undo()
    assert seen == [sha1]
    assert report.kept_protected == 1
    assert _row(hub, sha1) is not None and _stored(hub, sha1)
    assert _fresh_load(hub, sha1) == content


# SQLite has one writer at a time; in an object store a recording's upload is pending until it commits
# (test_a_direct_upload_handed_out_keeps_its_blob).
@pytest.mark.parametrize("hub", ["postgresql"], indirect=True)
def test_a_recording_that_holds_the_blob_when_gc_comes_wins(hub: Hub) -> None:
    """Another replica is recording the file in a transaction not yet committed when gc removes the blob."""
    pid = hub.sign_in("A", "a@example.org")
    uri = kc.store_text("recorded by another replica")
    sha1 = _sha1(uri)
    with hub.state.db.begin() as conn:
        row = conn.execute(text("SELECT * FROM files WHERE sha1 = :s"), {"s": sha1}).one()
    _delete(pid, sha1)
    other = hub.state.db.engine.connect()
    tx = other.begin()
    # What _files._record does: the blob's row first (its lock), then the file.
    other.execute(text("INSERT INTO blobs (sha1, size, created_at) VALUES (:s, :n, :t) "
                       "ON CONFLICT (sha1) DO UPDATE SET size = excluded.size"), {"s": sha1, "n": row.size, "t": time.time()})
    other.execute(text("INSERT INTO files (project_id, sha1, size, label, created_by, created_at, storage_key) "
                       "VALUES (:p, :s, :n, NULL, :u, :t, :k)"),
                  {"p": pid, "s": sha1, "n": row.size, "u": row.created_by, "t": time.time(), "k": row.storage_key})
    result: list[Any] = []
    gc = threading.Thread(target=lambda: result.append(collect_garbage(hub.state, grace_seconds=0)))
    gc.start()
    try:
        deadline = time.monotonic() + 30
        # Autocommit: inside a transaction pg_stat_activity would show one snapshot throughout.
        with hub.state.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch:
            while not watch.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND query LIKE '%blobs%'")).scalar():
                assert time.monotonic() < deadline and gc.is_alive(), "gc never waited for the recording"
                time.sleep(0.02)
    finally:
        tx.commit()
        other.close()
        gc.join(30)
    assert result and result[0].kept_protected >= 1
    assert _row(hub, sha1) is not None and _stored(hub, sha1)
    assert _fresh_load(hub, uri) == "recorded by another replica"


@pytest.mark.parametrize("hub", ["postgresql+s3"], indirect=True)  # only object stores hand uploads out
def test_a_direct_upload_handed_out_keeps_its_blob(hub: Hub) -> None:
    pid = hub.sign_in("A", "a@example.org")
    data = b"about to be uploaded once more"
    sha1 = _make_garbage(hub, pid, data.decode())
    upload = _hub.connect().json("POST", f"/api/projects/{pid}/files/{sha1}/upload", json={"size": len(data)})["upload"]
    report = collect_garbage(hub.state, grace_seconds=0)
    assert report.removed == 1  # the stray copy
    assert _row(hub, sha1) is not None and report.kept_protected == 1
    import httpx2

    assert httpx2.put(upload["url"], content=data, headers=upload["headers"]).status_code == 200
    assert collect_garbage(hub.state, grace_seconds=0).removed == 0  # arrived, not yet completed: pending
    _hub.connect().json("POST", f"/api/projects/{pid}/files/{sha1}/complete", json={"upload_id": upload["upload_id"]})
    assert _fresh_load(hub, sha1) == data.decode()


@pytest.mark.parametrize("hub", ["sqlite"], indirect=True)  # the embedded default: a data folder holds both
def test_the_command_prints_its_summary_on_a_data_folder(hub: Hub, tmp_path: Path) -> None:
    pid = hub.sign_in("A", "a@example.org")
    big = os.urandom(3 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(big)
    uri = kc.store_file(str(src))
    kept = kc.store_text("kept")
    _delete(pid, _sha1(uri))
    data = str(hub.state.settings.data_dir)

    def gc(*args: str) -> str:
        out = subprocess.run([*HUB_CMD, "gc", "--data", data, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert gc().splitlines() == [
        "gc: 2 blobs considered, removed 0 (0.0 MiB), kept 1 unreferenced (grace period or upload in progress); "
        "removed 0 abandoned uploads, 0 temp files"]
    assert "would remove 1 (3.0 MiB)" in gc("--grace", "0", "--dry-run")
    assert _stored(hub, _sha1(uri))
    assert "removed 1 (3.0 MiB)" in gc("--grace", "0")
    assert _stored(hub, _sha1(uri)) == [] and _fresh_load(hub, kept) == "kept"
    bad = subprocess.run([*HUB_CMD, "gc", "--data", data, "--grace", "never"], capture_output=True, text=True)
    assert bad.returncode == 2 and "give a duration" in bad.stderr


def test_serve_collects_garbage_periodically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "hub-data"
    with running(HubProcess(data, free_port()), env={"KACHERY_HUB_GC_INTERVAL": "0.2"}) as hub:
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "client"))
        pid = kc.init(hub_url=hub.url, token=hub.token("a@example.org"))["default_project_id"]
        kept = kc.store_text("in a project")
        dropped = kc.store_text("dropped from the project")
        _delete(pid, _sha1(dropped))
        # Bytes of an hour and more ago: one file no longer in a project, one nothing ever recorded.
        store = LocalFolderStore(data / "blobs")
        long_ago = time.time() - 2 * 3600
        import sqlite3

        with sqlite3.connect(data / "hub.sqlite", timeout=10) as db:
            db.execute("UPDATE blobs SET created_at = ? WHERE sha1 = ?", (long_ago, _sha1(dropped)))
        os.utime(store.blob_path(_sha1(dropped)), (long_ago, long_ago))
        stray = b"bytes a stopped hub placed but never recorded"
        stray_path = store.blob_path(hashlib.sha1(stray).hexdigest())
        stray_path.parent.mkdir(parents=True, exist_ok=True)
        stray_path.write_bytes(stray)
        os.utime(stray_path, (long_ago, long_ago))
        recent = store.blob_path(hashlib.sha1(b"recent").hexdigest())
        recent.parent.mkdir(parents=True, exist_ok=True)
        recent.write_bytes(b"recent")

        deadline = time.monotonic() + 30
        while store.blob_path(_sha1(dropped)).exists() or stray_path.exists():
            assert time.monotonic() < deadline, list(hub.log)[-20:]
            time.sleep(0.1)
        assert recent.exists() and store.blob_path(_sha1(kept)).exists()
        monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "another-client"))
        kc.init(hub_url=hub.url, token=hub.token("a@example.org"))
        assert kc.load_text(kept) == "in a project"


def test_the_interval_is_a_setting() -> None:
    assert Settings.from_environ({"KACHERY_HUB_GC_INTERVAL": "600"}, data_dir=Path("/tmp/x")).gc_interval_seconds == 600
    assert Settings.from_environ({}, data_dir=Path("/tmp/x")).gc_interval_seconds == 0
    from kachery_hub.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="KACHERY_HUB_GC_INTERVAL"):
        Settings.from_environ({"KACHERY_HUB_GC_INTERVAL": "-1"}, data_dir=Path("/tmp/x"))


@pytest.mark.parametrize("hub", ["sqlite"], indirect=True)  # the routes are the same on every backend
def test_there_is_no_http_endpoint_for_it(hub: Hub) -> None:
    paths = hub.http.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if "gc" in p.split("/") or "garbage" in p]


# Each upload to an object store has a key of its own: the race exists on a local folder only.
@pytest.mark.parametrize("hub", ["sqlite", "postgresql"], indirect=True)
def test_bytes_an_upload_just_placed_are_not_taken_for_an_old_blobs(hub: Hub) -> None:
    """A blob recorded long ago whose bytes are missing, uploaded again: gc runs between placing and recording."""
    store = hub.state.store
    assert isinstance(store, LocalFolderStore)
    pid = hub.sign_in("A", "a@example.org")
    content = "placed again " * 50
    sha1 = _make_garbage(hub, pid, content)
    store.blob_path(sha1).unlink()
    with hub.state.db.begin() as conn:
        conn.execute(text("UPDATE blobs SET created_at = created_at - 7200 WHERE sha1 = :s"), {"s": sha1})
    finish = _LocalIncoming.finish
    reports = []

    def finish_then_collect(self: _LocalIncoming, expected_sha1: str) -> int:
        size = finish(self, expected_sha1)
        assert store.blob_path(sha1).exists()  # placed, not yet recorded
        reports.append(collect_garbage(hub.state, grace_seconds=3600))
        return size

    hub.monkeypatch.setattr(_LocalIncoming, "finish", finish_then_collect)
    hub.sign_in("A2", "a@example.org")
    assert _sha1(kc.store_text(content)) == sha1
    hub.monkeypatch.undo()
    assert len(reports) == 1 and reports[0].removed == 0 and reports[0].kept_protected == 1
    assert _fresh_load(hub, sha1) == content

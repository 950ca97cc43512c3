"""The hub's persistence: an upgrade keeps data, the byte store never shows unverified bytes (migrations: test_hub_migrations)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from sqlalchemy import text  # noqa: E402

from kachery_hub import Settings, create_app, open_byte_store  # noqa: E402
from kachery_hub._accounts import create_token  # noqa: E402
from kachery_hub._bytestore import LocalFolderStore  # noqa: E402
from kachery_hub._database import Database  # noqa: E402
from kachery_hub._migrations import head_revision, migrate  # noqa: E402
from kachery_hub.errors import ConfigurationError, HashMismatch, PayloadTooLarge  # noqa: E402


def _revision(db: Database) -> str:
    with db.begin() as conn:
        return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())


def test_hub_restart_keeps_users_projects_and_files(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "hub")
    app = create_app(settings)
    token = create_token(app.state.hub.db, "a@example.org")
    app.state.hub.close()
    app = create_app(settings)
    with app.state.hub.db.begin() as conn:
        from kachery_hub._accounts import check_token

        assert check_token(conn, token).user_id


def test_upload_is_visible_only_after_its_hash_is_verified(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "blobs")
    data = os.urandom(100_000)
    sha1 = hashlib.sha1(data).hexdigest()
    incoming = store.begin_upload(len(data))
    incoming.write(data[:50_000])
    assert not store.blob_path(sha1).exists()
    incoming.write(data[50_000:])
    assert not store.blob_path(sha1).exists()
    assert incoming.finish(sha1) == len(data)
    assert store.blob_path(sha1).is_file() and store.blob_path(sha1).read_bytes() == data
    assert list(store.tmp_dir.iterdir()) == []


def test_a_wrong_hash_or_size_leaves_nothing(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "blobs")
    claimed = hashlib.sha1(b"claimed").hexdigest()
    incoming = store.begin_upload()
    incoming.write(b"other")
    with pytest.raises(HashMismatch) as err:
        incoming.finish(claimed)
    assert isinstance(err.value, ValueError)
    assert not store.blob_path(claimed).exists() and list(store.tmp_dir.iterdir()) == []
    incoming = store.begin_upload(max_size=3)
    with pytest.raises(PayloadTooLarge):
        incoming.write(b"four")
    incoming.abort()
    assert list(store.tmp_dir.iterdir()) == []


def test_an_upload_of_a_hub_that_is_gone_is_removed_at_once_and_a_live_one_is_kept(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "blobs")
    live = store.begin_upload()
    live.write(b"in progress, in this process")
    # Another hub process, killed mid-upload: its temp file is minutes old, not hours.
    code = ("import os, signal, sys; from pathlib import Path; from kachery_hub._bytestore import LocalFolderStore; "
            "u = LocalFolderStore(Path(sys.argv[1])).begin_upload(); u.write(b'partial'); u._file.flush(); "
            "print('ready', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "blobs")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    assert len(list(store.tmp_dir.iterdir())) == 2
    assert store.cleanup() == 0, "both owners are alive"
    child.kill()
    child.communicate()  # waits, and closes its pipes
    assert store.cleanup() == 1
    assert len(list(store.tmp_dir.iterdir())) == 1
    data = b"in progress, in this process"
    assert live.finish(hashlib.sha1(data).hexdigest()) == len(data)
    assert list(store.tmp_dir.iterdir()) == []


def test_storage_and_database_urls_are_checked(tmp_path: Path) -> None:
    assert isinstance(open_byte_store((tmp_path / "b").as_uri()), LocalFolderStore)
    with pytest.raises(ConfigurationError, match="unsupported scheme 'gs'"):
        open_byte_store("gs://bucket/prefix")
    with pytest.raises(ConfigurationError, match="file:///"):
        open_byte_store("file://otherhost/x")
    with pytest.raises(ConfigurationError, match="database URL"):
        Database("not a url")


def test_settings_from_the_environment(tmp_path: Path) -> None:
    env = {"KACHERY_HUB_DATA": str(tmp_path / "d"), "KACHERY_HUB_MAX_CLOCK_SKEW": "60"}
    s = Settings.from_environ(env)
    assert s.data_dir == tmp_path / "d" and s.max_clock_skew_seconds == 60
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'd' / 'hub.sqlite'}"
    assert s.resolved_storage_url == (tmp_path / "d" / "blobs").as_uri()
    s = Settings.from_environ(env, database_url="sqlite:///x.db")
    assert s.resolved_database_url == "sqlite:///x.db"
    with pytest.raises(ConfigurationError, match="KACHERY_HUB_MAX_CLOCK_SKEW"):
        Settings.from_environ({"KACHERY_HUB_MAX_CLOCK_SKEW": "soon"})
    with pytest.raises(ConfigurationError):
        Settings(data_dir=tmp_path, max_clock_skew_seconds=0)


def test_a_hub_created_at_version_1_upgrades_to_the_latest_keeping_its_users(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    db = Database(url)
    assert migrate(db.engine, "0001_initial") == ["0001_initial"]
    token = "khub_made-at-version-1"  # as version 1 stored it (today's create_token writes later columns)
    with db.begin() as conn:
        conn.execute(text("INSERT INTO users (id, email, email_verified, is_admin, created_at) "
                          "VALUES ('u1', 'early@example.org', FALSE, FALSE, 0)"))
        conn.execute(text("INSERT INTO tokens (token_hash, user_id, created_at, revoked) VALUES (:h, 'u1', 0, FALSE)"),
                     {"h": hashlib.sha256(token.encode()).hexdigest()})
    db.close()
    app = create_app(Settings(data_dir=tmp_path, database_url=url))
    state = app.state.hub
    assert _revision(state.db) == head_revision() != "0001_initial"
    from kachery_hub._accounts import check_token

    with state.db.begin() as conn:
        assert check_token(conn, token).user_id
    state.close()

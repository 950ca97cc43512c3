"""What every request handler reaches: settings, database and byte store.

The hub's data is private to the user running it: ``kachery-hub`` runs with
umask 077, and on start the data folder (and a ``file://`` byte store or SQLite
database outside it) loses its group and other permissions. A folder that had
any has everything in it this user owns made owner-only too (0700 folders, 0600
files); later starts need not walk it again.

An app embedded with ``create_app`` runs under its process's umask: a new byte
store folder outside the data folder is made 0700 and a new SQLite database file
0600 before they are opened (SQLite gives ``-wal``/``-shm`` its file's mode),
and all of them are tightened again once open.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fastapi import Request
from sqlalchemy.engine import make_url

from ._bytestore import ByteStore, open_byte_store
from ._database import Database
from ._gc import PeriodicCollector, start_periodic
from ._handoff import Waiters
from ._oidc import OidcConfig, OidcProvider
from ._settings import Settings
from ._wakeup import WakeUps


@dataclass
class HubState:
    settings: Settings
    db: Database
    store: ByteStore
    oidc: OidcProvider | None = field(default=None)
    wakeups: WakeUps = field(default=None)  # type: ignore[assignment]  # made from the database URL
    #: feed event streams open, by client address (see _feeds.get_events)
    open_streams: dict[str, int] = field(default_factory=dict)
    #: tasks (see _tasks): by project, before when no lease can lapse; by (project, backend), when
    #: its last_seen was last written
    next_lapse: dict[str, float] = field(default_factory=dict)
    backend_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    #: backends' claims waiting in this process, which a new job is handed to directly (_tasks.Waiters)
    task_waiters: Waiters = field(default_factory=Waiters)
    #: serve's periodic garbage collection (KACHERY_HUB_GC_INTERVAL), stopped by close()
    collector: PeriodicCollector | None = field(default=None)

    def __post_init__(self) -> None:
        if self.wakeups is None:
            self.wakeups = WakeUps(self.db.url)

    @classmethod
    def open(cls, settings: Settings) -> HubState:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths = _hub_paths(settings)
        for path in paths:  # before the database opens: SQLite gives -wal/-shm its file's mode
            make_private(path)
        _create_private(settings)
        db = Database(settings.resolved_database_url)
        db.migrate()
        store = open_byte_store(settings.resolved_storage_url)
        for path in paths:  # whatever opening them made under a looser umask
            make_private(path)
        store.cleanup()
        from ._files import ABANDONED_UPLOAD_SECONDS, remove_abandoned_uploads  # _files needs this module

        remove_abandoned_uploads(db, store, time.time() - ABANDONED_UPLOAD_SECONDS)
        oidc = None
        if settings.oidc_client_id and settings.oidc_client_secret:
            oidc = OidcProvider(OidcConfig(settings.oidc_issuer, settings.oidc_client_id, settings.oidc_client_secret))
        state = cls(settings=settings, db=db, store=store, oidc=oidc)
        state.collector = start_periodic(state, settings)
        return state

    def close(self) -> None:
        if self.collector is not None:
            self.collector.stop()
        self.db.close()
        self.store.close()


def _hub_paths(settings: Settings) -> list[Path]:
    """The data folder, and the hub's files outside it (a local byte store, a SQLite database and its journals)."""
    paths = [settings.data_dir]
    store, db = _local_store(settings), _sqlite_file(settings)
    if store is not None:
        paths.append(store)
    if db is not None:
        paths += [db, *(db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]
    return [p for p in paths if not p.is_relative_to(settings.data_dir) or p == settings.data_dir]


def _create_private(settings: Settings) -> None:
    """Make a missing local byte store (0700) and SQLite database file (0600), so they are never readable by others."""
    store = _local_store(settings)
    if store is not None and not store.is_relative_to(settings.data_dir):
        store.mkdir(mode=0o700, parents=True, exist_ok=True)
    database = _sqlite_file(settings)
    if database is not None and not database.is_relative_to(settings.data_dir) and database.parent.is_dir():
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))  # an empty file is an empty SQLite database


def _local_store(settings: Settings) -> Path | None:
    storage = settings.resolved_storage_url
    return Path(unquote(urlsplit(storage).path)) if storage.startswith(("file:", "/")) else None


def _sqlite_file(settings: Settings) -> Path | None:
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database)
    return None


def make_private(path: Path) -> None:
    """Take group and other permissions off ``path``; if it had any, off everything under it this user owns."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or not st.st_mode & 0o077:
        return
    os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    if not stat.S_ISDIR(st.st_mode):
        return
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            child = os.path.join(folder, name)
            try:
                st = os.lstat(child)
                if not stat.S_ISLNK(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
                    os.chmod(child, stat.S_IMODE(st.st_mode) & 0o700)
            except FileNotFoundError:
                continue  # removed meanwhile


async def hub_state(request: Request) -> HubState:
    """Dependency; async so FastAPI does not send it to the thread pool."""
    state: HubState = request.app.state.hub
    return state


def state_of(request: Request) -> HubState:
    state: HubState = request.app.state.hub
    return state

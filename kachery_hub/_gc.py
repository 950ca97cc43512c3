"""Garbage collection of file bytes: remove what no project references any more.

``kachery-hub gc`` runs :func:`collect_garbage` once; ``serve`` runs it every
``KACHERY_HUB_GC_INTERVAL`` seconds when that is set (:class:`PeriodicCollector`).
There is no HTTP endpoint: it is an operator's command. What it removes:

- a blob (``blobs`` row) that no ``files`` row of any project references, recorded
  before the grace period and targeted by no upload in progress (``pending_uploads``),
  with its bytes at the blob's own path (a folder store's ``sha1/ab/cd/ef/<sha1>``; in an
  object store the same path holds only blobs recorded before upload ids existed);
- bytes at a blob's own path that no row records (a hub stopped between placing them and
  recording them), last written before the grace period: recorded, then as above;
- in an object store, a project's copy (``uploads/<sha1>/<upload id>``) that no ``files``
  row names and no pending upload holds, written before the grace period (a hub stopped
  before removing the copy of a file deleted from its project);
- direct uploads handed out and never completed, and temp files of processes that are
  gone (``_files.remove_abandoned_uploads``, the store's ``cleanup()``);
- feed append IDs recorded more than ``_feeds.APPEND_ID_SECONDS`` ago (a day): no client
  retries an append that long after, and the append path stays one statement without them.

Why a concurrent upload never loses its bytes. Recording a file first writes its
blob's row (``INSERT ... ON CONFLICT DO UPDATE``), which takes that row's lock, and
``files.sha1`` is a foreign key to it. A blob is removed in one transaction that takes
the same lock (``SELECT ... FOR UPDATE``; SQLite has one writer at a time), then deletes
the row only if a fresh statement still finds it unreferenced, old and not pending,
and moves the bytes aside before committing. So either the recording committed first
and the blob is kept, or it waits until the bytes are gone and its row is made anew;
an upload through the hub keeps its own verified copy until it is recorded and then
puts it in place (``_LocalIncoming.release``). Bytes an upload placed but has not
recorded yet were just written: only bytes older than the grace period are moved.
A project's copy in an object store is named by its pending upload until the
transaction that records the file removes it, and again by a pending upload when the
file is removed (``_files._unrecord``): once neither names it, nothing can again.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, select, text
from sqlalchemy.exc import IntegrityError

from . import _database as tables
from ._bytestore import ByteStore, LocalFolderStore, StoredObject
from ._database import Database
from ._settings import Settings

log = logging.getLogger("kachery_hub.gc")

#: What ``kachery-hub gc`` and the periodic run spare: blobs recorded, and bytes written, this recently.
DEFAULT_GRACE_SECONDS = 3600.0
_MiB = 1024 * 1024
_PAGE = 1000

_BLOBS_PAGE = text(
    "SELECT b.sha1, b.size, b.created_at, "
    "EXISTS (SELECT 1 FROM files f WHERE f.sha1 = b.sha1) AS referenced, "
    "EXISTS (SELECT 1 FROM pending_uploads p WHERE p.sha1 = b.sha1 AND p.created_at >= :live) AS pending "
    "FROM blobs b WHERE b.sha1 > :after ORDER BY b.sha1 LIMIT :n"
)
# Re-checked under the row's lock, in a statement of its own: it sees every file recorded before the lock was had.
_DELETE_UNUSED = text(
    "DELETE FROM blobs WHERE sha1 = :sha1 AND created_at < :cutoff "
    "AND NOT EXISTS (SELECT 1 FROM files WHERE files.sha1 = :sha1) "
    "AND NOT EXISTS (SELECT 1 FROM pending_uploads WHERE pending_uploads.sha1 = :sha1)"
)
# One statement, so one snapshot: recording a direct upload removes its pending row and adds the file together.
_COPY_IN_USE = text(
    "SELECT 0 FROM files WHERE sha1 = :sha1 AND storage_key = :key "
    "UNION ALL SELECT 1 FROM pending_uploads WHERE upload_id = :upload_id AND created_at >= :live"
)
_ADOPT = text("INSERT INTO blobs (sha1, size, created_at) VALUES (:sha1, :size, :at) ON CONFLICT (sha1) DO NOTHING")
_PENDING_SHA1 = text("SELECT 1 FROM pending_uploads WHERE sha1 = :sha1 AND created_at >= :live")
_ABANDONED = text("SELECT count(*) FROM pending_uploads WHERE created_at < :before")
# Rows appenders never touch again (they insert new ones): no lock is shared with an append.
_OLD_APPEND_IDS = text("DELETE FROM feed_appends WHERE appended_at < :before")
_COUNT_OLD_APPEND_IDS = text("SELECT count(*) FROM feed_appends WHERE appended_at < :before")


class Hub(Protocol):
    """What garbage collection needs of a hub (a :class:`~._state.HubState` is one)."""

    db: Database
    store: ByteStore


@dataclass
class GcReport:
    """What one run found and did (or, with ``dry_run``, would do)."""

    dry_run: bool = False
    considered: int = 0  #: blobs and stored copies looked at
    removed: int = 0
    bytes_freed: int = 0
    kept_protected: int = 0  #: unreferenced, but within the grace period, or an upload in progress wants them
    abandoned_uploads: int = 0
    temp_files: int = 0
    append_ids: int = 0  #: feed append IDs past their retention

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (f"gc: {self.considered} blobs considered, {verb} {self.removed} ({self.bytes_freed / _MiB:.1f} MiB), "
                f"kept {self.kept_protected} unreferenced (grace period or upload in progress); "
                f"{verb} {self.abandoned_uploads} abandoned uploads, {self.temp_files} temp files"
                + (f", {self.append_ids} expired feed append IDs" if self.append_ids else ""))


class _Keep(Exception):
    """Raised inside a removal's transaction to roll it back: the bytes were written within the grace period."""


def collect_garbage(state: Hub, *, grace_seconds: float, dry_run: bool = False,
                    stop: threading.Event | None = None) -> GcReport:
    """Remove the bytes no project references (see the module docstring); ``stop`` ends a run early."""
    from ._feeds import APPEND_ID_SECONDS
    from ._files import ABANDONED_UPLOAD_SECONDS, remove_abandoned_uploads  # _files needs the web stack

    db, store = state.db, state.store
    now = time.time()
    cutoff = now - grace_seconds
    report = GcReport(dry_run=dry_run)
    abandoned = now - ABANDONED_UPLOAD_SECONDS
    expired = {"before": now - APPEND_ID_SECONDS}
    if dry_run:
        with db.read() as conn:
            report.append_ids = int(conn.execute(_COUNT_OLD_APPEND_IDS, expired).scalar_one())
    else:
        with db.begin() as conn:
            report.append_ids = int(conn.execute(_OLD_APPEND_IDS, expired).rowcount)
    if dry_run:
        # Counted as gone, as the run would first remove them; a run removes them, and then every
        # pending upload protects, even one that grows old while it runs.
        live = abandoned
        with db.read() as conn:
            report.abandoned_uploads = int(conn.execute(_ABANDONED, {"before": abandoned}).scalar_one())
    else:
        live = 0.0
        report.abandoned_uploads = remove_abandoned_uploads(db, store, abandoned)
        report.temp_files = store.cleanup()
    legacy: dict[str, StoredObject] = {}  # an object store's blobs at their own path, by sha1
    for batch in _batches(store.objects()):
        if stop is not None and stop.is_set():
            return report
        own = [o for o in batch if o.upload_id is None]
        if not isinstance(store, LocalFolderStore):
            legacy.update((o.sha1, o) for o in own)
        _unrecorded(db, own, cutoff, live, dry_run, report)
        for obj in batch:
            if obj.upload_id is not None:
                _sweep_copy(db, store, obj, cutoff, live, dry_run, report)
    after = ""
    while stop is None or not stop.is_set():
        with db.read() as conn:
            rows = conn.execute(_BLOBS_PAGE, {"after": after, "n": _PAGE, "live": live}).all()
        for row in rows:
            report.considered += 1
            if row.referenced:
                continue
            if row.created_at >= cutoff or row.pending:
                report.kept_protected += 1
                continue
            freed = _would_free(store, row.sha1, cutoff, legacy) if dry_run else _remove_blob(
                db, store, row.sha1, cutoff, legacy)
            if freed is None:
                report.kept_protected += 1
            else:
                report.removed += 1
                report.bytes_freed += freed
        if len(rows) < _PAGE:
            break
        after = rows[-1].sha1
    return report


def _batches(objects: Iterator[StoredObject]) -> Iterator[list[StoredObject]]:
    batch: list[StoredObject] = []
    for obj in objects:
        batch.append(obj)
        if len(batch) == _PAGE:
            yield batch
            batch = []
    if batch:
        yield batch


def _unrecorded(db: Database, own: list[StoredObject], cutoff: float, live: float, dry_run: bool,
                report: GcReport) -> None:
    """Bytes at a blob's own path that no row records: old ones get a row, which the pass over rows then judges."""
    if not own:
        return
    blobs = tables.blobs
    with db.read() as conn:
        known = set(conn.execute(select(blobs.c.sha1).where(blobs.c.sha1.in_([o.sha1 for o in own]))).scalars())
    for obj in own:
        if obj.sha1 in known:
            continue
        if obj.modified >= cutoff:  # placed by an upload that is being recorded, perhaps
            report.considered += 1
            report.kept_protected += 1
        elif dry_run:
            report.considered += 1
            with db.read() as conn:
                pending = conn.execute(_PENDING_SHA1, {"sha1": obj.sha1, "live": live}).first() is not None
            if pending:
                report.kept_protected += 1
            else:
                report.removed += 1
                report.bytes_freed += obj.size
        else:
            # Recorded as of when the bytes were written: the grace period has passed for them already.
            with db.begin() as conn:
                conn.execute(_ADOPT, {"sha1": obj.sha1, "size": obj.size, "at": obj.modified})


def _sweep_copy(db: Database, store: ByteStore, obj: StoredObject, cutoff: float, live: float, dry_run: bool,
                report: GcReport) -> None:
    """An object store's copy of a project's file: removed when neither a file nor a pending upload names it."""
    report.considered += 1
    with db.read() as conn:
        uses = set(conn.execute(_COPY_IN_USE, {"sha1": obj.sha1, "key": obj.key, "upload_id": obj.upload_id,
                                               "live": live}).scalars())
    if 0 in uses:  # a project's file
        return
    if 1 in uses or obj.modified >= cutoff:
        report.kept_protected += 1
        return
    if not dry_run:
        store.remove(obj.key)
    report.removed += 1
    report.bytes_freed += obj.size


def _would_free(store: ByteStore, sha1: str, cutoff: float, legacy: dict[str, StoredObject]) -> int | None:
    if isinstance(store, LocalFolderStore):
        try:
            st = store.blob_path(sha1).stat()
        except FileNotFoundError:
            return 0
        return None if st.st_mtime >= cutoff else st.st_size
    obj = legacy.get(sha1)
    return 0 if obj is None else obj.size


def _remove_blob(db: Database, store: ByteStore, sha1: str, cutoff: float,
                 legacy: dict[str, StoredObject]) -> int | None:
    """Remove one unreferenced blob's row and bytes; None if it turned out to be in use or too recent."""
    blobs = tables.blobs
    aside: Path | None = None
    try:
        with db.begin() as conn:
            conn.execute(select(blobs.c.sha1).where(blobs.c.sha1 == sha1).with_for_update()).first()
            if not conn.execute(_DELETE_UNUSED, {"sha1": sha1, "cutoff": cutoff}).rowcount:
                return None  # recorded (or pending) again since the scan
            freed, aside = _move_aside(conn, store, sha1, cutoff, legacy)
    except _Keep:
        return None
    except IntegrityError:
        return None  # the foreign key of a file recorded meanwhile
    if aside is not None:
        # After the commit: freeing a big file's blocks takes time, and the lock is not needed for it.
        aside.unlink(missing_ok=True)
    return freed


def _move_aside(conn: Connection, store: ByteStore, sha1: str, cutoff: float,
                legacy: dict[str, StoredObject]) -> tuple[int, Path | None]:
    """Take a blob's bytes out of its own path, in the transaction that deletes its row (see the module docstring)."""
    if not isinstance(store, LocalFolderStore):
        obj = legacy.get(sha1)
        if obj is None:
            return 0, None  # its bytes are projects' copies, swept on their own
        store.remove(obj.key)
        return obj.size, None
    path = store.blob_path(sha1)
    try:
        st = path.stat()
    except FileNotFoundError:
        return 0, None
    if st.st_mtime >= cutoff:
        raise _Keep  # placed by an upload that is about to record it
    # Into the store's temp folder under a name no process locks: if this process dies before the
    # unlink, the store's cleanup removes it.
    aside = store.tmp_dir / f"gc-{sha1}-{secrets.token_hex(4)}.tmp"
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return 0, None
    return st.st_size, aside


class PeriodicCollector:
    """Runs :func:`collect_garbage` every ``interval`` seconds in a thread of its own until :meth:`stop`."""

    def __init__(self, state: Hub, interval: float, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> None:
        self._state = state
        self._interval = interval
        self._grace = grace_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kachery-hub-gc", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                report = collect_garbage(self._state, grace_seconds=self._grace, stop=self._stop)
            except Exception:  # a store or database that is away for a while: try again next time
                log.exception("garbage collection failed")
                continue
            if report.removed or report.abandoned_uploads or report.temp_files or report.append_ids:
                log.info("%s", report.summary())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start_periodic(state: Hub, settings: Settings) -> PeriodicCollector | None:
    """The periodic run ``settings`` asks for (``KACHERY_HUB_GC_INTERVAL``), or None when it is off."""
    if not settings.gc_interval_seconds:
        return None
    return PeriodicCollector(state, settings.gc_interval_seconds)

"""Schema migrations with Alembic, so an upgraded hub keeps its data.

The revisions live in the package (``kachery_hub/migrations/versions``) and run
from code: no ``alembic.ini``. On start the hub takes the migration lock, then
upgrades the database to the newest revision in one transaction, so a failed
upgrade leaves the database as it was:

- PostgreSQL: ``pg_advisory_xact_lock``, so of several replicas starting at
  once one upgrades and the others wait, then find the database at head;
- SQLite: ``BEGIN IMMEDIATE`` (the database's write lock), which a second
  process (``kachery-hub token create``) waits for in the same way.

Releases before Alembic counted migrations 1 to 8 in a one-row table
``schema_version``. A database with that table and no ``alembic_version`` is
stamped with the revision of its number (:data:`LEGACY_REVISIONS`; their SQL is
the same) and upgraded from there. Afterwards ``schema_version`` holds
:data:`ALEMBIC_MARK`, far above 8, so such an older release refuses the database
("newer than this hub knows") instead of running on a schema it does not know.
A database at a revision this hub does not know (a newer release upgraded it)
is refused with a :class:`~kachery_hub.errors.ConfigurationError`.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from .errors import ConfigurationError

#: where the revisions are (``env.py`` and ``versions/``)
SCRIPTS = Path(__file__).with_name("migrations")

#: ``schema_version`` of a release before Alembic -> the revision that left the same schema
LEGACY_REVISIONS: dict[int, str] = {
    1: "0001_initial",
    2: "0002_browser_sessions",
    3: "0003_oidc_logins",
    4: "0004_storage_keys",
    5: "0005_token_ids",
    6: "0006_feeds",
    7: "0007_tasks",
    8: "0008_files_labels_index",
}

#: what ``schema_version`` says once Alembic manages the database (older releases refuse it)
ALEMBIC_MARK = 1_000_000

# Alembic's ``context`` and ``op`` are module globals: one upgrade at a time in this process.
_ALEMBIC = threading.Lock()

# Any constant 64-bit key will do; this one is the first 8 bytes of sha1("kachery-hub migrations").
_PG_LOCK_KEY = 0x4A2F_1A35_74DD_7082


@cache
def _scripts(location: Path) -> ScriptDirectory:
    # Reading the revision files once per process keeps every later start (and test) cheap.
    return ScriptDirectory.from_config(_config(location))


def _config(location: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(location).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision(scripts: Path = SCRIPTS) -> str:
    """The newest revision this hub knows."""
    head = _scripts(scripts).get_current_head()
    assert head is not None, "no revisions"
    return head


def _refuse_newer(revision: str | int, head: str) -> ConfigurationError:
    what = f"schema revision {revision!r}" if isinstance(revision, str) else f"schema version {revision}"
    return ConfigurationError(
        f"the database is at {what}, which this hub does not know (its newest is {head!r}): a newer "
        "kachery-jupyter has upgraded it. Upgrade this one (pip install -U 'kachery-jupyter[hub]') "
        "or give the hub another database"
    )


def _legacy_version(conn: Connection) -> int | None:
    """``schema_version``'s number, if a release before Alembic made this database."""
    if not inspect(conn).has_table("schema_version"):
        return None
    row = conn.execute(text("SELECT version FROM schema_version")).first()
    return int(row[0]) if row is not None else 0


def _current(conn: Connection, scripts: Path, *, adopt: bool) -> str | None:
    """The database's revision (None: empty); with ``adopt``, a database from before Alembic is stamped."""
    script = _scripts(scripts)
    head = head_revision(scripts)
    heads = MigrationContext.configure(conn).get_current_heads()
    known = {s.revision for s in script.walk_revisions()}
    for revision in heads:
        if revision not in known:
            raise _refuse_newer(revision, head)
    if len(heads) > 1:
        raise ConfigurationError(f"the database is at several schema revisions at once ({', '.join(heads)})")
    if heads:
        return heads[0]
    legacy = _legacy_version(conn)
    if not legacy:  # no table, or a first migration that never committed: an empty database
        return None
    if legacy == ALEMBIC_MARK:
        raise ConfigurationError("the database's table alembic_version is missing (schema_version says Alembic "
                                 "manages it): restore it from a backup")
    if legacy not in LEGACY_REVISIONS:
        raise _refuse_newer(legacy, head)
    revision = LEGACY_REVISIONS[legacy]
    if adopt:
        MigrationContext.configure(conn).stamp(script, revision)
    return revision


def current_revision(engine: Engine, scripts: Path = SCRIPTS) -> str | None:
    """The database's revision, read only (a database from before Alembic: the revision of its number)."""
    with engine.connect() as conn:
        return _current(conn, scripts, adopt=False)


def before_alembic(engine: Engine) -> int | None:
    """``schema_version``'s number if a release before Alembic made the database and no hub has adopted it yet."""
    with engine.connect() as conn:
        if inspect(conn).has_table("alembic_version"):
            return None
        return _legacy_version(conn) or None


def _lock(conn: Connection) -> None:
    # SQLite: the hub's engine begins every transaction with BEGIN IMMEDIATE, the write lock.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _mark(conn: Connection) -> None:
    if _legacy_version(conn) == ALEMBIC_MARK:
        return
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
    conn.execute(text("DELETE FROM schema_version"))
    conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": ALEMBIC_MARK})


def migrate(engine: Engine, target: str = "head", scripts: Path = SCRIPTS) -> list[str]:
    """Upgrade the database to ``target`` under the migration lock; returns the revisions applied, in order."""
    with engine.begin() as conn:
        _lock(conn)
        current = _current(conn, scripts, adopt=True)
        applied: list[str] = []
        if current != (head_revision(scripts) if target == "head" else target):
            cfg = _config(scripts)
            cfg.attributes["connection"] = conn
            cfg.attributes["applied"] = applied
            with _ALEMBIC:
                command.upgrade(cfg, target)
        _mark(conn)
    return applied

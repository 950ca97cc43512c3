"""The metadata database: one SQLAlchemy engine, the tables, and transactions.

SQLite (the embedded default) and PostgreSQL are selected by URL alone. The
schema is created and upgraded by :mod:`._migrations`; the ``Table`` objects
here describe the latest schema for queries.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    delete,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from . import _migrations
from .errors import ConfigurationError

metadata = MetaData()
T = TypeVar("T")

users = Table(
    "users", metadata,
    Column("id", Text, primary_key=True),
    Column("email", Text, nullable=False, unique=True),
    Column("email_verified", Boolean, nullable=False),
    Column("display_name", Text),
    Column("is_admin", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
)
identities = Table(
    "identities", metadata,
    Column("provider", Text, primary_key=True),
    Column("subject", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
tokens = Table(
    "tokens", metadata,
    Column("token_hash", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("label", Text),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("revoked", Boolean, nullable=False),
    Column("id", Text, unique=True),  # public: what lists show and revoke names
    Column("last_used_at", Float),
    Column("revoked_at", Float),
)
projects = Table(
    "projects", metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("owner_user_id", Text, nullable=False),
    Column("public_read", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
)
members = Table(
    "members", metadata,
    Column("project_id", Text, primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("role", Text, nullable=False),
)
clients = Table(
    "clients", metadata,
    Column("client_id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("label", Text),
    Column("default_project_id", Text),
    Column("created_at", Float, nullable=False),
    Column("token_id", Text),  # the token that signed it in (directly or through a browser session)
)
blobs = Table(
    "blobs", metadata,
    Column("sha1", Text, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)
files = Table(
    "files", metadata,
    Column("project_id", Text, primary_key=True),
    Column("sha1", Text, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("label", Text),
    Column("created_by", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # Object stores: the project's own copy of the bytes (None: the sha1 path, or a folder store).
    Column("storage_key", Text),
)
pending_uploads = Table(
    "pending_uploads", metadata,
    Column("upload_id", Text, primary_key=True),
    Column("project_id", Text, nullable=False),
    Column("sha1", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
mutables = Table(
    "mutables", metadata,
    Column("project_id", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_by", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)
feeds = Table(
    "feeds", metadata,
    Column("feed_id", Text, primary_key=True),
    Column("project_id", Text, nullable=False),
    Column("label", Text),
    Column("created_by", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("message_count", BigInteger, nullable=False),
    Column("last_append_at", Float),
)
feed_batches = Table(
    "feed_batches", metadata,
    Column("feed_id", Text, primary_key=True),
    Column("first_number", BigInteger, primary_key=True),
    Column("count", Integer, nullable=False),
    Column("bodies", Text, nullable=False),  # the messages' JSON texts joined by ","
    Column("lengths", Text, nullable=False),  # their lengths, joined by ","
    Column("appended_at", Float, nullable=False),
    Column("appended_by", Text, nullable=False),
)
feed_appends = Table(  # appends sent with an append ID, for as long as a retry may come (see _feeds)
    "feed_appends", metadata,
    Column("feed_id", Text, primary_key=True),
    Column("client_id", Text, primary_key=True),
    Column("append_id", Text, primary_key=True),
    Column("first_number", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("digest", Text, nullable=False),  # sha1 of the messages' JSON texts joined by ","
    Column("appended_at", Float, nullable=False),
)
task_backends = Table(
    "task_backends", metadata,
    Column("project_id", Text, primary_key=True),
    Column("backend_id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("client_id", Text, nullable=False),
    Column("label", Text),
    Column("handlers", Text, nullable=False),  # JSON: [{"task_type", "task_name"}]
    Column("num_workers", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)
task_jobs = Table(
    "task_jobs", metadata,
    Column("project_id", Text, primary_key=True),
    Column("job_id", Text, primary_key=True),
    Column("task_type", Text, nullable=False),
    Column("task_name", Text, nullable=False),
    Column("task_input", Text, nullable=False),  # canonical JSON
    Column("status", Text, nullable=False),  # pending, started, finished, error, cancelled
    Column("attempts", Integer, nullable=False),
    Column("requested_by", Text),  # user id; None: an anonymous request (public project)
    Column("requested_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("backend_id", Text),
    Column("lease_expires_at", Float),
    Column("progress", Text),  # JSON {"fraction", "message"}
    Column("result", Text),  # JSON, when small enough
    Column("result_uri", Text),  # sha1:// of a file in the project holding the result's JSON
    Column("error", Text),  # JSON {"type", "message", "traceback"}
    Column("cancel_requested", Boolean, nullable=False),
    Column("version", BigInteger, nullable=False),  # bumped at each change: what job streams follow
)
sessions = Table(
    "sessions", metadata,
    Column("session_hash", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("token_id", Text),  # ended when that token is revoked; None after an OpenID sign-in
)
sign_in_requests = Table(
    "sign_in_requests", metadata,
    Column("id_hash", Text, primary_key=True),
    Column("client_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("user_id", Text),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("label", Text),
)

oidc_logins = Table(
    "oidc_logins", metadata,
    Column("state_hash", Text, primary_key=True),
    Column("browser_hash", Text, nullable=False),
    Column("nonce", Text, nullable=False),
    Column("code_verifier", Text, nullable=False),
    Column("next_path", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
nonces = Table(
    "nonces", metadata,
    Column("nonce", Text, primary_key=True),
    Column("expires_at", Float, nullable=False),
)


# ON CONFLICT DO NOTHING is understood by SQLite and PostgreSQL alike. Built once: every signed
# request runs it, and building a statement costs more than running it.
_REMEMBER_NONCE = "INSERT INTO nonces (nonce, expires_at) VALUES (:n, :e) ON CONFLICT (nonce) DO NOTHING"


_READ_ONLY = "kachery_read_only"


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(8)


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # pysqlite would commit before DDL and begin lazily; we emit BEGIN ourselves (see _sqlite_begin)
    # so a migration is all-or-nothing like any other transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so concurrent writers wait (busy_timeout)
    # instead of failing when a read turns into a write. Reads (Database.read) take no lock.
    begin = "BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE"
    conn.connection.driver_connection.execute(begin)  # type: ignore[union-attr]  # (sqlite3, below SQLAlchemy)


#: Connections a hub process keeps open to a server database (PostgreSQL), and how many more it may open
#: for a burst (closed once returned). SQLAlchemy's default of 5 kept is below the threads that run
#: database work (:data:`._auth._THREADS`): under load, connections were opened and closed all the time,
#: each a new server process.
POOL_SIZE = 20
POOL_OVERFLOW = 10


class Database:
    """The engine plus the few operations every module needs."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as e:
            raise ConfigurationError(f"database URL {url!r} is not valid: {e}") from None
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs.update(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
        self.url = url
        self.engine: Engine = create_engine(url, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        self._last_purge = 0.0
        # SQLite has one writer at a time, and every transaction here is a writer (BEGIN
        # IMMEDIATE). Threads of this process queue on a lock instead of SQLite's busy handler,
        # which polls with sleeps of up to 100 ms and so gives long tails under load; other
        # processes (``kachery-hub token create``) still meet the busy timeout.
        self._writer = threading.Lock() if parsed.get_backend_name() == "sqlite" else None
        # SQLite: the writer's connection is kept between transactions, used under that lock by one
        # thread at a time (a pool checkout and return cost more than a small request's statements).
        self._writer_conn: Connection | None = None

    def migrate(self) -> list[str]:
        """Upgrade the schema to this hub's newest revision (see :mod:`._migrations`); the revisions applied."""
        try:
            return _migrations.migrate(self.engine)
        except BaseException:
            self.engine.dispose()  # a hub that does not start (e.g. refused a newer database) keeps no connection
            raise

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        if self._writer is None:
            with self.engine.begin() as pooled:
                yield pooled
            return
        with self._writer:
            kept = self._writer_conn
            if kept is None or kept.closed or kept.invalidated:
                kept = self._writer_conn = self.engine.connect()
            with kept.begin():
                yield kept

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection that only reads, for the hot paths of followers.

        On SQLite a transaction that waits for no writer (WAL keeps its snapshot); on PostgreSQL
        no transaction at all (each statement sees what is committed), which saves the BEGIN and
        COMMIT round trips.
        """
        if self._writer is None:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                yield conn
            return
        with self.engine.connect().execution_options(**{_READ_ONLY: True}) as conn, conn.begin():
            yield conn

    def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(conn, *args)`` in a transaction of its own (call it from a worker thread)."""
        with self.begin() as conn:
            return work(conn, *args)

    def remember_nonce(self, conn: Connection, nonce: str, expires_at: float) -> bool:
        """Record a request nonce in ``conn``'s transaction; False if it was seen before (a replay)."""
        now = time.time()
        if now - self._last_purge > 60:
            self._last_purge = now
            conn.execute(delete(nonces).where(nonces.c.expires_at < now))
        return bool(run_sql(conn, _REMEMBER_NONCE, {"n": nonce, "e": expires_at}))

    def close(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None
        self.engine.dispose()


# ---------------------------------------------------------------- statements below SQLAlchemy
#
# Running a statement through SQLAlchemy costs ~50-80 µs of Python; SQLite takes ~10 µs for the
# lookups every request makes (its nonce, its client, the project and the caller's role, a job).
# Those few run on the driver's connection directly, in the same transaction, with SQL written
# for both databases and ``:name`` parameters.

_NAMED = re.compile(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)")
_PYFORMAT: dict[str, str] = {}
_ROW_TYPES: dict[tuple[str, ...], Any] = {}


def _driver_sql(conn: Connection, sql: str) -> str:
    if conn.dialect.name == "sqlite":
        return sql  # sqlite3 takes :name itself
    converted = _PYFORMAT.get(sql)
    if converted is None:  # psycopg: %(name)s
        converted = _PYFORMAT[sql] = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
    return converted


def fetch_one(conn: Connection, sql: str, params: dict[str, Any]) -> Any:
    """The first row of ``sql`` (a named tuple: ``row.column``, ``row._asdict()``), or None."""
    rows = _fetch(conn, sql, params, one=True)
    return rows[0] if rows else None


def fetch_all(conn: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
    """Every row of ``sql``, as :func:`fetch_one` gives one."""
    return _fetch(conn, sql, params, one=False)


def _fetch(conn: Connection, sql: str, params: dict[str, Any], *, one: bool) -> list[Any]:
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(_driver_sql(conn, sql), params)
        if one:
            first = cursor.fetchone()
            rows = [] if first is None else [first]
        else:
            rows = cursor.fetchall()
        if not rows:
            return []
        names = tuple(d[0] for d in cursor.description)
    finally:
        cursor.close()
    row_type = _ROW_TYPES.get(names)
    if row_type is None:  # one named tuple class per column list
        row_type = _ROW_TYPES[names] = namedtuple("Row", names, rename=True)
    return [row_type(*values) for values in rows]


def run_sql(conn: Connection, sql: str, params: dict[str, Any]) -> int:
    """Run a statement that returns no rows; how many rows it changed."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(_driver_sql(conn, sql), params)
        return int(cursor.rowcount)
    finally:
        cursor.close()

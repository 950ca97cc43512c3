"""A hub process keeps its PostgreSQL connections: bursts of concurrent database work reuse them
instead of opening a new server process (connection) for each, which under load cost PostgreSQL
more CPU than the work itself (bench/bench_load_store.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hub_fixtures import _fresh_postgres_database, postgres_server  # noqa: F401
from sqlalchemy import text

from kachery_hub._auth import _THREADS
from kachery_hub._database import POOL_OVERFLOW, POOL_SIZE, Database


@pytest.fixture
def db(postgres_server: str) -> Iterator[Database]:  # noqa: F811
    database = Database(_fresh_postgres_database(postgres_server))
    try:
        yield database
    finally:
        database.engine.dispose()


def _sessions(db: Database) -> int:
    """Connections ever opened to this database (PostgreSQL counts them; this query's own included)."""
    with db.engine.connect() as conn:
        return int(conn.execute(text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()"))
                   .scalar_one())


def _burst(db: Database, n: int) -> None:
    """``n`` transactions at once, each held open a moment (as concurrent requests do)."""
    all_in = threading.Barrier(n, timeout=5)

    def work(conn: object) -> None:
        try:
            all_in.wait()
        except threading.BrokenBarrierError:
            pass  # fewer connections than work: the others wait for one
        conn.execute(text("SELECT pg_sleep(0.05)"))  # type: ignore[attr-defined]

    threads = [threading.Thread(target=db.run, args=(work,)) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_bursts_of_concurrent_work_reuse_the_connections_kept(db: Database) -> None:
    burst = 16  # requests doing database work at once: a busy hub runs it on up to _THREADS' 40 threads
    assert burst <= _THREADS._max_workers and POOL_SIZE + POOL_OVERFLOW > 0
    _burst(db, burst)  # the first opens them
    pg_stat_flush = _sessions(db)
    for _ in range(3):
        _burst(db, burst)
    # Statistics reach pg_stat_database when a session ends or every so often: a new session ends
    # only when a connection is closed, which is exactly what must not happen.
    assert _sessions(db) - pg_stat_flush <= 1, "connections were opened (and closed) for each burst"

"""Schema migrations (Alembic): fresh databases, databases from the release before Alembic, and concurrent starts.

``tests/data/hub-schema8.sqlite3`` was made by the last release before Alembic (schema_version 8):
its hub, in-process, with alice signed in storing two files, two mutables, a feed of four
messages, a project "lab" with bob as a writer, and a calculation ``add(a=2, b=3)`` served by a
task backend; then checkpointed and vacuumed to 512-byte pages to stay small. Its bytes are not
kept (only the metadata matters here). ``tests/data/legacy_migrations.py`` is that release's
migration code, verbatim: it makes the same databases on PostgreSQL, and at earlier versions.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("alembic")

from hub_fixtures import *  # noqa: E402,F403
from hub_fixtures import _fresh_postgres_database  # noqa: E402
from sqlalchemy import Boolean, Engine, create_engine, inspect, select, text  # noqa: E402

import hub_fixtures  # noqa: E402
import kachery_core as kc  # noqa: E402
from kachery_hub import Settings, create_app  # noqa: E402
from kachery_hub._accounts import create_token  # noqa: E402
from kachery_hub._cli import main as hub_main  # noqa: E402
from kachery_hub._database import Database, metadata, users  # noqa: E402
from kachery_hub._migrations import (  # noqa: E402
    ALEMBIC_MARK,
    LEGACY_REVISIONS,
    SCRIPTS,
    current_revision,
    head_revision,
    migrate,
)
from kachery_hub.errors import ConfigurationError  # noqa: E402

DATA = Path(__file__).parent / "data"
SCHEMA8 = DATA / "hub-schema8.sqlite3"
HEAD = head_revision()
AFTER_ALEMBIC = ["0009_feed_appends"]  # revisions made since, and the tables they add
NEW_TABLES = {"feed_appends"}
ALL = [*LEGACY_REVISIONS.values(), *AFTER_ALEMBIC]  # every revision so far, in order

# What the fixture holds
ALICE_PROJECT, LAB = "p4fd7f282b300dabd", "pfaa1a57f94b649fc"
FEED = "f6cc7cbfc6191c7d6b7ef074f908922b7"
HELLO = "sha1://777ac4e8af593811bc9f8bc29726e9064681e5d6?label=hello.txt"


def _legacy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("legacy_migrations", DATA / "legacy_migrations.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("legacy_migrations", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


legacy = _legacy()


def _url(engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest, name: str = "hub") -> str:
    if engine_kind == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.sqlite')}"
    return _fresh_postgres_database(request.getfixturevalue("postgres_server"))


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _rows(engine: Engine) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every table the hub knows, typed by its ``Table`` (so booleans compare alike); empty ones left out."""
    with engine.connect() as conn:
        found = {name: set(map(tuple, conn.execute(select(table)).all())) for name, table in metadata.tables.items()
                 if inspect(conn).has_table(name)}
    return {name: rows for name, rows in found.items() if rows}


def _schema(engine: Engine) -> dict[str, dict[str, Any]]:
    """Tables as the database describes them: columns, keys, indexes, references (bookkeeping tables left out)."""
    insp = inspect(engine)
    out: dict[str, dict[str, Any]] = {}
    for t in insp.get_table_names():
        if t in ("alembic_version", "schema_version"):
            continue
        out[t] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)],
            "pk": insp.get_pk_constraint(t)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
            "references": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                                 for f in insp.get_foreign_keys(t)),
        }
    return out


def _sqlite_master(path: Path) -> list[tuple[str, str, str]]:
    """SQLite's own record of the schema: the CREATE statements' text, as run."""
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                                   "AND name NOT IN ('alembic_version', 'schema_version')").fetchall())


def _alembic_version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def _copy_schema8_rows(url: str) -> None:
    """The fixture's rows into ``url`` (a database at schema version 8), parents first."""
    src = sqlite3.connect(f"file:{SCHEMA8}?mode=ro", uri=True)
    engine = create_engine(url)
    try:
        order = [r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid")]
        with engine.begin() as conn:
            for name in order:
                if name == "schema_version":
                    continue
                table = metadata.tables[name]
                cursor = src.execute(f"SELECT * FROM {name}")
                columns = [d[0] for d in cursor.description]
                rows = [{c: (bool(v) if isinstance(table.c[c].type, Boolean) and v is not None else v)
                         for c, v in zip(columns, row)} for row in cursor]
                if rows:
                    conn.execute(table.insert(), rows)
    finally:
        src.close()
        engine.dispose()


@pytest.fixture
def schema8(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(kind, database URL): a hub database as the release before Alembic left it, with its data."""
    kind = request.param
    if kind == "sqlite":
        path = tmp_path / "hub" / "hub.sqlite"
        path.parent.mkdir(mode=0o700)
        shutil.copy(SCHEMA8, path)
        yield kind, f"sqlite:///{path}"
        return
    url = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    engine = create_engine(url)
    try:
        assert legacy.migrate(engine) == list(range(1, 9))
    finally:
        engine.dispose()
    _copy_schema8_rows(url)
    yield kind, url


# ---------------------------------------------------------------- a database made by the release before


@pytest.mark.parametrize("schema8", ["sqlite", "postgresql"], indirect=True)
def test_a_database_from_the_release_before_alembic_upgrades_in_place_keeping_its_data(
    schema8: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    kind, url = schema8
    with _engine(url) as engine:
        before = _rows(engine)
    assert before["users"] and before["files"] and before["feed_batches"] and before["task_jobs"]
    db = Database(url)
    try:
        assert current_revision(db.engine) == LEGACY_REVISIONS[8]  # read only: not stamped yet
        with db.engine.connect() as conn:
            assert not inspect(conn).has_table("alembic_version")
        db.migrate()
        assert _alembic_version(db.engine) == [HEAD]
        assert _rows(db.engine) == before
        with db.begin() as conn:
            assert conn.execute(text("SELECT version FROM schema_version")).scalar_one() == ALEMBIC_MARK
    finally:
        db.close()

    # The hub starts on it, and what alice and bob had is all there.
    monkeypatch.setattr(hub_fixtures, "_fresh_postgres_database", lambda server_url: url)
    hubs = make_hub("sqlite" if kind == "sqlite" else "postgresql", request, tmp_path, monkeypatch)  # noqa: F405
    hub = next(hubs)
    try:
        hub.sign_in("alice", "alice@example.org")
        assert {p["name"] for p in kc.list_projects()} == {"default", "lab"}
        assert kc.get_mutable("config/name", project_id=ALICE_PROJECT) == "schema-8 fixture"
        assert kc.load_file_info(HELLO)["size"] == len("hello from schema 8")
        assert kc.load_feed(FEED).get_messages() == [{"n": 1}, {"n": 2}, {"text": "three"}, {"n": 4}]
        assert kc.request_task(task_type="calculation", task_name="add", task_input={"a": 2, "b": 3},
                               project_id=ALICE_PROJECT, timeout_sec=5) == 5  # the cached result: no backend
        assert {(m["email"], m["role"]) for m in kc.list_project_members(LAB)} >= {("bob@example.org", "write")}
    finally:
        next(hubs, None)

    # Opening it again changes nothing.
    engine = create_engine(url)
    try:
        rows, schema = _rows(engine), _schema(engine)
        db = Database(url)
        try:
            assert db.migrate() == []
        finally:
            db.close()
        assert (_rows(engine), _schema(engine), _alembic_version(engine)) == (rows, schema, [HEAD])
    finally:
        engine.dispose()


@pytest.mark.parametrize("engine_kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("version", sorted(LEGACY_REVISIONS))
def test_a_database_at_any_earlier_version_gets_the_revisions_after_it(
    engine_kind: str, version: int, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    url = _url(engine_kind, tmp_path, request)
    engine = create_engine(url)
    try:
        assert legacy.migrate(engine, legacy.MIGRATIONS[:version]) == list(range(1, version + 1))
    finally:
        engine.dispose()
    db = Database(url)
    try:
        assert db.migrate() == ALL[version:]
        assert _alembic_version(db.engine) == [HEAD]
        fresh = Database(_url(engine_kind, tmp_path, request, "fresh"))
        try:
            fresh.migrate()
            assert _schema(db.engine) == _schema(fresh.engine)
        finally:
            fresh.close()
    finally:
        db.close()


def test_an_upgraded_database_is_refused_by_the_release_before_alembic(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    try:
        db.migrate()
        # that release would otherwise find nothing (or version 8) and run on a schema it does not know
        with pytest.raises(RuntimeError, match=f"schema version {ALEMBIC_MARK}, newer than this hub knows"):
            legacy.migrate(db.engine)
    finally:
        db.close()


# ---------------------------------------------------------------- fresh databases


@pytest.mark.parametrize("engine_kind", ["sqlite", "postgresql"])
def test_a_fresh_database_reaches_head_and_has_the_tables_the_hub_queries(
    engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    db = Database(_url(engine_kind, tmp_path, request))
    try:
        assert db.migrate() == ALL
        assert _alembic_version(db.engine) == [HEAD] and current_revision(db.engine) == HEAD
        assert db.migrate() == []
        insp = inspect(db.engine)
        assert set(insp.get_table_names()) == set(metadata.tables) | {"alembic_version", "schema_version"}
        for name, table in metadata.tables.items():
            reflected = {c["name"]: c for c in insp.get_columns(name)}
            assert list(reflected) == [c.name for c in table.columns], name
            for column in table.columns:
                got = reflected[column.name]
                assert got["type"].python_type is column.type.python_type, (name, column.name)
                if not column.primary_key:  # SQLite reports a TEXT primary key as nullable
                    assert got["nullable"] == column.nullable, (name, column.name)
            assert insp.get_pk_constraint(name)["constrained_columns"] == [c.name for c in table.primary_key]
            uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints(name)}
            uniques |= {tuple(i["column_names"]) for i in insp.get_indexes(name) if i["unique"]}
            for column in table.columns:
                if column.unique:
                    assert (column.name,) in uniques, (name, column.name)
    finally:
        db.close()


@pytest.mark.parametrize("engine_kind", ["sqlite", "postgresql"])
def test_a_fresh_database_has_the_schema_the_release_before_alembic_made(
    engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    db = Database(_url(engine_kind, tmp_path, request))
    old = create_engine(_url(engine_kind, tmp_path, request, "old"))
    try:
        db.migrate()
        legacy.migrate(old)
        fresh = _schema(db.engine)
        assert set(fresh) - set(_schema(old)) == NEW_TABLES  # and the revisions since add only their tables
        assert {t: d for t, d in fresh.items() if t not in NEW_TABLES} == _schema(old)
        if engine_kind == "sqlite":  # SQLite keeps each CREATE's text: the same statements, to the space
            made = [r for r in _sqlite_master(tmp_path / "hub.sqlite") if not r[1].startswith(tuple(NEW_TABLES))]
            assert made == _sqlite_master(tmp_path / "old.sqlite")
    finally:
        db.close()
        old.dispose()


# ---------------------------------------------------------------- concurrent starts


@pytest.mark.parametrize("engine_kind", ["sqlite", "postgresql"])
def test_two_hubs_migrating_one_fresh_database_at_once_both_start(
    engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    url = _url(engine_kind, tmp_path, request)
    dbs = [Database(url), Database(url)]
    for db in dbs:  # connected first: on a new SQLite file, two first connections race to set WAL mode
        db.engine.connect().close()
    start = threading.Barrier(2)
    results: list[list[str] | BaseException] = [[], []]

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = dbs[i].migrate()
        except BaseException as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(results, key=len) == [[], ALL]  # one upgraded; the other waited and found it done
        assert _alembic_version(dbs[0].engine) == [HEAD]
    finally:
        for db in dbs:
            db.close()


def test_two_hub_replicas_starting_at_once_on_one_fresh_postgresql_both_serve(
    tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    url = _fresh_postgres_database(request.getfixturevalue("postgres_server"))
    start = threading.Barrier(2)
    apps: list[Any] = [None, None]

    def run(i: int) -> None:
        start.wait()
        try:
            apps[i] = create_app(Settings(data_dir=tmp_path / f"replica{i}", database_url=url))
        except BaseException as e:  # reported below
            apps[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(isinstance(a, BaseException) for a in apps), apps
    try:
        create_token(apps[0].state.hub.db, "x@example.org")
        with apps[1].state.hub.db.begin() as conn:
            assert conn.execute(select(users.c.email)).scalars().all() == ["x@example.org"]
    finally:
        for app in apps:
            app.state.hub.close()


# ---------------------------------------------------------------- refusals and failures


@pytest.mark.parametrize("engine_kind", ["sqlite", "postgresql"])
def test_a_database_at_a_revision_this_hub_does_not_know_is_refused_with_a_clear_message(
    engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str],
) -> None:
    url = _url(engine_kind, tmp_path, request)
    db = Database(url)
    try:
        db.migrate()
        with db.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0042_from_a_newer_release'"))
        with pytest.raises(ConfigurationError, match="schema revision '0042_from_a_newer_release', which this hub "
                                                     "does not know") as e:
            db.migrate()
        assert HEAD in str(e.value) and "Upgrade this one" in str(e.value)
        with pytest.raises(ConfigurationError, match="0042_from_a_newer_release"):
            create_app(Settings(data_dir=tmp_path / "hub", database_url=url))
        assert _alembic_version(db.engine) == ["0042_from_a_newer_release"]
    finally:
        db.close()
    # The command line says so in one line, no traceback.
    assert hub_main(["migrate", "--data", str(tmp_path / "hub"), "--database", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the database is at schema revision '0042_from_a_newer_release'")
    assert "Traceback" not in err


def _scripts_with(tmp_path: Path, name: str, body: str) -> Path:
    """The hub's revisions plus one more, ``0009_<name>``, whose upgrade() is ``body``."""
    scripts = tmp_path / "migrations"
    shutil.copytree(SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / f"v0009_{name}.py").write_text(
        f'revision = "0009_{name}"\ndown_revision = "{HEAD}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        f"from alembic import op\n\n\ndef upgrade() -> None:\n{body}\n"
    )
    return scripts


def test_a_new_revision_is_applied_on_the_next_start_and_keeps_the_data(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'hub.sqlite'}")
    try:
        db.migrate()
        create_token(db, "kept@example.org")
        scripts = _scripts_with(tmp_path, "users_locale", '    op.execute("ALTER TABLE users ADD COLUMN locale TEXT")')
        assert migrate(db.engine, scripts=scripts) == ["0009_users_locale"]
        assert migrate(db.engine, scripts=scripts) == []
        assert current_revision(db.engine, scripts) == "0009_users_locale"
        with db.begin() as conn:
            assert conn.execute(text("SELECT email, locale FROM users")).all() == [("kept@example.org", None)]
    finally:
        db.close()


@pytest.mark.parametrize("engine_kind", ["sqlite", "postgresql"])
def test_a_failed_upgrade_changes_nothing(engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = _url(engine_kind, tmp_path, request)
    engine = create_engine(url)
    try:
        legacy.migrate(engine, legacy.MIGRATIONS[:6])  # a database from before Alembic: stamped, then upgraded
        before = _schema(engine)
    finally:
        engine.dispose()
    db = Database(url)
    try:
        scripts = _scripts_with(tmp_path, "broken", '    op.execute("CREATE TABLE extra (x INTEGER)")\n'
                                                    '    op.execute("NOT SQL AT ALL")')
        with pytest.raises(Exception, match="NOT SQL AT ALL"):
            migrate(db.engine, scripts=scripts)
        assert _schema(db.engine) == before  # not even 0007 and 0008, which ran before the broken one
        with db.engine.connect() as conn:
            assert not inspect(conn).has_table("alembic_version")
            assert conn.execute(text("SELECT version FROM schema_version")).scalar_one() == 6
        assert db.migrate() == ALL[6:]
    finally:
        db.close()


# ---------------------------------------------------------------- the command line


def test_kachery_hub_migrate_reports_and_upgrades(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'hub.sqlite'}"
    engine = create_engine(url)
    try:
        legacy.migrate(engine, legacy.MIGRATIONS[:4])
    finally:
        engine.dispose()
    args = ["migrate", "--data", str(tmp_path), "--database", url]
    assert hub_main([*args, "--check"]) == 1  # behind: says so, changes nothing
    out = capsys.readouterr().out
    assert f"database: {LEGACY_REVISIONS[4]} (schema_version 4, from before Alembic)" in out
    assert f"head: {HEAD}" in out and "behind" in out
    with _engine(url) as engine:
        assert current_revision(engine) == LEGACY_REVISIONS[4]
    assert hub_main(args) == 0
    out = capsys.readouterr().out
    assert f"applied: {', '.join(ALL[4:])}" in out and f"database: {HEAD}" in out
    assert hub_main([*args, "--check"]) == 0
    assert f"database: {HEAD}\nhead: {HEAD}\n" in capsys.readouterr().out


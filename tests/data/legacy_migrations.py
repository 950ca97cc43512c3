"""The hub's schema migrations as the release before Alembic had them (schema_version 1..8), verbatim.

For tests only: they make databases as that release left them, to check that today's hub
(kachery_hub/migrations, Alembic) adopts and upgrades them in place. Never edit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    #: run on SQLite only (what PostgreSQL does otherwise, or cannot do the same way)
    sqlite_statements: tuple[str, ...] = ()


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "users, sign-in tokens, clients, projects, members, files, mutables, nonces",
        (
            """CREATE TABLE users (
                id TEXT PRIMARY KEY,
                email TEXT NOT NULL UNIQUE,
                email_verified BOOLEAN NOT NULL,
                display_name TEXT,
                is_admin BOOLEAN NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            # A sign-in through an identity provider (e.g. Google's "sub") maps to a user.
            """CREATE TABLE identities (
                provider TEXT NOT NULL,
                subject TEXT NOT NULL,
                user_id TEXT NOT NULL REFERENCES users(id),
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (provider, subject)
            )""",
            """CREATE TABLE tokens (
                token_hash TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(id),
                label TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION,
                revoked BOOLEAN NOT NULL
            )""",
            """CREATE TABLE projects (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                owner_user_id TEXT NOT NULL REFERENCES users(id),
                public_read BOOLEAN NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE members (
                project_id TEXT NOT NULL REFERENCES projects(id),
                user_id TEXT NOT NULL REFERENCES users(id),
                role TEXT NOT NULL,
                PRIMARY KEY (project_id, user_id)
            )""",
            "CREATE INDEX members_by_user ON members (user_id)",
            """CREATE TABLE clients (
                client_id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(id),
                label TEXT,
                default_project_id TEXT REFERENCES projects(id),
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE blobs (
                sha1 TEXT PRIMARY KEY,
                size BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE files (
                project_id TEXT NOT NULL REFERENCES projects(id),
                sha1 TEXT NOT NULL REFERENCES blobs(sha1),
                size BIGINT NOT NULL,
                label TEXT,
                created_by TEXT NOT NULL REFERENCES users(id),
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (project_id, sha1)
            )""",
            "CREATE INDEX files_by_sha1 ON files (sha1)",
            """CREATE TABLE mutables (
                project_id TEXT NOT NULL REFERENCES projects(id),
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                updated_by TEXT NOT NULL REFERENCES users(id),
                updated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (project_id, key)
            )""",
            """CREATE TABLE nonces (
                nonce TEXT PRIMARY KEY,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX nonces_by_expiry ON nonces (expires_at)",
        ),
    ),
    Migration(
        2,
        "browser sessions and sign-in requests (a notebook asks, the user confirms in a browser)",
        (
            """CREATE TABLE sessions (
                session_hash TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(id),
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE sign_in_requests (
                id_hash TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                status TEXT NOT NULL,
                user_id TEXT REFERENCES users(id),
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "OpenID Connect login attempts; a label for sign-in requests",
        (
            """CREATE TABLE oidc_logins (
                state_hash TEXT PRIMARY KEY,
                browser_hash TEXT NOT NULL,
                nonce TEXT NOT NULL,
                code_verifier TEXT NOT NULL,
                next_path TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            "ALTER TABLE sign_in_requests ADD COLUMN label TEXT",
        ),
    ),
    Migration(
        4,
        "where a project's copy of a file is in an object store (each direct upload has a key of its own)",
        ("ALTER TABLE files ADD COLUMN storage_key TEXT",
         # Upload ids handed out and not completed yet: what to remove if they never are.
         """CREATE TABLE pending_uploads (
                upload_id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                sha1 TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""",
         "CREATE INDEX pending_uploads_by_age ON pending_uploads (created_at)"),
    ),
    Migration(
        5,
        "sign-in tokens get a public ID, last use and revocation time; clients and sessions name their token",
        (
            "ALTER TABLE tokens ADD COLUMN id TEXT",
            "ALTER TABLE tokens ADD COLUMN last_used_at DOUBLE PRECISION",
            "ALTER TABLE tokens ADD COLUMN revoked_at DOUBLE PRECISION",
            # Tokens made before: an ID from their hash (a secret's sha256 tells nothing of the secret).
            "UPDATE tokens SET id = 't' || substr(token_hash, 1, 16) WHERE id IS NULL",
            "CREATE UNIQUE INDEX tokens_by_id ON tokens (id)",
            "ALTER TABLE clients ADD COLUMN token_id TEXT",
            "ALTER TABLE sessions ADD COLUMN token_id TEXT",
        ),
    ),
    Migration(
        6,
        "feeds: append-only logs of JSON messages, numbered from 0 without gaps",
        (
            # message_count is also the number the next message gets: appenders take it under
            # the row's lock, so numbers are handed out in commit order.
            """CREATE TABLE feeds (
                feed_id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL REFERENCES projects(id),
                label TEXT,
                created_by TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                message_count BIGINT NOT NULL,
                last_append_at DOUBLE PRECISION
            )""",
            "CREATE INDEX feeds_by_project ON feeds (project_id, created_at)",
            # One row per append: its messages' canonical JSON texts joined by ',' (ASCII), and their
            # lengths, so a reader can start inside a batch. An append of 1,000 messages is one row.
            """CREATE TABLE feed_batches (
                feed_id TEXT NOT NULL REFERENCES feeds(feed_id),
                first_number BIGINT NOT NULL,
                count INTEGER NOT NULL,
                bodies TEXT NOT NULL,
                lengths TEXT NOT NULL,
                appended_at DOUBLE PRECISION NOT NULL,
                appended_by TEXT NOT NULL,
                PRIMARY KEY (feed_id, first_number)
            )""",
        ),
    ),
    Migration(
        7,
        "tasks: backends serving named functions, and jobs with leases, results and errors",
        (
            """CREATE TABLE task_backends (
                project_id TEXT NOT NULL REFERENCES projects(id),
                backend_id TEXT NOT NULL,
                user_id TEXT NOT NULL,
                client_id TEXT NOT NULL,
                label TEXT,
                handlers TEXT NOT NULL,
                num_workers INTEGER NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                last_seen DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (project_id, backend_id)
            )""",
            # A calculation's job_id is the sha1 of its name and input, so a project holds one job per
            # calculation: its row is the cache. An action gets a new random job_id per request.
            """CREATE TABLE task_jobs (
                project_id TEXT NOT NULL REFERENCES projects(id),
                job_id TEXT NOT NULL,
                task_type TEXT NOT NULL,
                task_name TEXT NOT NULL,
                task_input TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                requested_by TEXT,
                requested_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                backend_id TEXT,
                lease_expires_at DOUBLE PRECISION,
                progress TEXT,
                result TEXT,
                result_uri TEXT,
                error TEXT,
                cancel_requested BOOLEAN NOT NULL,
                version BIGINT NOT NULL,
                PRIMARY KEY (project_id, job_id)
            )""",
            "CREATE INDEX task_jobs_by_status ON task_jobs (project_id, status, requested_at)",
            "CREATE INDEX task_jobs_by_time ON task_jobs (project_id, requested_at)",
        ),
    ),
    Migration(
        8,
        "SQLite: a project's file labels in sha1 order, so a label search reads an index, not the table",
        (),
        # A covering index: searching 100,000 files' labels scans it instead of the table rows (about a
        # quarter of the time). Not on PostgreSQL: a btree entry holds at most ~2.7 kB, and a label may
        # be 1,000 characters of up to 4 bytes each.
        sqlite_statements=("CREATE INDEX files_labels ON files (project_id, sha1, label)",),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
    row = conn.execute(text("SELECT version FROM schema_version")).first()
    return int(row[0]) if row is not None else 0


def migrate(engine: Engine, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply every migration newer than the database; returns the versions applied."""
    applied: list[int] = []
    with engine.begin() as conn:
        version = current_version(conn)
    newest = migrations[-1].version if migrations else 0
    if version > newest:
        raise RuntimeError(
            f"the database is at schema version {version}, newer than this hub knows ({newest}); "
            "upgrade kachery-jupyter"
        )
    for m in migrations:
        if m.version <= version:
            continue
        with engine.begin() as conn:
            sqlite = conn.dialect.name == "sqlite"
            for statement in m.statements + (m.sqlite_statements if sqlite else ()):
                conn.execute(text(statement))
            conn.execute(text("DELETE FROM schema_version"))
            conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": m.version})
        applied.append(m.version)
    return applied

"""Users, sign-in tokens, clients, projects, members, files, mutables, nonces.

Schema version 1 of the hub's numbered migrations before Alembic.
"""

from __future__ import annotations

from alembic import op

revision = "0001_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute("""CREATE TABLE users (
                id TEXT PRIMARY KEY,
                email TEXT NOT NULL UNIQUE,
                email_verified BOOLEAN NOT NULL,
                display_name TEXT,
                is_admin BOOLEAN NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""")
    # A sign-in through an identity provider (e.g. Google's "sub") maps to a user.
    op.execute("""CREATE TABLE identities (
                provider TEXT NOT NULL,
                subject TEXT NOT NULL,
                user_id TEXT NOT NULL REFERENCES users(id),
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (provider, subject)
            )""")
    op.execute("""CREATE TABLE tokens (
                token_hash TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(id),
                label TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION,
                revoked BOOLEAN NOT NULL
            )""")
    op.execute("""CREATE TABLE projects (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                owner_user_id TEXT NOT NULL REFERENCES users(id),
                public_read BOOLEAN NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""")
    op.execute("""CREATE TABLE members (
                project_id TEXT NOT NULL REFERENCES projects(id),
                user_id TEXT NOT NULL REFERENCES users(id),
                role TEXT NOT NULL,
                PRIMARY KEY (project_id, user_id)
            )""")
    op.execute("CREATE INDEX members_by_user ON members (user_id)")
    op.execute("""CREATE TABLE clients (
                client_id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(id),
                label TEXT,
                default_project_id TEXT REFERENCES projects(id),
                created_at DOUBLE PRECISION NOT NULL
            )""")
    op.execute("""CREATE TABLE blobs (
                sha1 TEXT PRIMARY KEY,
                size BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""")
    op.execute("""CREATE TABLE files (
                project_id TEXT NOT NULL REFERENCES projects(id),
                sha1 TEXT NOT NULL REFERENCES blobs(sha1),
                size BIGINT NOT NULL,
                label TEXT,
                created_by TEXT NOT NULL REFERENCES users(id),
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (project_id, sha1)
            )""")
    op.execute("CREATE INDEX files_by_sha1 ON files (sha1)")
    op.execute("""CREATE TABLE mutables (
                project_id TEXT NOT NULL REFERENCES projects(id),
                key TEXT NOT NULL,
                value TEXT NOT NULL,
                updated_by TEXT NOT NULL REFERENCES users(id),
                updated_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (project_id, key)
            )""")
    op.execute("""CREATE TABLE nonces (
                nonce TEXT PRIMARY KEY,
                expires_at DOUBLE PRECISION NOT NULL
            )""")
    op.execute("CREATE INDEX nonces_by_expiry ON nonces (expires_at)")


def downgrade() -> None:
    raise NotImplementedError("the hub is not downgraded: restore the backup made before the upgrade")

"""Browser sessions and sign-in requests (a notebook asks, the user confirms in a browser).

Schema version 2 of the hub's numbered migrations before Alembic.
"""

from __future__ import annotations

from alembic import op

revision = "0002_browser_sessions"
down_revision: str | None = "0001_initial"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute("""CREATE TABLE sessions (
                session_hash TEXT PRIMARY KEY,
                user_id TEXT NOT NULL REFERENCES users(id),
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""")
    op.execute("""CREATE TABLE sign_in_requests (
                id_hash TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                status TEXT NOT NULL,
                user_id TEXT REFERENCES users(id),
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""")


def downgrade() -> None:
    raise NotImplementedError("the hub is not downgraded: restore the backup made before the upgrade")

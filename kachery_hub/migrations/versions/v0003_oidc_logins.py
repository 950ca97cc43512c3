"""OpenID Connect login attempts; a label for sign-in requests.

Schema version 3 of the hub's numbered migrations before Alembic.
"""

from __future__ import annotations

from alembic import op

revision = "0003_oidc_logins"
down_revision: str | None = "0002_browser_sessions"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute("""CREATE TABLE oidc_logins (
                state_hash TEXT PRIMARY KEY,
                browser_hash TEXT NOT NULL,
                nonce TEXT NOT NULL,
                code_verifier TEXT NOT NULL,
                next_path TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""")
    op.execute("ALTER TABLE sign_in_requests ADD COLUMN label TEXT")


def downgrade() -> None:
    raise NotImplementedError("the hub is not downgraded: restore the backup made before the upgrade")

"""Where a project's copy of a file is in an object store (each direct upload has a key of its own).

Schema version 4 of the hub's numbered migrations before Alembic.
"""

from __future__ import annotations

from alembic import op

revision = "0004_storage_keys"
down_revision: str | None = "0003_oidc_logins"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE files ADD COLUMN storage_key TEXT")
    # Upload ids handed out and not completed yet: what to remove if they never are.
    op.execute("""CREATE TABLE pending_uploads (
                upload_id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL,
                sha1 TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""")
    op.execute("CREATE INDEX pending_uploads_by_age ON pending_uploads (created_at)")


def downgrade() -> None:
    raise NotImplementedError("the hub is not downgraded: restore the backup made before the upgrade")

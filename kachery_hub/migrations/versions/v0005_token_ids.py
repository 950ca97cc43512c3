"""Sign-in tokens get a public ID, last use and revocation time; clients and sessions name their token.

Schema version 5 of the hub's numbered migrations before Alembic.
"""

from __future__ import annotations

from alembic import op

revision = "0005_token_ids"
down_revision: str | None = "0004_storage_keys"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE tokens ADD COLUMN id TEXT")
    op.execute("ALTER TABLE tokens ADD COLUMN last_used_at DOUBLE PRECISION")
    op.execute("ALTER TABLE tokens ADD COLUMN revoked_at DOUBLE PRECISION")
    # Tokens made before: an ID from their hash (a secret's sha256 tells nothing of the secret).
    op.execute("UPDATE tokens SET id = 't' || substr(token_hash, 1, 16) WHERE id IS NULL")
    op.execute("CREATE UNIQUE INDEX tokens_by_id ON tokens (id)")
    op.execute("ALTER TABLE clients ADD COLUMN token_id TEXT")
    op.execute("ALTER TABLE sessions ADD COLUMN token_id TEXT")


def downgrade() -> None:
    raise NotImplementedError("the hub is not downgraded: restore the backup made before the upgrade")

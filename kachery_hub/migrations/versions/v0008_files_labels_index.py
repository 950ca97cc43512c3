"""SQLite: a project's file labels in sha1 order, so a label search reads an index, not the table.

Schema version 8 of the hub's numbered migrations before Alembic.
"""

from __future__ import annotations

from alembic import op

revision = "0008_files_labels_index"
down_revision: str | None = "0007_tasks"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A covering index: searching 100,000 files' labels scans it instead of the table rows (about a
    # quarter of the time). Not on PostgreSQL: a btree entry holds at most ~2.7 kB, and a label may
    # be 1,000 characters of up to 4 bytes each.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE INDEX files_labels ON files (project_id, sha1, label)")


def downgrade() -> None:
    raise NotImplementedError("the hub is not downgraded: restore the backup made before the upgrade")

"""Feeds: append-only logs of JSON messages, numbered from 0 without gaps.

Schema version 6 of the hub's numbered migrations before Alembic.
"""

from __future__ import annotations

from alembic import op

revision = "0006_feeds"
down_revision: str | None = "0005_token_ids"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # message_count is also the number the next message gets: appenders take it under
    # the row's lock, so numbers are handed out in commit order.
    op.execute("""CREATE TABLE feeds (
                feed_id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL REFERENCES projects(id),
                label TEXT,
                created_by TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                message_count BIGINT NOT NULL,
                last_append_at DOUBLE PRECISION
            )""")
    op.execute("CREATE INDEX feeds_by_project ON feeds (project_id, created_at)")
    # One row per append: its messages' canonical JSON texts joined by ',' (ASCII), and their
    # lengths, so a reader can start inside a batch. An append of 1,000 messages is one row.
    op.execute("""CREATE TABLE feed_batches (
                feed_id TEXT NOT NULL REFERENCES feeds(feed_id),
                first_number BIGINT NOT NULL,
                count INTEGER NOT NULL,
                bodies TEXT NOT NULL,
                lengths TEXT NOT NULL,
                appended_at DOUBLE PRECISION NOT NULL,
                appended_by TEXT NOT NULL,
                PRIMARY KEY (feed_id, first_number)
            )""")


def downgrade() -> None:
    raise NotImplementedError("the hub is not downgraded: restore the backup made before the upgrade")

"""Feed appends sent with an append ID: what each got, so an append sent again is stored once.

The first revision made with Alembic (after the numbered migrations 1 to 8).
"""

from __future__ import annotations

from alembic import op

revision = "0009_feed_appends"
down_revision: str | None = "0008_files_labels_index"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Keyed by the client that signed the append as well: an ID another client sends on the same
    # feed is another append, and its answer tells nothing of this one's. ``digest`` (sha1 of the
    # messages' canonical JSON) tells a retry from an ID reused for other messages.
    op.execute("""CREATE TABLE feed_appends (
                feed_id TEXT NOT NULL,
                client_id TEXT NOT NULL,
                append_id TEXT NOT NULL,
                first_number BIGINT NOT NULL,
                count INTEGER NOT NULL,
                digest TEXT NOT NULL,
                appended_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (feed_id, client_id, append_id)
            )""")
    # What `kachery-hub gc` removes once a retry can no longer come.
    op.execute("CREATE INDEX feed_appends_by_time ON feed_appends (appended_at)")


def downgrade() -> None:
    raise NotImplementedError("the hub is not downgraded: restore the backup made before the upgrade")

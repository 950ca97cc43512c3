"""Tasks: backends serving named functions, and jobs with leases, results and errors.

Schema version 7 of the hub's numbered migrations before Alembic.
"""

from __future__ import annotations

from alembic import op

revision = "0007_tasks"
down_revision: str | None = "0006_feeds"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute("""CREATE TABLE task_backends (
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
            )""")
    # A calculation's job_id is the sha1 of its name and input, so a project holds one job per
    # calculation: its row is the cache. An action gets a new random job_id per request.
    op.execute("""CREATE TABLE task_jobs (
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
            )""")
    op.execute("CREATE INDEX task_jobs_by_status ON task_jobs (project_id, status, requested_at)")
    op.execute("CREATE INDEX task_jobs_by_time ON task_jobs (project_id, requested_at)")


def downgrade() -> None:
    raise NotImplementedError("the hub is not downgraded: restore the backup made before the upgrade")

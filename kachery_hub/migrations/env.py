"""Runs the revisions on the connection the hub passes in ``config.attributes["connection"]``.

That connection is already in the transaction that holds the migration lock (see
:func:`kachery_hub._migrations.migrate`), so the whole upgrade commits or rolls back as one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext, MigrationInfo
from sqlalchemy import Connection

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("kachery-hub runs its migrations itself: `kachery-hub migrate`, or start the hub")
applied: list[str] = config.attributes.setdefault("applied", [])


def _record(ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]) -> None:
    if step.is_upgrade and not step.is_stamp and step.up_revision_id is not None:
        applied.append(step.up_revision_id)


# transactional_ddl: SQLite rolls DDL back too (the hub's connections run under explicit BEGIN).
context.configure(connection=connection, transactional_ddl=True, on_version_apply=_record)
with context.begin_transaction():
    context.run_migrations()

"""The hub's Alembic revisions (``versions/``) and the environment that runs them (``env.py``).

Run by :func:`kachery_hub._migrations.migrate`, never through an ``alembic.ini``. Revision ids
are ``NNNN_what``, in order; 0001 to 0008 are the numbered migrations of earlier releases,
with their SQL unchanged (SQLite keeps a table's ``CREATE`` text, so even its spacing is kept).
Add a revision as the next file in ``versions/``; never edit one that has shipped.
"""

"""One module per revision; Alembic loads them by path (see kachery_hub/migrations/__init__.py)."""

"""Alembic revisions of the catalog schema, oldest first (loaded by Alembic, by path)."""

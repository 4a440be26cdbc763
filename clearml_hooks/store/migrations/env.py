"""Alembic's environment: migrate on the connection the catalog hands over (already inside its
locked write transaction), never one of our own."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

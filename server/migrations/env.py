"""Alembic's entry point: migrate over the connection ``server.migrations`` passes in.

``render_as_batch``: SQLite alters a table by copying it; batch operations do that there and plain
``ALTER TABLE`` on PostgreSQL, so one migration file serves both.
"""

from alembic import context

from server.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through server.migrations (upgrade, or python -m server.migrations)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()

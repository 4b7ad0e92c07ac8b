"""Alembic revisions, applied in order by server.migrations.upgrade (files named NNNN_what.py)."""

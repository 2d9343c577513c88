"""Alembic migrations of the tracker's database, applied by the tracker at start."""

"""The Alembic ``env.py`` body every SQL owner shares (online mode only).

A service's ``migrations/env.py`` is two lines: import its metadata and call
``run_env(metadata)``. The URL and version table come from ``shared.db.run_migrations``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData, pool

from shared.db import make_engine


def run_env(metadata: MetaData) -> None:
    cfg = context.config
    url = cfg.get_main_option("sqlalchemy.url")
    version_table = cfg.attributes.get("version_table", "alembic_version")
    engine = make_engine(str(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()

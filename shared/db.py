"""SQL plumbing shared by the services that own tables (SQLAlchemy 2 + Alembic).

SQLite in ``TUNEFLEET_HOME`` by default, Postgres via ``DATABASE_URL``. Each owner keeps its
own Alembic directory and version table, so several services may share one database server
without reading each other's tables.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


def now() -> int:
    """Unix seconds: the timestamp every table stores (``created_at``, ``updated_at`` …)."""
    return int(time.time())


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def db_url(database_url: str | None, sqlite_path: Path) -> str:
    """A service's database: ``database_url`` when set, else SQLite at ``sqlite_path``."""
    if database_url:
        return database_url
    sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return sqlite_url(sqlite_path)


def normalize_url(url: str) -> str:
    """Let ``postgresql://`` mean the psycopg 3 driver we ship."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


# SQLite upgrades a read transaction to a write one lazily, and in WAL mode that upgrade
# fails at once (SQLITE_BUSY_SNAPSHOT) if another writer got in first. Write units of work
# therefore start with BEGIN IMMEDIATE, which waits (busy_timeout) instead of failing.
_sqlite_immediate: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sqlite_immediate", default=False
)


def make_engine(url: str, **kw: Any) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kw)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # FULL, not NORMAL: in WAL mode NORMAL syncs the log only at checkpoints, so
            # transactions committed (and acknowledged to a client) since the last one are
            # lost on a power cut. FULL syncs the WAL at every commit.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if _sqlite_immediate.get() else "BEGIN")

        return engine
    if "poolclass" not in kw:
        kw = {"pool_size": 10, "max_overflow": 20, **kw}
    return create_engine(url, pool_pre_ping=True, **kw)


class Database:
    """An engine and its session factory; one per app, kept on ``app.state``."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error.

        ``write=True`` takes SQLite's write lock up front (see ``_sqlite_immediate``); on
        Postgres it changes nothing: use row locks (``with_for_update``) there.
        """
        token = _sqlite_immediate.set(write)
        try:
            with self._sessions() as s:
                try:
                    yield s
                    s.commit()
                except BaseException:
                    s.rollback()
                    raise
        finally:
            _sqlite_immediate.reset(token)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()


def run_migrations(url: str, script_location: Path, version_table: str) -> None:
    """Upgrade the schema to head (Alembic, programmatic; safe to call at every start)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    cfg.attributes["version_table"] = version_table
    command.upgrade(cfg, "head")


class Base(DeclarativeBase):
    """Declarative base of every service's tables.

    Each SQL owner subclasses it once, abstract (``class Base(db.Base): __abstract__ = True``),
    and that subclass gets a ``MetaData`` of its own: an owner's tables and Alembic migrations
    stay its own even when several services' models are imported into one process.
    """

    def __init_subclass__(cls, **kw: Any) -> None:
        if cls.__dict__.get("__abstract__") and "metadata" not in cls.__dict__:
            cls.metadata = MetaData()
        super().__init_subclass__(**kw)

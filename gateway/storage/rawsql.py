"""Short transactions on the request path, on the driver's own connection (psycopg, sqlite3).

The ORM session costs ~0.6 ms of CPU per transaction (and a ``SELECT 1`` pre-ping per
checkout); quota checks run on every request, against a ~1 ms budget, so they skip it: a pool
of plain driver connections without pre-ping (a connection that fails is discarded and the
transaction retried once on a fresh one), statements written once with ``:name`` parameters
and prepared by the driver after a few uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine

from shared.db import Database

T = TypeVar("T")
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


class Sql:
    """``run(fn)``: ``fn(execute)`` in one transaction, where ``execute(sql, params)`` returns
    the driver's cursor (``fetchone``, ``rowcount``). ``postgres``: which dialect the
    statements are for."""

    def __init__(self, db: Database, *, pool_size: int = 4, max_overflow: int = 12) -> None:
        self.postgres = db.engine.dialect.name == "postgresql"
        # SQLite: the app's engine (its pragmas); Postgres: a small pool of its own, no ping
        self._engine: Engine = (
            create_engine(db.url, pool_size=pool_size, max_overflow=max_overflow)
            if self.postgres
            else db.engine
        )
        self._owned = self.postgres
        self._cache: dict[str, str] = {}

    def _driver_sql(self, sql: str) -> str:
        out = self._cache.get(sql)
        if out is None:
            out = self._cache[sql] = _NAMED.sub(r"%(\1)s", sql) if self.postgres else sql
        return out

    def _once(self, conn: Any, fn: Callable[[Callable[..., Any]], T], atomic: bool) -> T:
        cur = conn.cursor()

        def execute(sql: str, params: Any = None, *, many: bool = False) -> Any:
            if many:  # params: a list of rows
                return cur.executemany(self._driver_sql(sql), params)
            return cur.execute(self._driver_sql(sql), params or {})

        if not atomic:  # each statement its own transaction: one round trip, no BEGIN/COMMIT
            if self.postgres:
                conn.driver_connection.autocommit = True
            try:
                return fn(execute)  # SQLite's driver autocommits already (shared.db)
            finally:
                if self.postgres:
                    conn.driver_connection.autocommit = False
        if not self.postgres:
            cur.execute("BEGIN IMMEDIATE")
        result = fn(execute)
        if self.postgres:
            conn.commit()
        else:
            cur.execute("COMMIT")
        return result

    def _rollback(self, conn: Any) -> bool:
        """Roll back; False if the connection is broken (lost, server restarted)."""
        try:
            if self.postgres:
                conn.rollback()
                return not conn.driver_connection.closed
            if conn.driver_connection.in_transaction:
                conn.driver_connection.execute("ROLLBACK")
            return True
        except Exception:
            return False

    def run(self, fn: Callable[[Callable[..., Any]], T], *, atomic: bool = True) -> T:
        """``fn(execute)`` in one transaction (committed; rolled back if it raises); with
        ``atomic=False`` each statement commits on its own (for one that needs no other)."""
        for attempt in (1, 2):
            conn = self._engine.raw_connection()
            try:
                return self._once(conn, fn, atomic)
            except Exception:
                if self._rollback(conn):
                    raise
                conn.invalidate()
                if attempt == 2:
                    raise
            except BaseException:
                self._rollback(conn)
                raise
            finally:
                conn.close()  # back to the pool (an invalidated one is discarded)
        raise AssertionError("unreachable")

    def run_many(self, sql: str, rows: list[dict[str, Any]]) -> None:
        """``sql`` once per row, in one transaction (psycopg pipelines them: one round trip)."""
        if rows:
            self.run(lambda ex: ex(sql, rows, many=True))

    def dispose(self) -> None:
        if self._owned:
            self._engine.dispose()

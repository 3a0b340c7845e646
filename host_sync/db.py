"""Database access: SQLite (a file in the data directory) by default, PostgreSQL by URL.

The SQL elsewhere is written once, portably: `?` placeholders (turned into `%s` for psycopg),
TEXT timestamps in UTC ISO form (they sort as text), binary values as hex TEXT, and
`INSERT ... ON CONFLICT` / `RETURNING`, which both engines speak. Dialect differences live only
in the migrations' column types and the table-lock used to serialise writers.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from host_sync.migrations import MIGRATIONS

log = logging.getLogger("host_sync.db")

DB_FILE = "grindvakt.sqlite3"


class DbError(Exception):
    """The database cannot be reached or migrated (CLI exit code 6)."""


def resolve_url(db: str | None, data_dir: str | None) -> str:
    """--db / GV_DB wins; otherwise a SQLite file in --data-dir, else the host's data directory
    (GV_DATA, /var/lib/grindvakt as root, ~/.local/share/grindvakt: host_sync/paths.py), the
    same from whichever folder a command runs."""
    url = db or os.environ.get("GV_DB")
    if url:
        return url
    from host_sync.paths import data_dir as default_dir
    d = Path(data_dir) if data_dir else default_dir()
    return "sqlite:///" + str(d.resolve() / DB_FILE)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return "%s://%s:***@%s" % (scheme, user, host) if ":" in cred else url
    return url


class Db:
    """One connection. Use `with db.tx():` around every group of writes that must land together."""

    def __init__(self, url: str):
        self.url = url
        self._lock = threading.RLock()
        self._depth = 0
        self.created = False  # a new, empty SQLite registry was made by this open
        if url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            try:
                import psycopg
            except ImportError as e:  # pragma: no cover - pinned in requirements.txt
                raise DbError("PostgreSQL needs psycopg 3: %s" % e)
            try:
                self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
            except psycopg.Error as e:
                raise DbError("cannot connect to %s: %s" % (redact(url), str(e).strip()))
            self._pg_tx = None
        elif url.startswith("sqlite:///") or url == "sqlite://:memory:":
            self.dialect = "sqlite"
            path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ":memory:"
            if path != ":memory:":
                self.created = not os.path.exists(path)
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise DbError("cannot create the data directory for %s: %s" % (path, e))
            try:
                self._conn = sqlite3.connect(path, isolation_level=None, timeout=30,
                                             check_same_thread=False)
                if path != ":memory:":
                    try:  # it holds reader secrets and personal data: owner only
                        os.chmod(path, 0o600)
                    except OSError:
                        pass
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as e:
                raise DbError("cannot open %s: %s" % (path, e))
        else:
            raise DbError("unknown database URL %r (use sqlite:///PATH or postgresql://...)"
                          % redact(url))
        self.migrate()

    # -- statements -------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._conn.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            if self.dialect == "postgresql":
                with self._conn.cursor() as cur:
                    cur.executemany(self._sql(sql), rows)
            else:
                self._conn.executemany(sql, rows)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return list(self.execute(sql, params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.execute(sql, params).fetchone()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return row[0] if row else None

    @contextmanager
    def tx(self) -> Iterator["Db"]:
        """A write transaction. SQLite takes the write lock up front (BEGIN IMMEDIATE) so two
        processes never interleave a read-modify-write; PostgreSQL relies on row locks
        (`UPDATE sites ... RETURNING version` serialises version bumps per site). Nested calls
        join the outer transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                if self.dialect == "sqlite":
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield self
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
                    self._conn.execute("COMMIT")
                else:
                    with self._conn.transaction():
                        yield self
            finally:
                self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- schema -----------------------------------------------------------------------------
    def schema_version(self) -> int:
        return int(self.scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") or 0)

    def migrate(self) -> None:
        """Apply every migration not yet applied, each in its own transaction. Concurrent
        starters (several `serve` instances on one PostgreSQL) are serialised by a lock."""
        self.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                     " name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        from host_sync.timeutil import now_iso
        for version, name, stmts in MIGRATIONS:
            with self.tx():
                if self.dialect == "postgresql":
                    self.execute("SELECT pg_advisory_xact_lock(4711060)")
                if self.scalar("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)):
                    continue
                log.info("applying migration %d %s", version, name)
                for stmt in stmts:
                    sql = stmt.get(self.dialect) if isinstance(stmt, dict) else stmt
                    if sql:
                        self.execute(_types(sql, self.dialect))
                self.execute("INSERT INTO schema_migrations (version, name, applied_at)"
                             " VALUES (?, ?, ?)", (version, name, now_iso()))


def _types(sql: str, dialect: str) -> str:
    if dialect == "postgresql":
        return sql.replace("{serial}", "BIGSERIAL PRIMARY KEY")
    return sql.replace("{serial}", "INTEGER PRIMARY KEY AUTOINCREMENT")


def open_db(db: str | None = None, data_dir: str | None = None) -> Db:
    return Db(resolve_url(db, data_dir))

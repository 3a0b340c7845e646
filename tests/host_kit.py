"""Helpers for the host tests (tests/test_host_*.py): a database per test on SQLite, or on
PostgreSQL when one is reachable (GV_PG_URL, else 127.0.0.1:5432 as user postgres), and the
CLI driven as an operator would, through main(argv)."""
from __future__ import annotations

import io
import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

PG_ADMIN_URL = os.environ.get("GV_PG_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
_pg_reason: list[str] = []


def pg_unavailable() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can."""
    if _pg_reason:
        return _pg_reason[0] or None
    try:
        import psycopg
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as c:
            c.execute("SELECT 1")
        _pg_reason.append("")
    except Exception as e:  # no server, no psycopg, no permission: the reason is shown
        _pg_reason.append("no PostgreSQL at %s (set GV_PG_URL): %s"
                          % (PG_ADMIN_URL.split("@")[-1], str(e).strip().splitlines()[0]))
    return _pg_reason[0] or None


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh, uniquely named database, dropped afterwards; yields its URL."""
    import psycopg
    name = "gv_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
        c.execute("CREATE DATABASE %s" % name)
    base, _ = PG_ADMIN_URL.rsplit("/", 1)
    try:
        yield "%s/%s" % (base, name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


@contextmanager
def database(kind: str, tmp_path) -> Iterator[str]:
    if kind == "sqlite":
        yield "sqlite:///%s" % (tmp_path / "gv.sqlite3")
        return
    why = pg_unavailable()
    if why:
        pytest.skip(why)
    with pg_database() as url:
        yield url


class Operator:
    """Runs host-sync commands against one database and keeps what they printed."""

    def __init__(self, url: str):
        self.url = url
        self.out = self.err = ""

    def __call__(self, *argv: str, stdin: str | None = None) -> int:
        from host_sync.cli import main
        out, err = io.StringIO(), io.StringIO()
        old = None
        if stdin is not None:
            import sys
            old, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            rc = main(["--db", self.url, "--as", "tester", *argv], out=out, err=err)
        finally:
            if old is not None:
                import sys
                sys.stdin = old
        self.out, self.err = out.getvalue(), err.getvalue()
        return rc

    def ok(self, *argv: str, stdin: str | None = None) -> str:
        rc = self(*argv, stdin=stdin)
        assert rc == 0, "host-sync %s -> %d\n%s%s" % (" ".join(argv), rc, self.out, self.err)
        return self.out


def pnr_for(i: int) -> str:
    """A valid personal identity number (check digit right) for test person i."""
    from host_sync.ids import luhn_digit
    nine = "850101%03d" % (i % 1000)
    return "19" + nine[:6] + "-" + nine[6:] + luhn_digit(nine)


def org_for(i: int) -> str:
    from host_sync.ids import luhn_digit
    nine = "556%06d" % (i % 1000000)
    return nine[:6] + "-" + nine[6:] + luhn_digit(nine)

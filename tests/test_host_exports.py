"""Exports are safe to open: no cell a spreadsheet would run as a formula (OWASP CSV injection),
files holding personal identity numbers readable by their owner only, and a ledger correction
that would end a shift before it starts is refused (exit 3, nothing entered)."""
from __future__ import annotations

import csv
import datetime as dt
import io
import os
import stat

import pytest

import host_sync  # noqa: F401
from host_sync import ledger
from host_sync.db import Db
from tests.host_kit import Operator, database, org_for, pnr_for
from tests.test_host_ledger import T0, UID1, ev

HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
           "\tTAB", "\rCR"]


@pytest.mark.parametrize("cell", HOSTILE)
def test_formula_starts_are_neutralised(cell):
    out = list(csv.reader(io.StringIO(ledger.to_csv(["a", "b"], [[cell, "Anna"]]), newline="")))
    assert out[1][0] == "'" + cell and out[1][1] == "Anna"


def test_plain_values_and_numbers_are_left_alone():
    rows = [["Anna Svensson", "-12", "-0.5", "2026-03-02 07:55:00", 7, "a=b"]]
    assert list(csv.reader(io.StringIO(ledger.to_csv("abcdef", rows))))[1] == \
        ["Anna Svensson", "-12", "-0.5", "2026-03-02 07:55:00", "7", "a=b"]


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request, tmp_path):
    with database(request.param, tmp_path) as url:
        o = Operator(url)
        o.ok("sites", "add", "site-a", "--tax-id", "PL1234-5678")
        o.ok("cards", "add", "BB-2401-000001", "--uid", UID1.hex(), "--holder", "=cmd|' /C calc'!A0",
             "--pnr", pnr_for(1), "--employer", "@Bygg AB", "--org-no", org_for(1), "--site", "site-a")
        db = Db(url)
        try:
            ledger.ingest(db, "gate-01", "site-a", [(1, ev(1, T0, UID1)),
                                                    (2, ev(2, T0 + dt.timedelta(hours=8), UID1))])
            yield o, db
        finally:
            db.close()


def test_exports_neutralise_hostile_names_and_are_written_0600(site, tmp_path):
    op, _ = site
    out = tmp_path / "ledger.csv"
    out.write_text("old")
    os.chmod(out, 0o644)  # an existing, world-readable file is narrowed too
    op.ok("ledger", "export", "--site", "site-a", "--from", "2026-03-02", "--out", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and "mode 0600" in op.err
    row = list(csv.DictReader(io.StringIO(out.read_text())))[0]
    assert row["name"] == "'=cmd|' /C calc'!A0" and row["contractor"] == "'@Bygg AB"
    assert row["personal_identity_number"] == pnr_for(1)
    for fmt, args in (("html", ["ledger", "export", "--format", "html"]), ("csv", ["events", "export"])):
        p = tmp_path / ("x." + fmt + args[0])
        op.ok(*args, "--site", "site-a", "--from", "2026-03-02", "--out", str(p))
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    ev_rows = list(csv.DictReader(io.StringIO((tmp_path / "x.csvevents").read_text())))
    assert ev_rows[0]["holder"] == "'=cmd|' /C calc'!A0"


def test_correction_ending_a_shift_before_its_start_is_refused(site):
    op, db = site
    op.ok("ledger", "export", "--site", "site-a", "--from", "2026-03-02")
    shift = list(csv.DictReader(io.StringIO(op.out)))[0]["shift"]  # 07:55 to 15:55 Stockholm
    n = db.scalar("SELECT COUNT(*) FROM ledger")
    assert op("ledger", "correct", shift, "--end", "2026-03-02 07:00", "--note", "typo") == 3
    assert "end" in op.err and "before it starts" in op.err
    assert op("ledger", "correct", shift, "--start", "2026-03-02 16:00", "--note", "typo") == 3
    assert op("ledger", "correct", shift, "--start", "2026-03-02 12:00", "--end", "2026-03-02 11:00",
              "--note", "typo") == 3
    assert db.scalar("SELECT COUNT(*) FROM ledger") == n  # nothing entered
    op.ok("ledger", "correct", shift, "--start", "2026-03-02 07:00", "--note", "came early")
    op.ok("ledger", "correct", shift, "--end", "2026-03-02 07:30", "--note", "left at once")
    assert op("ledger", "correct", shift, "--start", "2026-03-02 07:45", "--note", "x") == 3  # after the corrected end

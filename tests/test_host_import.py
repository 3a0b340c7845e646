"""`cards import`: a card-portal export compared with the registry; dry run first, --apply in
one transaction, a bad row reported by line number with nothing applied."""
from __future__ import annotations

import json

import pytest

from hypothesis import given, settings, strategies as st

import host_sync  # noqa: F401
from host_sync import ids
from host_sync.db import Db
from host_sync.registry import Registry
from tests.host_kit import Operator, database, org_for, pnr_for

HEADER = ("card_number,uid,card_type,holder_name,personal_identity_number,employer,"
          "employer_org_no,status,valid_from,valid_until,pin_required,sites\n")


def row(i: int, status: str = "active", uid: str | None = None, ctype: str = "standard",
        sites: str = "site-a") -> str:
    return "BB-2403-%06d,%s,%s,Person %d,%s,Bygg %d AB,%s,%s,,,%s,%s\n" % (
        i, uid if uid is not None else "04%012x" % i, ctype, i, pnr_for(i), i % 3, org_for(i % 3),
        status, "yes" if i % 2 else "no", sites)


@pytest.fixture(params=["sqlite", "postgresql"])
def op(request, tmp_path):
    with database(request.param, tmp_path) as url:
        o = Operator(url)
        o.ok("sites", "add", "site-a", "--tax-id", "PL1")
        o.ok("sites", "add", "site-b", "--tax-id", "PL2")
        yield o


def _version(url: str, site: str) -> int:
    db = Db(url)
    try:
        return Registry(db).current_version(site)
    finally:
        db.close()


def test_dry_run_then_apply_then_changes(op, tmp_path):
    f = tmp_path / "export.csv"
    f.write_text(HEADER + "".join(row(i) for i in range(1, 31)) + row(31, ctype="visitor", uid=""))
    assert op("cards", "import", str(f)) == 7  # a row refused: exit 7, even in a dry run
    assert "30 new card(s)" in op.out and "1 visitor card(s) refused" in op.out
    assert "no RFID" in op.out and "dry run" in op.out and "line 32: card BB-2403-000031" in op.err
    assert json.loads(op.ok("cards", "list", "--json")) == []
    assert _version(op.url, "site-a") == 0

    assert op("cards", "import", str(f), "--apply") == 7  # the rest is applied
    cards = json.loads(op.ok("cards", "list", "--json"))
    assert len(cards) == 30 and {c["status"] for c in cards} == {"active"}
    assert _version(op.url, "site-a") == 1  # one version for the whole import
    assert op("cards", "import", str(f)) == 7  # the visitor row is still refused
    assert "30 unchanged" in op.out and "nothing" not in op.err

    # the portal says: 3 blocked, 4 terminated, 5 moved to site-b too, 6 renamed
    lines = [row(i) for i in range(1, 31)]
    lines[2] = row(3, status="blocked")
    lines[3] = row(4, status="terminated")
    lines[4] = row(5, sites="site-a|site-b")
    lines[5] = lines[5].replace("Person 6", "Person Six")
    f.write_text(HEADER + "".join(lines))
    op.ok("cards", "import", str(f), "--apply")
    assert "2 status change(s)" in op.out and "1 detail change(s)" in op.out
    assert "1 site addition(s)" in op.out
    assert _version(op.url, "site-a") == 2 and _version(op.url, "site-b") == 1
    show = json.loads(op.ok("cards", "show", "BB-2403-000003", "--json"))
    assert show["status"] == "blocked"
    assert json.loads(op.ok("cards", "show", "BB-2403-000006", "--json"))["holder"] == "Person Six"

    # a terminated card never comes back, even from an import; nothing else is applied
    lines[3] = row(4, status="active")
    lines[2] = row(3, status="active")
    f.write_text(HEADER + "".join(lines))
    assert op("cards", "import", str(f), "--apply") == 3
    assert "line 5:" in op.err and "terminated" in op.err and "nothing was applied" in op.err
    assert json.loads(op.ok("cards", "show", "BB-2403-000003", "--json"))["status"] == "blocked"


def test_bad_rows_are_reported_by_line_and_nothing_is_applied(op, tmp_path):
    f = tmp_path / "bad.csv"
    good = [row(i) for i in range(1, 6)]
    bad = (good[:2] + ["BB-2403-00000X,04aa,standard,X,,,,active,,,no,site-a\n"] + good[2:3]
           + [row(9, uid="")] + [row(10, status="lost")] + [row(1)] + good[3:])
    f.write_text(HEADER + "".join(bad))
    assert op("cards", "import", str(f), "--apply") == 3
    err = op.err
    assert "line 4:" in err and "BB-YYMM-NNNNNN" in err
    assert "line 6:" in err and "no UID" in err
    assert "line 7:" in err and "status 'lost'" in err
    assert "line 8:" in err and "also on line 2" in err
    assert "4 bad row(s); nothing was applied" in err
    assert json.loads(op.ok("cards", "list", "--json")) == []
    assert _version(op.url, "site-a") == 0

    f.write_text("card_number;uid;colour\nBB-2403-000001;04000000000001;red\n")
    assert op("cards", "import", str(f)) == 3 and "line 1: unknown column(s) colour" in op.err
    f.write_text("card_number;uid;sites\nBB-2403-000001;04000000000001;site-z\n")
    assert op("cards", "import", str(f)) == 3 and "line 2:" in op.err and "site-z" in op.err
    f.write_text("\ufeffcard_number;uid;holder_name\nBB-2403-000001;04 00 00 00 00 00 01;Åsa Öberg\n")
    op.ok("cards", "import", str(f), "--site", "site-b", "--apply")  # semicolons, BOM, spaces
    c = json.loads(op.ok("cards", "show", "BB-2403-000001", "--json"))
    assert c["uid"] == "04000000000001" and c["holder"] == "Åsa Öberg" and c["sites"] == ["site-b"]
    assert op("cards", "import", str(tmp_path / "missing.csv")) == 3
    # an unknown --site is not found (4) as in every other command; nothing changed
    assert op("cards", "import", str(f), "--site", "site-zz", "--apply") == 4
    assert "not found: no site 'site-zz'" in op.err, op.err
    assert json.loads(op.ok("cards", "show", "BB-2403-000001", "--json"))["sites"] == ["site-b"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_as_csv_is_a_clean_refusal_or_a_plan(text):
    """Random files never crash the importer: either a plan or InvalidInput with a reason."""
    from host_sync import importer
    db = Db("sqlite://:memory:")
    try:
        try:
            importer.plan(Registry(db), text)
        except ids.InvalidInput as e:
            assert str(e)
    finally:
        db.close()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="AB-0123456789xZ ", max_size=20))
def test_card_number_validation(s):
    try:
        v = ids.card_no(s)
    except ids.InvalidInput:
        return
    assert len(v) == 14 and v[2] == "-" and v[7] == "-" and 1 <= int(v[5:7]) <= 12
    assert ids.card_no(v) == v

"""Operators' everyday edits, end to end through the CLI against SQLite and PostgreSQL: sites
renamed, re-zoned and removed, cards taken off a site, a card's holder, dates and UID edited, a
replacement card, a reader renamed. Each goes through the registry, is audited, pushes the delta
the readers need (checked with the readers' own record codec) and, when refused, changes nothing."""
from __future__ import annotations

import datetime as dt
import json

import pytest

import host_sync  # noqa: F401
from gv.allowlist import record as R
from host_sync import ledger
from host_sync.db import Db
from host_sync.registry import Registry
from tests.host_kit import Operator, database, org_for, pnr_for

CARD, UID, UID2 = "BB-2401-000123", "00a1b2c3", "04112233445566"


@pytest.fixture(params=["sqlite", "postgresql"])
def op(request, tmp_path):
    with database(request.param, tmp_path) as url:
        o = Operator(url)
        o.ok("sites", "add", "site-a", "--name", "Kv. Hammaren", "--tax-id", "PL1234-5678")
        o.ok("sites", "add", "site-b", "--tax-id", "PL9999-0000", "--tz", "UTC")
        o.ok("cards", "add", CARD, "--uid", UID, "--holder", "Anna Svensson", "--pnr", pnr_for(1),
             "--employer", "Bygg AB", "--org-no", org_for(1), "--site", "site-a", "--site", "site-b")
        o.ok("cards", "activate", CARD)
        yield o


def _reg(op):
    db = Db(op.url)
    return db, Registry(db)


def _state(op, site):
    """(version, {key8: record}) of a site, and the last delta's records."""
    db, reg = _reg(op)
    try:
        v, recs = reg.snapshot(site)
        last = reg.changes_since(site, v - 1)
        return v, dict(recs), dict(last[0][1]) if last else {}
    finally:
        db.close()


def _key8(op, site, uid):
    db, reg = _reg(op)
    try:
        return reg.key8(site, uid)
    finally:
        db.close()


def _unchanged(op, *argv):
    """The command is refused (exit 3) and nothing changed: versions, cards and the audit log."""
    before = (op.ok("sites", "list", "--json"), op.ok("cards", "list", "--json"), op.ok("audit"))
    assert op(*argv) == 3, op.out + op.err
    err = op.err
    assert (op.ok("sites", "list", "--json"), op.ok("cards", "list", "--json"), op.ok("audit")) == before
    return err


def test_sites_renamed_re_zoned_and_removed(op):
    op.ok("sites", "rename", "site-a", "Kv. Hammaren 2")
    op.ok("sites", "edit", "site-a", "--tz", "America/New_York", "--tax-id", "PL1234-0000")
    sites = {s["id"]: s for s in json.loads(op.ok("sites", "list", "--json"))}
    assert sites["site-a"]["name"] == "Kv. Hammaren 2" and sites["site-a"]["tz"] == "America/New_York"
    assert sites["site-a"]["tax_site_id"] == "PL1234-0000" and sites["site-b"]["tz"] == "UTC"
    assert "name Kv. Hammaren -> Kv. Hammaren 2" in op.ok("audit", "--subject", "site-a")
    assert "unknown time zone" in _unchanged(op, "sites", "edit", "site-a", "--tz", "Mars/Olympus")
    _unchanged(op, "sites", "rename", "site-a", " ")
    assert op("sites", "rename", "site-x", "X") == 4

    op.ok("readers", "add", "gate-01", "--site", "site-b")
    assert "gate-01" in _unchanged(op, "sites", "remove", "site-b", "--apply")
    assert "readers remove" in _unchanged(op, "sites", "remove", "site-b")
    db, reg = _reg(op)
    try:
        db.execute("DELETE FROM readers WHERE id = 'gate-01'")  # (readers remove is seclink's)
        ledger.ingest(db, "gate-01", "site-b", [])
    finally:
        db.close()
    assert "would remove site site-b" in op.ok("sites", "remove", "site-b")
    assert len(json.loads(op.ok("sites", "list", "--json"))) == 2  # a dry run
    op.ok("sites", "remove", "site-b", "--apply")
    assert [s["id"] for s in json.loads(op.ok("sites", "list", "--json"))] == ["site-a"]
    assert json.loads(op.ok("cards", "show", CARD, "--json"))["sites"] == ["site-a"]  # card stays
    assert "site removed" in op.ok("audit", "--subject", "site-b")
    op.ok("sites", "add", "site-b", "--tax-id", "PL9999-0000")  # the id can be used again, fresh
    assert json.loads(op.ok("sites", "list", "--json"))[1]["version"] == 0


def test_card_removed_from_a_site_leaves_its_allowlist(op):
    v0, recs, _ = _state(op, "site-b")
    k = _key8(op, "site-b", UID)
    assert k in recs
    op.ok("cards", "remove-site", CARD, "site-b")
    assert "site-b now at version %d" % (v0 + 1) in op.out
    v1, recs, delta = _state(op, "site-b")
    assert v1 == v0 + 1 and k not in recs and delta == {k: None}  # a removal in the delta
    assert _key8(op, "site-a", UID) in _state(op, "site-a")[1]  # the other site keeps it
    assert json.loads(op.ok("cards", "show", CARD, "--json"))["sites"] == ["site-a"]
    assert "not on site site-b" in _unchanged(op, "cards", "remove-site", CARD, "site-b")
    op.ok("cards", "add-site", CARD, "site-b")  # and back
    assert k in _state(op, "site-b")[1]


def test_holder_and_identity_edits_stay_on_the_host_dates_reach_the_readers(op):
    va = _state(op, "site-a")[0]
    op.ok("cards", "edit", CARD, "--holder", "Anna Berg", "--pnr", pnr_for(2), "--note", "married")
    assert "holder Anna Svensson -> Anna Berg" in op.out and "kept on this host only" in op.out
    assert pnr_for(2) not in op.out and pnr_for(1) not in op.ok("audit", "--subject", CARD)
    assert _state(op, "site-a")[0] == va  # no reader holds a name
    c = json.loads(op.ok("cards", "show", CARD, "--json"))
    assert c["holder"] == "Anna Berg" and c["pnr"] == pnr_for(2)

    op.ok("cards", "edit", CARD, "--valid-until", "2027-06-30")
    v, recs, _ = _state(op, "site-a")
    rec = recs[_key8(op, "site-a", UID)]
    assert v == va + 1 and R.valid_until(rec) == (dt.date(2027, 6, 30) - dt.date(2020, 1, 1)).days
    assert _state(op, "site-b")[1][_key8(op, "site-b", UID)] is not None

    for argv, why in ((["--valid-until", "2019-01-01"], "before valid_from"),
                      (["--valid-from", "31-12-2026"], "not a date"),
                      (["--pnr", "19850101-0000"], "personal identity number"),
                      (["--uid", "zz"], "not an even number of hex digits"),
                      (["--holder", "Anna Berg"], "nothing to change")):
        assert why in _unchanged(op, "cards", "edit", CARD, *argv), argv


def test_a_new_chip_under_the_same_card_keeps_person_sites_and_ledger(op):
    db, reg = _reg(op)
    try:  # the person has worked a shift with the old chip
        from tests.test_host_ledger import T0, ev
        ledger.ingest(db, "gate-01", "site-a", [(1, ev(1, T0, bytes.fromhex(UID)))])
    finally:
        db.close()
    op.ok("cards", "set-pin", CARD, "--pin-stdin", stdin="4711\n")
    old_a = _key8(op, "site-a", UID)
    op.ok("cards", "edit", CARD, "--uid", UID2, "--note", "chip broken")
    assert "set it again" in op.out
    for site in ("site-a", "site-b"):
        _, recs, delta = _state(op, site)
        new_k, old_k = _key8(op, site, UID2), _key8(op, site, UID)
        assert old_k not in recs and delta[old_k] is None  # the old UID opens nothing
        assert R.status(recs[new_k]) == R.ACTIVE and R.unpack(recs[new_k])[5] == b"\x00\x00\x00"
    c = json.loads(op.ok("cards", "show", CARD, "--json"))
    assert c["uid"] == UID2 and c["holder"] == "Anna Svensson" and c["status"] == "active"
    assert not any(c["pin_set"].values())
    assert old_a != _key8(op, "site-a", UID2)
    op.ok("ledger", "show", "--site", "site-a", "--day", "2026-03-02")
    assert "Anna Svensson" in op.out  # the shift made with the old chip is still the person's
    op.ok("cards", "add", "BB-2401-000124", "--uid", UID)  # the old UID is free again
    assert "already belongs to card BB-2401-000124" in _unchanged(op, "cards", "edit", CARD, "--uid", UID)


def test_replacement_card_same_person_old_one_terminated_history_follows(op):
    new = "BB-2611-000001"
    op.ok("cards", "replace", CARD, new, "--uid", UID2, "--note", "lost")
    assert "inactive until activated" in op.out
    c = json.loads(op.ok("cards", "show", new, "--json"))
    assert (c["holder"], c["pnr"], c["employer"], c["sites"], c["status"], c["replaces"]) == \
        ("Anna Svensson", pnr_for(1), "Bygg AB", ["site-a", "site-b"], "inactive", CARD)
    old = json.loads(op.ok("cards", "show", CARD, "--json"))
    assert old["status"] == "terminated" and old["replaced_by"] == new
    recs = _state(op, "site-a")[1]
    assert R.status(recs[_key8(op, "site-a", UID)]) == R.TERMINATED
    assert R.status(recs[_key8(op, "site-a", UID2)]) == R.INACTIVE
    shown = op.ok("cards", "show", new)
    assert "replaces      %s" % CARD in shown and "[%s]" % CARD in shown and "activate" in shown
    assert "already replaced" in _unchanged(op, "cards", "replace", CARD, "BB-2611-000002",
                                            "--uid", "04aabbccddeeff")
    _unchanged(op, "cards", "replace", new, "BB-2611-000003", "--uid", UID2)  # UID taken


def test_reader_renamed_gets_new_credentials_and_keeps_its_commands(op, tmp_path):
    op.ok("readers", "add", "gate-01", "--site", "site-a")
    op.ok("readers", "command", "gate-01", "open")
    db, reg = _reg(op)
    try:
        old_secret, old_pw = reg.reader_credentials("gate-01")
    finally:
        db.close()
    op.ok("readers", "rename", "gate-01", "north-gate")
    assert "readers config north-gate" in op.out and "broker config" in op.out
    assert [r["id"] for r in json.loads(op.ok("readers", "list", "--json"))] == ["north-gate"]
    db, reg = _reg(op)
    try:
        secret, pw = reg.reader_credentials("north-gate")
        assert secret != old_secret and pw != old_pw
        assert [a[0] for a in reg.broker_accounts()] == ["north-gate"]
    finally:
        db.close()
    assert "north-gate" in op.ok("readers", "commands", "north-gate")
    assert "now north-gate" in op.ok("audit", "--subject", "gate-01")
    op.ok("readers", "add", "gate-02", "--site", "site-a")
    _unchanged(op, "readers", "rename", "north-gate", "gate-02")
    _unchanged(op, "readers", "rename", "north-gate", "Bad Id!")
    assert op("readers", "rename", "gate-01", "x") == 4


def test_times_are_shown_in_the_sites_time_zone(op):
    db, reg = _reg(op)
    try:
        from tests.test_host_ledger import T0, ev  # 06:55 UTC, 07:55 in Stockholm
        ledger.ingest(db, "gate-01", "site-a", [(1, ev(1, T0, bytes.fromhex(UID)))])
        ledger.ingest(db, "gate-09", "site-b", [(1, ev(1, T0, bytes.fromhex(UID)))])
    finally:
        db.close()
    op.ok("ledger", "show", "--site", "site-a", "--day", "2026-03-02")
    assert "07:55" in op.out and "Europe/Stockholm" in op.out
    op.ok("ledger", "show", "--site", "site-b", "--day", "2026-03-02")
    assert "06:55" in op.out and "(UTC)" in op.out
    op.ok("sites", "edit", "site-b", "--tz", "Asia/Tokyo")
    op.ok("events", "export", "--site", "site-b", "--from", "2026-03-02")
    assert "2026-03-02 15:55:00" in op.out
    shown = op.ok("cards", "show", CARD)
    assert "history (latest first, Europe/Stockholm)" in shown
    assert op("status", "site-b:1") == 0 and "(Asia/Tokyo)" in op.out  # no readers: nothing pending

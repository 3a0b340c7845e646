"""The operators' CLI against a real database (SQLite, and PostgreSQL where reachable): the
card rules, versioned allowlist deltas built with the readers' own codec, readers and their
config files, change status, exit codes."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import host_sync  # noqa: F401
from gv.allowlist import record as R
from host_sync.db import Db
from host_sync.registry import Registry
from tests.host_kit import Operator, database, org_for, pnr_for

ROOT = Path(__file__).resolve().parent.parent
CARD, UID = "BB-2401-000123", "00a1b2c3"  # a leading zero that must survive


@pytest.fixture(params=["sqlite", "postgresql"])
def op(request, tmp_path):
    with database(request.param, tmp_path) as url:
        o = Operator(url)
        o.ok("sites", "add", "site-a", "--name", "Kv. Hammaren", "--tax-id", "PL1234-5678")
        yield o


def _record(url: str, site: str, uid_hex: str) -> bytes | None:
    db = Db(url)
    try:
        reg = Registry(db)
        key = reg.key8(site, uid_hex)
        _, recs = reg.snapshot(site)
        return dict(recs).get(key)
    finally:
        db.close()


def test_card_life_follows_the_rules(op):
    op.ok("cards", "add", CARD, "--uid", UID, "--holder", "Anna Svensson", "--pnr", pnr_for(1),
          "--employer", "Bygg AB", "--org-no", org_for(1), "--site", "site-a")
    assert "version 1" in op.out
    card = json.loads(op.ok("cards", "show", CARD, "--json"))
    assert card["uid"] == UID and card["status"] == "inactive"
    assert card["valid_until"][:4] == str(int(card["valid_from"][:4]) + 5)  # five years
    rec = _record(op.url, "site-a", UID)
    assert R.status(rec) == R.INACTIVE

    # inactive: only activate or terminate
    for cmd in ("block", "unblock", "suspend", "resume"):
        assert op("cards", cmd, CARD) == 3, cmd
        assert "refused" in op.err
    steps = [("activate", R.ACTIVE), ("block", R.BLOCKED), ("unblock", R.ACTIVE),
             ("suspend", R.SUSPENDED), ("resume", R.ACTIVE), ("block", R.BLOCKED)]
    version = 1
    for cmd, code in steps:
        op.ok("cards", cmd, CARD, "--note", "test")
        version += 1
        assert "site-a now at version %d" % version in op.out
        assert R.status(_record(op.url, "site-a", UID)) == code, cmd
    assert op("cards", "suspend", CARD) == 3  # blocked cannot be suspended
    op.ok("cards", "terminate", CARD)
    assert R.status(_record(op.url, "site-a", UID)) == R.TERMINATED
    for cmd in ("activate", "unblock", "resume", "block", "terminate"):
        assert op("cards", cmd, CARD) == 3
        assert "final" in op.err
    # every change is a delta with just that card's record, in order
    db = Db(op.url)
    try:
        ch = Registry(db).changes_since("site-a", 0)
    finally:
        db.close()
    assert [v for v, _ in ch] == list(range(1, version + 2))
    assert all(len(recs) == 1 and len(recs[0][1]) == 16 for _, recs in ch)
    hist = op.ok("audit", "--subject", CARD)
    assert "tester" in hist and "terminate" in hist and hist.count(CARD) == 8


def test_bad_input_is_refused_with_a_reason(op):
    assert op("cards", "add", "BB-2413-000001", "--uid", UID) == 3 and "month" in op.err
    assert op("cards", "add", "B1-2401-000001", "--uid", UID) == 3
    assert op("cards", "add", CARD, "--uid", "123") == 3 and "hex" in op.err
    assert op("cards", "add", CARD, "--uid", "0011223344") == 3 and "4, 7 or 10" in op.err
    assert op("cards", "add", CARD, "--visitor") == 3 and "no RFID" in op.err
    assert op("cards", "add", CARD, "--uid", UID, "--pnr", "19850101-0000") == 3
    assert op("cards", "add", CARD, "--uid", UID, "--site", "nowhere") == 4
    assert op("cards", "show", CARD) == 4
    op.ok("cards", "add", CARD.lower(), "--uid", "00:A1:B2:C3")
    assert op("cards", "add", "BB-2401-000124", "--uid", UID) == 3 and "belongs" in op.err
    assert op("cards", "block", "BB-2401-999999") == 4
    assert op("nonsense") == 2


def test_expired_card_cannot_be_activated(op):
    op.ok("cards", "add", CARD, "--uid", UID, "--site", "site-a", "--valid-from", "2020-01-01",
          "--valid-until", "2024-12-31")
    assert op("cards", "activate", CARD) == 3 and "expired" in op.err
    rec = _record(op.url, "site-a", UID)
    assert R.ymd(R.valid_until(rec)) == (2024, 12, 31) and R.ymd(R.valid_from(rec)) == (2020, 1, 1)


def test_pin_only_its_verifier_is_kept(op, tmp_path):
    op.ok("cards", "add", CARD, "--uid", UID, "--site", "site-a", "--pin-required")
    assert op("cards", "set-pin", CARD, "--pin-stdin", stdin="12a4\n") == 3
    # an unknown site is not found (4) as everywhere, not "the card is not on it" (3)
    assert op("cards", "set-pin", CARD, "--site", "site-zz", "--pin-stdin", stdin="482913\n") == 4
    assert "not found: no site 'site-zz'" in op.err, op.err
    op.ok("cards", "set-pin", CARD, "--pin-stdin", stdin="482913\n")
    rec = _record(op.url, "site-a", UID)
    db = Db(op.url)
    try:
        reg = Registry(db)
        keyer = R.Keyer(*reg.site_keys("site-a"))
        uid = bytes.fromhex(UID)
        assert R.flags(rec) & R.F_PIN
        assert keyer.pin_ok(uid, 4, b"482913", 6, rec) and not keyer.pin_ok(uid, 4, b"482914", 6, rec)
        dump = repr(db.all("SELECT * FROM cards")) + repr(db.all("SELECT * FROM card_sites")) + \
            repr(db.all("SELECT * FROM audit"))
        assert "482913" not in dump
    finally:
        db.close()
    op.ok("sites", "add", "site-b", "--tax-id", "PL2")
    op.ok("cards", "add-site", CARD, "site-b")
    assert "set-pin %s --site site-b" % CARD in op.out  # each site has its own PIN key
    assert R.flags(_record(op.url, "site-b", UID)) & R.F_PIN


def test_reader_config_and_change_status(op, tmp_path, monkeypatch):
    monkeypatch.setenv("GV_WIFI_PASSWORD", "site-a-wifi-pass")
    op.ok("cards", "add", CARD, "--uid", UID, "--site", "site-a")
    cfg_path = tmp_path / "gate-01.json"
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    op.ok("readers", "add", "gate-01", "--site", "site-a", "--config-out", str(cfg_path),
          "--ca", str(ca), "--broker-host", "10.0.0.5", "--wifi-ssid", "gates")
    printed = op.out + op.err
    op.ok("readers", "add", "gate-02", "--site", "site-a")
    cfg = json.loads(cfg_path.read_text())
    assert stat.S_IMODE(os.stat(cfg_path).st_mode) == 0o600
    assert cfg["reader_id"] == "gate-01" and cfg["site"] == "site-a"
    assert len(bytes.fromhex(cfg["secret"])) == 32
    assert len(bytes.fromhex(cfg["site_keys"]["card"])) == 16
    assert len(bytes.fromhex(cfg["site_keys"]["pin"])) == 16
    assert cfg["broker"]["user"] == "gate-01" and cfg["broker"]["tls"] is True
    assert cfg["broker"]["host"] == "10.0.0.5" and "BEGIN CERTIFICATE" in cfg["broker"]["ca"]
    assert cfg["gate"]["pin_policy"] == "card"
    for secret in (cfg["secret"], cfg["broker"]["password"], cfg["site_keys"]["card"]):
        assert secret not in printed
    # the site keys in the config make the same key8 the host used
    keyer = R.Keyer(bytes.fromhex(cfg["site_keys"]["card"]), bytes.fromhex(cfg["site_keys"]["pin"]))
    out = bytearray(8)
    keyer.uid_key(bytes.fromhex(UID), 4, out)
    assert _record(op.url, "site-a", UID)[:8] == bytes(out)

    op.ok("cards", "activate", CARD)
    assert op("cards", "block", CARD) == 0
    assert "status site-a:3" in op.out
    assert op("status", "site-a:3") == 5
    assert op.out.count("PENDING") == 2
    assert op("readers", "list", "--check") == 5
    db = Db(op.url)
    try:
        db.execute("UPDATE readers SET applied_version = 3, applied_at = ? WHERE id = 'gate-01'",
                   ("2026-01-01T00:00:00.000000Z",))
    finally:
        db.close()
    assert op("status", "site-a:3") == 5
    assert "ok       gate-01" in op.out and "PENDING  gate-02" in op.out
    js = json.loads((op("status", CARD, "--json"), op.out)[1])
    assert js["applied"] == ["gate-01"] and js["pending"][0]["reader"] == "gate-02"
    assert op("status", "site-a:99") == 4
    listing = op.ok("readers", "list", "--json")
    rows = {r["id"]: r for r in json.loads(listing)}
    assert rows["gate-01"]["lag"] == 0 and rows["gate-02"]["lag"] == 3
    assert rows["gate-02"]["block_pending_since"] and not rows["gate-02"]["lagging_block"]
    assert op("readers", "list", "--lag-limit", "0", "--json") == 0
    assert json.loads(op.out)[1]["lagging_block"] is True


def test_broker_config_has_every_reader(op, tmp_path):
    op.ok("readers", "add", "gate-01", "--site", "site-a")
    op.ok("broker", "config", "--out", str(tmp_path / "broker"), "--port", "18883")
    acl = (tmp_path / "broker" / "acl").read_text()
    assert "user gate-01" in acl and "user host" in acl
    passwd = (tmp_path / "broker" / "passwd").read_text()
    db = Db(op.url)
    try:
        pw = Registry(db).reader_credentials("gate-01")[1]
    finally:
        db.close()
    assert "gate-01:$7$" in passwd and pw not in passwd


def test_console_entry_points(tmp_path):
    env = dict(os.environ, GV_DATA=str(tmp_path / "d"))
    p = subprocess.run([sys.executable, "-m", "host_sync", "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Exit codes" in p.stdout
    p = subprocess.run([sys.executable, "-m", "host_sync", "sites", "list"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    db_file = tmp_path / "d" / "grindvakt.sqlite3"
    assert p.returncode == 0 and stat.S_IMODE(os.stat(db_file).st_mode) == 0o600
    p = subprocess.run([sys.executable, "-m", "host_sync", "sites", "list", "--json", "--data-dir",
                        str(tmp_path / "d")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout) == []  # global options after the command
    from host_sync.cli import main
    for area in ("cards", "readers", "ledger", "events", "broker", "status", "serve", "sites"):
        assert main([area, "--help"]) == 0, area
    p = subprocess.run([sys.executable, "-m", "host_sync", "--db",
                        "postgresql://nobody@127.0.0.1:1/none", "sites", "list"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 6 and "cannot connect" in p.stderr


def test_migrations_are_recorded_once(tmp_path):
    url = "sqlite:///%s" % (tmp_path / "m.sqlite3")
    a, b = Db(url), Db(url)
    try:
        assert a.schema_version() == b.schema_version() >= 1
        assert a.scalar("SELECT COUNT(*) FROM schema_migrations") == b.schema_version()
    finally:
        a.close()
        b.close()


def test_serve_refuses_a_bad_broker_host_before_connecting(op):
    # the one address rule (ids.address_problem): exit 3, not a loop retrying a typo
    assert op("serve", "--broker-host", "10.0.0.256") == 3
    assert "--broker-host 10.0.0.256: not a valid IPv4 address" in op.err, op.err


def test_lists_of_an_unknown_site_are_not_found_not_empty(tmp_path):
    op = Operator("sqlite:///%s" % (tmp_path / "reg.db"))
    op.ok("sites", "add", "site-a", "--name", "A", "--tax-id", "X1")
    for what in ("cards", "readers"):
        assert op(what, "list", "--site", "site-zz") == 4, (what, op.out, op.err)
        assert "no site 'site-zz'" in op.err, op.err
        assert op(what, "list", "--site", "site-a") == 0, op.err

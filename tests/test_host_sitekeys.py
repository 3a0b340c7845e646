"""`host-sync sites rotate-keys` in the registry (issue 16 item 1; the readers' side and the
whole rotation over a real broker: tests/test_site_key_rotation.py): the site's records are
republished whole under the new card key, a PIN key rotation clears the site's PINs only with
--yes (exit 3 and nothing changed without it), and a second rotation waits for the first."""
from __future__ import annotations

import pytest

import host_sync  # noqa: F401
from gv.allowlist import record as R
from host_sync import sitekeys
from host_sync.db import Db
from host_sync.registry import Registry
from tests.host_kit import Operator, database

CARDS = [("BB-2401-%06d" % i, "04a1b2c3d4e5%02x" % i) for i in range(1, 4)]


@pytest.fixture(params=["sqlite", "postgresql"])
def op(request, tmp_path):
    with database(request.param, tmp_path) as url:
        o = Operator(url)
        o.ok("sites", "add", "site-a", "--tax-id", "PL1234-5678")
        for no, uid in CARDS:
            o.ok("cards", "add", no, "--uid", uid, "--site", "site-a", "--pin-required")
            o.ok("cards", "activate", no)
        o.ok("cards", "block", CARDS[2][0])
        o.ok("readers", "add", "gate-01", "--site", "site-a")
        o.ok("cards", "set-pin", CARDS[0][0], "--pin-stdin", stdin="482913\n")
        yield o


def _state(url):
    db = Db(url)
    try:
        reg = Registry(db)
        v, recs = reg.snapshot("site-a")
        vers = dict(db.all("SELECT card_no, pin_verifier FROM card_sites WHERE site_id = ?",
                           ("site-a",)))
        return reg.site_keys("site-a"), v, dict(recs), vers, {no: reg.key8("site-a", uid)
                                                              for no, uid in CARDS}
    finally:
        db.close()


def test_pin_key_rotation_is_refused_without_yes_and_clears_pins_with_it(op):
    keys, v, recs, vers, k8 = _state(op.url)
    assert vers[CARDS[0][0]]
    assert op("sites", "rotate-keys", "site-a", "--pin") == 3
    assert "NOT ROTATED" in op.out and "1 card(s) that need a PIN" in op.out
    assert _state(op.url)[:4] == (keys, v, recs, vers)  # nothing changed

    op.ok("sites", "rotate-keys", "site-a", "--pin", "--yes")
    assert "PINs cleared: 1 card(s)" in op.out
    keys2, v2, recs2, vers2, k82 = _state(op.url)
    assert keys2[0] != keys[0] and keys2[1] != keys[1] and v2 == v + 1
    assert set(recs2) == set(k82.values()) and not set(recs2) & set(recs)  # all under the new key
    assert vers2 == {no: None for no, _ in CARDS}
    first = recs2[k82[CARDS[0][0]]]
    assert R.flags(first) & R.F_PIN and first[13:] == b"\x00\x00\x00"  # "no PIN on record"
    assert R.status(recs2[k82[CARDS[2][0]]]) == R.BLOCKED and R.status(first) == R.ACTIVE

    # a PIN set again is a verifier under the new PIN key
    op.ok("cards", "set-pin", CARDS[0][0], "--pin-stdin", stdin="482913\n")
    rec = _state(op.url)[2][k82[CARDS[0][0]]]
    uid = bytes.fromhex(CARDS[0][1])
    assert R.Keyer(*keys2).pin_ok(uid, len(uid), b"482913", 6, rec)


def test_card_key_rotation_keeps_pins_and_waits_for_the_readers(op):
    keys, v, recs, vers, _ = _state(op.url)
    op.ok("sites", "rotate-keys", "site-a")
    keys2, v2, recs2, vers2, k82 = _state(op.url)
    assert keys2[0] != keys[0] and keys2[1] == keys[1] and vers2 == vers
    assert recs2[k82[CARDS[0][0]]][13:] == recs[_old_key(keys, CARDS[0][1])][13:]
    assert op("sites", "rotate-keys", "site-a") == 3 and "still being applied" in op.err
    assert op("status") == 5  # no serve on this registry: pending
    assert "key rotation to generation 2: 0 of 1 reader(s) on the new keys" in op.out
    db = Db(op.url)
    try:
        reg = Registry(db)
        d = sitekeys.get(reg, "site-a")
        assert d["old"][0] == keys[0].hex() and d["from"] == v2
        assert not sitekeys.finish(reg, "site-a")  # gate-01 is still on the old keys
        db.execute("UPDATE readers SET applied_version = ? WHERE id = 'gate-01'", (v2,))
        assert sitekeys.finish(reg, "site-a") and sitekeys.get(reg, "site-a") is None
    finally:
        db.close()
    op.ok("sites", "rotate-keys", "site-a")  # the next one may start now


def _old_key(keys, uid_hex):
    out = bytearray(8)
    uid = bytes.fromhex(uid_hex)
    R.Keyer(*keys).uid_key(uid, len(uid), out)
    return bytes(out)


def test_old_keys_go_at_once_without_readers_and_when_the_last_one_left_is_revoked(op):
    op.ok("sites", "add", "site-b", "--tax-id", "PL1234-9999")
    op.ok("sites", "rotate-keys", "site-b")
    assert op("status") == 5 and "site-b" not in op.out  # nobody held the old keys
    op.ok("sites", "rotate-keys", "site-a")
    assert op("status") == 5 and "0 of 1 reader(s)" in op.out
    op("readers", "revoke", "gate-01", "--reason", "stolen")  # exit 5: no broker to reload here
    assert op("status") == 5 and "key rotation" not in op.out
    op.ok("audit", "--subject", "site-a")
    assert "old site keys dropped" in op.out

"""The record codec on CPython: the same vectors the MicroPython test checks, an independent
reference of the AES constructions, and hypothesis round trips."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import host_sync  # noqa: F401  (puts firmware/ on sys.path, as the host does)
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, strategies as st

from gv.allowlist import record as R

VEC = json.loads((Path(__file__).resolve().parent.parent / "docs/vectors/allowlist-record.json").read_text())
CK = bytes.fromhex(VEC["card_key"])
PK = bytes.fromhex(VEC["pin_key"])


def _ecb(k: bytes, b: bytes) -> bytes:
    return Cipher(algorithms.AES(k), modes.ECB()).encryptor().update(b)


def _ref_key8(uid: bytes) -> bytes:
    return _ecb(CK, bytes([1, len(uid)]) + uid + bytes(14 - len(uid)))[:8]


def _ref_pv(uid: bytes, pin: str) -> bytes:
    digits = [int(c) for c in pin] + [0] * (6 - len(pin))
    bcd = bytes(digits[i] << 4 | digits[i + 1] for i in range(0, 6, 2))
    full = _ecb(PK, bytes([3, len(uid)]) + uid + bytes(10 - len(uid)) + bytes([len(pin)]) + bcd)
    return bytes([full[0], full[1] & 0xC0, 0])  # the first 10 bits (record.PIN_VER_BITS)


def test_vectors():
    k = R.Keyer(CK, PK)
    for c in VEC["records"]:
        uid = bytes.fromhex(c["uid"])
        out = bytearray(8)
        k.uid_key(memoryview(uid), len(uid), out)
        assert out.hex() == c["key8"] == _ref_key8(uid).hex()
        pv = k.pin_verifier(uid, len(uid), c["pin"]) if c["pin"] else bytes(3)
        assert pv.hex() == c["pin_verifier"]
        if c["pin"]:
            assert pv == _ref_pv(uid, c["pin"])
            assert k.pin_ok(memoryview(uid), len(uid), c["pin"].encode(), len(c["pin"]),
                            bytes.fromhex(c["record"]))
        rec = R.pack(bytes(out), c["status"], c["flags"], c["valid_from"], c["valid_until"], pv)
        assert rec.hex() == c["record"]
        assert R.unpack(rec) == (bytes(out), c["status"], c["flags"], c["valid_from"],
                                 c["valid_until"], pv)


def test_wrong_pins():
    k = R.Keyer(CK, PK)
    c = VEC["records"][0]
    uid = bytes.fromhex(c["uid"])
    rec = bytes.fromhex(c["record"])
    for w in VEC["wrong_pins"]:
        assert not k.pin_ok(uid, len(uid), w["pin"].encode(), len(w["pin"]), rec)


def test_dates():
    for d in VEC["dates"]:
        dt = datetime.date.fromisoformat(d["date"])
        assert R.days(dt.year, dt.month, dt.day) == d["days"] == (dt - datetime.date(2020, 1, 1)).days
        assert R.ymd(d["days"]) == (dt.year, dt.month, dt.day)


@given(st.integers(0, 0xFFFF))
def test_days_roundtrip(n):
    y, m, d = R.ymd(n)
    assert (datetime.date(y, m, d) - datetime.date(2020, 1, 1)).days == n
    assert R.days(y, m, d) == n


@given(st.binary(min_size=8, max_size=8), st.integers(1, 5), st.integers(0, 31),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(min_size=3, max_size=3))
def test_pack_roundtrip(k8, status, flags, vf, vu, pv):
    rec = R.pack(k8, status, flags, vf, vu, pv)
    assert len(rec) == 16
    assert R.unpack(rec) == (k8, status, flags, vf, vu, pv)


@given(st.binary(min_size=1, max_size=10), st.text("0123456789", min_size=1, max_size=6))
def test_keyer_matches_reference(uid, pin):
    k = R.Keyer(CK, PK)
    out = bytearray(8)
    k.uid_key(uid, len(uid), out)
    assert bytes(out) == _ref_key8(uid)
    pv = k.pin_verifier(uid, len(uid), pin)
    assert pv == _ref_pv(uid, pin)
    rec = R.pack(bytes(out), R.ACTIVE, R.F_PIN, 0, R.NO_END, pv)
    assert k.pin_ok(uid, len(uid), pin.encode(), len(pin), rec)


def test_rejects():
    k = R.Keyer(CK, PK)
    with pytest.raises(ValueError):
        R.Keyer(b"short", PK)
    with pytest.raises(ValueError):
        k.pin_verifier(b"\x01\x02\x03\x04", 4, "12a")
    with pytest.raises(ValueError):
        R.pack(b"\x00" * 8, 9, 0, 0, 0)


# ---- the 13-byte flash form: vectors against an independent bit-field reference, round trips
FLASH = json.loads((Path(__file__).resolve().parent.parent / "docs/vectors/allowlist-flash-record.json").read_text())


def _ref_flash(r: bytes) -> bytes:
    key = int.from_bytes(r[0:8], "big") >> 12
    fr = min(int.from_bytes(r[9:11], "big"), 0x3FFF)
    un = min(int.from_bytes(r[11:13], "big"), 0x3FFF)
    v = (key << 52 | (r[8] & 7) << 49 | (r[8] >> 3 & 1) << 48 | fr << 34 | un << 20
         | int.from_bytes(r[13:16], "big") >> 4)
    return v.to_bytes(13, "big")


def _flash_roundtrip(r: bytes) -> tuple[bytes, bytes]:
    from gv.allowlist.layout import unpack13
    from gv.allowlist.pages import key_of13, pack13
    f = bytearray(13)
    pack13(r, 0, f, 0)
    back = bytearray(16)
    key_of13(f, 0, back)
    unpack13(f, 0, back)
    return bytes(f), bytes(back)


def test_flash_record_vectors():
    for c in FLASH["cases"]:
        r = bytes.fromhex(c["record"])
        assert _ref_flash(r).hex() == c["flash"], c["note"]
        f, back = _flash_roundtrip(r)
        assert f.hex() == c["flash"], c["note"]
        assert back.hex() == c["read_back"], c["note"]


@given(st.binary(min_size=8, max_size=8), st.integers(1, 5), st.integers(0, 1),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(min_size=3, max_size=3))
def test_flash_form_keeps_what_as_stored_says(key, status, pin_flag, vf, vu, pv):
    r = R.pack(key, status, pin_flag, vf, vu, pv)
    f, back = _flash_roundtrip(r)
    assert f == _ref_flash(r)
    assert back[8:] == R.as_stored(r)[8:]  # everything but the key: exactly as_stored
    assert int.from_bytes(back[0:8], "big") == int.from_bytes(key, "big") >> 12 << 12  # 52 key bits
    assert R.as_stored(R.as_stored(r)) == R.as_stored(r)

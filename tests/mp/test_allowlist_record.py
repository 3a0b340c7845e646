# The record codec on the unix port: the shared test vectors, date round trips, and the
# alloc-free hot path (uid_key, pin_ok, accessors) proven under heap_lock.
import json
import micropython
import mpt
from binascii import hexlify, unhexlify
from gv.allowlist import record as R


def _vec():
    with open("docs/vectors/allowlist-record.json") as f:
        return json.load(f)


def _keyer(v):
    return R.Keyer(unhexlify(v["card_key"]), unhexlify(v["pin_key"]))


def test_vectors():
    v = _vec()
    k = _keyer(v)
    out = bytearray(8)
    for c in v["records"]:
        uid = unhexlify(c["uid"])
        k.uid_key(memoryview(uid), len(uid), out)
        mpt.eq(hexlify(out).decode(), c["key8"], c["uid"])
        pv = k.pin_verifier(uid, len(uid), c["pin"]) if c["pin"] else b"\x00\x00\x00"
        mpt.eq(hexlify(pv).decode(), c["pin_verifier"])
        rec = R.pack(bytes(out), c["status"], c["flags"], c["valid_from"], c["valid_until"], pv)
        mpt.eq(hexlify(rec).decode(), c["record"])
        mpt.eq(R.unpack(rec), (bytes(out), c["status"], c["flags"], c["valid_from"],
                               c["valid_until"], pv))
        mpt.eq(R.status(rec), c["status"])
        mpt.eq(R.flags(rec), c["flags"])
        mpt.eq(R.valid_from(rec), c["valid_from"])
        mpt.eq(R.valid_until(rec), c["valid_until"])
        if c["pin"]:
            assert k.pin_ok(memoryview(uid), len(uid), c["pin"].encode(), len(c["pin"]), rec)
            # raw digit values work too (a keypad buffer of 0..9)
            raw = bytes(ord(ch) - 48 for ch in c["pin"])
            assert k.pin_ok(memoryview(uid), len(uid), raw, len(raw), rec)


def test_wrong_pins_rejected():
    v = _vec()
    k = _keyer(v)
    c = v["records"][0]
    uid = unhexlify(c["uid"])
    rec = unhexlify(c["record"])
    for w in v["wrong_pins"]:
        p = w["pin"].encode()
        assert not k.pin_ok(uid, len(uid), p, len(p), rec), w
    for bad in (b"12a4", b"", b"1234567"):
        assert not k.pin_ok(uid, len(uid), bad, len(bad), rec), bad
    assert not k.pin_ok(uid, 0, b"1234", 4, rec)
    mpt.raises(ValueError, k.pin_verifier, uid, len(uid), "12x4")
    mpt.raises(ValueError, k.pin_verifier, uid, len(uid), "1234567")
    mpt.raises(ValueError, k.uid_key, uid, 11, bytearray(8))


def test_dates():
    for d in _vec()["dates"]:
        y, m, dd = [int(x) for x in d["date"].split("-")]
        mpt.eq(R.days(y, m, dd), d["days"], d["date"])
        mpt.eq(R.ymd(d["days"]), (y, m, dd))
    for n in range(0, 0xFFFF, 97):
        y, m, d = R.ymd(n)
        mpt.eq(R.days(y, m, d), n)


def test_pack_rejects_out_of_range():
    k8 = b"\x01" * 8
    mpt.raises(ValueError, R.pack, k8, 0, 0, 0, 1)
    mpt.raises(ValueError, R.pack, k8, 6, 0, 0, 1)
    mpt.raises(ValueError, R.pack, k8, 1, 32, 0, 1)
    mpt.raises(ValueError, R.pack, k8, 1, 0, -1, 1)
    mpt.raises(ValueError, R.pack, k8, 1, 0, 0, 0x10000)
    mpt.raises(ValueError, R.pack, b"\x01" * 7, 1, 0, 0, 1)
    mpt.raises(ValueError, R.unpack, b"\x00" * 15)


def test_hot_path_alloc_free():
    v = _vec()
    k = _keyer(v)
    c = v["records"][0]
    uid = bytearray(unhexlify(c["uid"]))
    mv = memoryview(uid)
    rec = bytearray(unhexlify(c["record"]))
    out = bytearray(8)
    pin = bytearray(b"1234")
    bad = bytearray(b"1239")
    micropython.heap_lock()
    try:
        k.uid_key(mv, 4, out)
        ok = k.pin_ok(mv, 4, pin, 4, rec)
        nok = k.pin_ok(mv, 4, bad, 4, rec)
        st = R.status(rec)
        fl = R.flags(rec)
        vf = R.valid_from(rec)
        vu = R.valid_until(rec)
    finally:
        micropython.heap_unlock()
    mpt.eq(hexlify(out).decode(), c["key8"])
    assert ok and not nok
    mpt.eq((st, fl, vf, vu), (1, 1, 0, 0xFFFF))


def test_fuzz_uids_distinct_and_stable():
    # Seeded stream: leading zeros and lengths are part of the identity.
    import random
    random.seed(8)
    k = R.Keyer(b"\x11" * 16, b"\x22" * 16)
    seen = set()
    out = bytearray(8)
    for i in range(200):
        n = (4, 7, 10)[i % 3]
        uid = bytearray(n)
        for j in range(1, n):
            uid[j] = random.getrandbits(8)
        uid[n - 1] = i & 0xFF  # distinct by construction
        k.uid_key(uid, n, out)
        seen.add(bytes(out))
    mpt.eq(len(seen), 200)
    a = bytearray(8)
    b = bytearray(8)
    k.uid_key(b"\x00\x00\x00\x01", 4, a)
    k.uid_key(b"\x00\x00\x00\x00\x00\x00\x01", 7, b)
    assert a != b


def test_flash_record_vectors():
    # the 13-byte form a flash page keeps (gv.allowlist.pages), against the shared vectors
    from gv.allowlist.pages import key_of13, pack13
    from gv.allowlist.layout import unpack13
    with open("docs/vectors/allowlist-flash-record.json") as f:
        v = json.load(f)
    f13 = bytearray(13)
    back = bytearray(16)
    for c in v["cases"]:
        r = unhexlify(c["record"])
        pack13(r, 0, f13, 0)
        mpt.eq(hexlify(f13).decode(), c["flash"], c["note"])
        key_of13(f13, 0, back)
        unpack13(f13, 0, back)
        mpt.eq(hexlify(back).decode(), c["read_back"], c["note"])
        mpt.eq(bytes(back[8:]), R.as_stored(r)[8:], "as_stored: " + c["note"])
    # unpacking allocates nothing (the lookup path)
    micropython.heap_lock()
    try:
        unpack13(f13, 0, back)
        unpack13(f13, 0, back, 3)
    finally:
        micropython.heap_unlock()
    mpt.eq(back[8] & 7, 3)

# A shard page's live records with its in-place entries applied (gv.allowlist.pages.page_records),
# against a plain reference, on random pages: records, status overrides and appended records in
# any key order, several entries for one card, removals, and entries left uncommitted, dead or
# torn by a power cut (none of which may count).
import gc
import random
import struct
import mpt
from gv.allowlist.layout import APS, BLOCK, FREC, GAP, MAGIC_PAGE, OVS, PAGE_HDR
from gv.allowlist.pages import pack13, page_records

TIMEOUT = 300
HEAPSIZE = "1m"  # the reference keeps dicts of records: this is about answers, not heap


def _rec(key, status):
    r = bytearray(16)
    r[0:8] = key
    r[8] = status | (random.getrandbits(1) << 3)
    struct.pack_into(">HH", r, 9, random.getrandbits(14) % 0x3FFF, random.getrandbits(14) % 0x3FFF)
    r[13] = random.getrandbits(8)
    r[14] = random.getrandbits(8)
    r[15] = random.getrandbits(4) << 4  # a flash page keeps 20 bits of the verifier
    return r


def _key():
    k = bytearray(random.getrandbits(8) for _ in range(8))
    k[6] &= 0xF0  # the store knows a card by 52 bits
    k[7] = 0
    return bytes(k)


def _page(nrec, n_ov, n_ap):
    """A random page and what it holds: {key: record or None (removed)}, and its record keys."""
    keys = sorted(set(_key() for _ in range(nrec)))
    nrec = len(keys)
    page = bytearray(b"\xff" * BLOCK)
    struct.pack_into("<4sIHHI", page, 0, MAGIC_PAGE, 7, 0, nrec, 0)
    orig = {}
    for i, k in enumerate(keys):
        r = _rec(k, 1 + random.getrandbits(8) % 5)
        pack13(r, 0, page, PAGE_HDR + i * FREC)
        orig[k] = bytes(r)
    ov = {}  # the newest valid override's status of a page record
    app = {}  # the newest valid appended record of a card (None: removed)
    o = PAGE_HDR + nrec * FREC
    top = BLOCK
    for _ in range(n_ov + n_ap):
        valid = random.getrandbits(2) != 0
        if random.getrandbits(8) % (n_ov + n_ap) < n_ov:
            if not nrec or o + OVS + GAP > top:
                continue
            i = random.getrandbits(9) % nrec
            if keys[i] in app:
                continue  # a card with an appended record only ever gets appended records
            st = random.getrandbits(8) % 6  # 0 removes
            marks = 0x40 if valid else [0x50, 0x60, 0x00, 0x70, 0x10][random.getrandbits(8) % 5]
            page[o] = i & 0xFF
            page[o + 1] = 0x80 | marks | st << 1 | i >> 8
            o += OVS
            if valid:
                ov[keys[i]] = st
        else:
            if top - APS < o + GAP:
                continue
            k = keys[random.getrandbits(9) % nrec] if nrec and random.getrandbits(1) else _key()
            st = random.getrandbits(8) % 6
            r = _rec(k, st)
            a = top - APS
            pack13(r, 0, page, a)
            page[a + FREC] = 0xFC if valid else [0xFF, 0xFE, 0xFD, 0xF8, 0xFB][random.getrandbits(8) % 5]
            if not valid and random.getrandbits(1):
                page[a + 3] = 0xFF  # torn: part of the record never programmed
            top = a
            if valid:
                app[k] = bytes(r) if st else None
    want = {}
    for k in keys:
        r = orig[k]
        if k in ov:
            if ov[k]:
                b = bytearray(r)
                b[8] = (b[8] & 0xF8) | ov[k]
                r = bytes(b)
            else:
                r = None
        want[k] = r
    want.update(app)
    return page, want, keys


def test_random_pages_match_the_reference():
    random.seed(8)
    for case in range(300):
        gc.collect()
        nrec = random.getrandbits(9) % 265
        page, want, keys = _page(nrec, random.getrandbits(5), random.getrandbits(5))
        got = list(page_records(page, 0, len(keys)))
        exp = [want[k] for k in sorted(want) if want[k] is not None]
        mpt.eq(len(got), len(exp), case)
        for g, e in zip(got, exp):
            mpt.eq(g, e, case)


def test_newest_appended_entry_of_a_card_wins_in_any_order():
    random.seed(9)
    k1, k2, k3 = sorted(_key() for _ in range(3))
    page = bytearray(b"\xff" * BLOCK)
    struct.pack_into("<4sIHHI", page, 0, MAGIC_PAGE, 7, 0, 1, 0)
    r2 = _rec(k2, 1)
    pack13(r2, 0, page, PAGE_HDR)
    a = BLOCK
    seq = [(k3, 1), (k1, 2), (k3, 4), (k2, 3), (k1, 0), (k3, 5)]
    for k, st in seq:
        a -= APS
        pack13(_rec(k, st), 0, page, a)
        page[a + FREC] = 0xFC
    got = list(page_records(page, 0, 1))
    mpt.eq([g[8] & 7 for g in got], [3, 5])  # k1 removed last, k2 -> 3, k3's newest is 5
    mpt.eq([g[0:7] for g in got], [k2[0:7], k3[0:7]])

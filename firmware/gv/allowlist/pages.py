# Whole shard pages: the writer (16-byte records packed to 13 bytes, pages filling their flash
# blocks) and the reader of a page's live records with its in-place entries applied. Loaded by
# updates, snapshots and diagnostics; the lookup never needs it. Format: docs/allowlist-format.md.
import struct
from binascii import crc32
from gv.allowlist.layout import (
    APS, AP_C, AP_D, AP_W, BLOCK, FREC, MAGIC_PAGE, OVS, OV_C, OV_D, OV_W, PAGE_HDR, REC,
    SHARD_PAGES, _Shard, _cmpk, _ptr_bytes, _rm, _tag, entry_span, page_cap, unpack13,
)


def pack13(r, ro, out, oo):
    """The 16-byte record at r[ro:] as a 13-byte flash record at out[oo:]. Dates past day 16,382
    (2064-11-07) are kept as 0x3FFF (a start: not before 2199; an end: none); the PIN verifier
    keeps its first 20 bits (record.Keyer.pin_ok compares those)."""
    for i in range(6):
        out[oo + i] = r[ro + i]
    s = r[ro + 8]
    out[oo + 6] = (r[ro + 6] & 0xF0) | (s & 7) << 1 | (s >> 3) & 1
    fr = r[ro + 9] << 8 | r[ro + 10]
    un = r[ro + 11] << 8 | r[ro + 12]
    if fr > 0x3FFF:
        fr = 0x3FFF
    if un > 0x3FFF:
        un = 0x3FFF
    h = fr << 10 | un >> 4
    lo = (un & 15) << 20 | r[ro + 13] << 12 | r[ro + 14] << 4 | r[ro + 15] >> 4
    out[oo + 7] = h >> 16
    out[oo + 8] = (h >> 8) & 255
    out[oo + 9] = h & 255
    out[oo + 10] = lo >> 16
    out[oo + 11] = (lo >> 8) & 255
    out[oo + 12] = lo & 255


def key_of13(p, po, out):
    # the 52 key bits of a flash record as an 8-byte key (the rest zero)
    for i in range(6):
        out[i] = p[po + i]
    out[6] = p[po + 6] & 0xF0
    out[7] = 0


def page_records(p, o, n):
    """The live records of the page at p[o:] (n of them), as 16-byte bytes objects, sorted, keys
    cut to 52 bits, its committed in-place entries applied (appended records override, status 0
    removes). A generator: p must not change until it is done. Allocates a record at a time
    (compaction and diagnostics, never the lookup)."""
    base = o + PAGE_HDR
    no, na, _ = entry_span(p, base, n)
    st = bytearray(n)
    for i in range(n):
        st[i] = 0xFF
    end = base + n * FREC
    for j in range(no):
        a = end + j * OVS
        b = p[a + 1]
        if not b & (OV_W | OV_C) and b & OV_D:
            i = p[a] | (b & 1) << 8
            if i < n:
                st[i] = (b >> 1) & 7
    app = {}
    for k in range(na):  # oldest first: a later entry for the same card replaces it
        a = BLOCK - (k + 1) * APS
        m = p[a + FREC]
        if not m & (AP_W | AP_C) and m & AP_D:
            r = bytearray(REC)
            key_of13(p, a, r)
            unpack13(p, a, r)
            app[bytes(r[0:7])] = bytes(r)
    keys = sorted(app)
    j = 0
    r = bytearray(REC)
    for i in range(n):
        key_of13(p, base + i * FREC, r)
        while j < len(keys) and _cmpk(keys[j], 0, r, 0) <= 0:
            a = app[keys[j]]
            j += 1
            if _cmpk(a, 0, r, 0) == 0:
                st[i] = 0xFE  # replaced by an appended record
            if a[8] & 7:
                yield a
        if st[i] == 0xFE:
            continue
        unpack13(p, base + i * FREC, r, -1 if st[i] == 0xFF else st[i])
        if r[8] & 7:
            yield bytes(r)
    while j < len(keys):
        a = app[keys[j]]
        j += 1
        if a[8] & 7:
            yield a


class _ShardWriter:
    """Writes one shard file page by page from sorted records."""

    def __init__(self, root, first, page, maxp=SHARD_PAGES):
        self.tag = _tag()
        self.path = "%s/s%08x" % (root, self.tag)
        self.first = bytes(first)
        self.f = open(self.path, "wb")
        self.page = page  # a BLOCK-sized buffer reused across writers (no 4 KB allocation each)
        self.maxp = maxp
        self.pages = []
        self.pno = 0
        self.n = 0  # records in the current page
        self.nrec = 0
        self.crc = 0

    def full(self):
        return self.pno == self.maxp - 1 and self.n == page_cap(self.pno)

    def add(self, rec):
        pack13(rec, 0, self.page, PAGE_HDR + self.n * FREC)
        self.n += 1
        self.nrec += 1
        if self.n == page_cap(self.pno) and self.pno < self.maxp - 1:
            self._flush()

    def _flush(self):
        n = self.n
        end = PAGE_HDR + n * FREC
        body = memoryview(self.page)[PAGE_HDR:end]
        c = crc32(body)
        self.crc = crc32(body, self.crc)
        struct.pack_into("<4sIHHI", self.page, 0, MAGIC_PAGE, self.tag, self.pno, n, c)
        k = bytearray(7)
        k[0:7] = self.page[PAGE_HDR:PAGE_HDR + 7]
        k[6] &= 0xF0
        self.pages.append((bytes(k), n))
        # Every page fills its data block, the last one too: the erased rest of the block is
        # where in-place entries go, and LittleFS never keeps a file of whole blocks inline.
        size = BLOCK - _ptr_bytes(self.pno)
        for i in range(end, size):
            self.page[i] = 0xFF
        try:
            self.f.write(memoryview(self.page)[:size])
        except OSError:
            self.abort()  # no open handle left behind for a finalizer to flush later
            raise
        self.pno += 1
        self.n = 0

    def close(self):
        if self.n:
            self._flush()
        try:
            self.f.close()
        except OSError:
            self.abort()
            raise
        self.f = None
        return _Shard(self.first, self.tag, self.nrec, self.crc, self.pages)

    def abort(self):
        if self.f:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None
        _rm(self.path)


def _sort_records(buf, n):
    # Shell sort of n 16-byte records by key, in place (no per-record objects on the heap;
    # a delta that is already sorted, as the host sends it, costs n - 1 compares a gap).
    tmp = bytearray(REC)
    mv = memoryview(buf)
    for gap in (701, 301, 132, 57, 23, 10, 4, 1):
        if gap >= n:
            continue
        for i in range(gap, n):
            if _cmpk(buf, (i - gap) * REC, buf, i * REC) <= 0:
                continue
            tmp[0:REC] = mv[i * REC:i * REC + REC]
            j = i
            while j >= gap and _cmpk(buf, (j - gap) * REC, tmp, 0) > 0:
                mv[j * REC:j * REC + REC] = mv[(j - gap) * REC:(j - gap) * REC + REC]
                j -= gap
            mv[j * REC:j * REC + REC] = tmp

# Whole shard pages: the writer (16-byte records packed to 13 bytes, pages filling their flash
# blocks) and the reader of a page's live records with its in-place entries applied. Loaded by
# updates, snapshots and diagnostics; the lookup never needs it. Format: docs/allowlist-format.md.
import struct
from binascii import crc32
from gv.allowlist.layout import (
    APS, AP_C, AP_D, AP_W, BLOCK, FREC, MAGIC_PAGE, OVS, OV_C, OV_D, OV_W, PAGE_HDR, PK, REC,
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
    removes). A generator: p must hold the page whenever it is resumed. Allocates a record at a
    time and nothing that lives longer than the page (no objects kept per entry: on a small heap
    they would be scattered between the garbage and split the free space)."""
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
    # The valid appended records as their offsets in the block (u16 LE), sorted by key, one a
    # card: oldest first, so a later entry of the same card replaces the earlier one.
    ap = bytearray(2 * na)
    m = 0
    for k in range(na):
        a = BLOCK - (k + 1) * APS
        mk = p[a + FREC]
        if mk & (AP_W | AP_C) or not mk & AP_D:
            continue
        j = m
        while j and _cmpk(p, ap[2 * j - 2] | ap[2 * j - 1] << 8, p, a) > 0:
            j -= 1
        if j and _cmpk(p, ap[2 * j - 2] | ap[2 * j - 1] << 8, p, a) == 0:
            j -= 1  # the card's newer entry takes the older one's place
        else:
            for t in range(2 * m - 1, 2 * j - 1, -1):
                ap[t + 2] = ap[t]
            m += 1
        ap[2 * j] = a & 0xFF
        ap[2 * j + 1] = a >> 8
    j = 0
    r = bytearray(REC)
    for i in range(n):
        q = base + i * FREC
        while j < m:
            a = ap[2 * j] | ap[2 * j + 1] << 8
            c = _cmpk(p, a, p, q)
            if c > 0:
                break
            j += 1
            if c == 0:
                st[i] = 0xFE  # replaced by an appended record
            x = _appended(p, a, r)
            if x:
                yield x
        if st[i] == 0xFE:
            continue
        key_of13(p, q, r)
        unpack13(p, q, r, -1 if st[i] == 0xFF else st[i])
        if r[8] & 7:
            yield bytes(r)
    while j < m:
        a = ap[2 * j] | ap[2 * j + 1] << 8
        j += 1
        x = _appended(p, a, r)
        if x:
            yield x


def _appended(p, a, r):
    # the appended record at p[a:] as 16 bytes (r is scratch), None when it removes its card
    if not (p[a + 6] >> 1) & 7:
        return None
    key_of13(p, a, r)
    unpack13(p, a, r)
    return bytes(r)


class _ShardWriter:
    """Writes one shard file page by page from sorted records."""

    def __init__(self, path_of, first, page, maxp=SHARD_PAGES):
        self.tag = _tag()
        self.path = path_of("s%08x" % self.tag)  # the store's _p: where a shard file lives
        self.first = bytes(first)
        self.f = open(self.path, "wb")
        self.page = page  # a BLOCK-sized buffer reused across writers (no 4 KB allocation each)
        self.maxp = maxp
        self.pk = bytearray(maxp * PK)  # each page's first key, record count and crc
        self.pno = 0
        self.n = 0  # records in the current page
        self.nrec = 0
        self.crc = 0

    def add13(self, p, po):
        # a 13-byte flash record as it is (a snapshot sent in the store's own form)
        o = PAGE_HDR + self.n * FREC
        pg = self.page
        for i in range(FREC):
            pg[o + i] = p[po + i]
        self._added()

    def full(self):
        return self.pno == self.maxp - 1 and self.n == page_cap(self.pno)

    def add(self, rec, ro=0):
        # the record at rec[ro:] (an offset, not a slice: a memoryview a record is 16 B of heap
        # each, 2 KB a rebuild chunk)
        pack13(rec, ro, self.page, PAGE_HDR + self.n * FREC)
        self._added()

    def _added(self):
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
        k = self.pno * PK
        pk = self.pk
        for i in range(7):
            pk[k + i] = self.page[PAGE_HDR + i]
        pk[k + 6] &= 0xF0
        pk[k + 7] = n & 0xFF
        pk[k + 8] = n >> 8
        for i in range(4):  # the page's crc as its header has it, for the read-back
            pk[k + 9 + i] = self.page[12 + i]
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
        return _Shard(self.first, self.tag, self.nrec, self.crc, self.pk, self.pno)

    def abort(self):
        if self.f:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None
        _rm(self.path)


def _sort_records(buf, n):
    # Shell sort of n 16-byte records by key, in place, moved byte by byte (a slice a move would
    # be heap: ~6 KB for one unsorted 61-card delta on 32-bit). The host sends deltas sorted,
    # so this costs n - 1 compares a gap and moves nothing.
    tmp = bytearray(REC)
    for gap in (701, 301, 132, 57, 23, 10, 4, 1):
        if gap >= n:
            continue
        for i in range(gap, n):
            if _cmpk(buf, (i - gap) * REC, buf, i * REC) <= 0:
                continue
            o = i * REC
            for k in range(REC):
                tmp[k] = buf[o + k]
            j = i
            while j >= gap and _cmpk(buf, (j - gap) * REC, tmp, 0) > 0:
                o = j * REC
                q = o - gap * REC
                for k in range(REC):
                    buf[o + k] = buf[q + k]
                j -= gap
            o = j * REC
            for k in range(REC):
                buf[o + k] = tmp[k]

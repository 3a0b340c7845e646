# On-flash layout of the allowlist store (constants, shard pages and their in-place entries,
# manifest and delta codecs, sorted-record helpers), shared by store.py, update.py and snapshot.py.
# Format and reasoning: docs/allowlist-format.md.
import os
import struct
from binascii import crc32
from gv.compat import const

BLOCK = const(4096)
MAGIC_PAGE = b"GVAp"
MAGIC_MAN = b"GVAm"
MAGIC_DELTA = b"GVAd"
MAGIC_SNAP = b"GVAs"
FORMAT = const(2)
PAGE_HDR = const(16)  # magic 4, tag 4, page_no 2, nrec 2, crc32 of the records 4
REC = const(16)  # a record as the wire and the delta log carry it (gv.allowlist.record)
FREC = const(13)  # a record on a flash page: 52-bit key, status, PIN flag, dates, 20-bit verifier
# A page holds at most PAGE_RECS records (3,432 bytes); the rest of its 4 KB block stays erased
# for in-place entries (status overrides and appended records, programmed without an erase).
PAGE_RECS = const(264)
OVS = const(2)  # an override entry: record index (9 bits), status (3), marks (written, committed, dead)
APS = const(14)  # an appended entry: a 13-byte record, then a marks byte
# marks: a bit is set by programming it to 0; data is programmed first, then W, then C
OV_W = const(0x10)
OV_C = const(0x20)
OV_D = const(0x40)
AP_W = const(1)
AP_C = const(2)
AP_D = const(4)
# Shards are written full (SHARD_PAGES full pages: 4,224 cards, 64 KB), grow page by page as
# cards are added, and split evenly beyond 1.5 times that: only a shard's last page is ever part-full,
# which is what keeps 100,000 cards inside the 2 MiB partition with the firmware beside them.
SHARD_PAGES = const(16)  # split past 1.5 times this
LOG_HARD = const(256)  # delta log records in RAM (4 KB; less if the heap has no such piece): only
# deltas that do not fit their pages go there (a live delta is one ~1 KiB message, ~60 cards);
# a delta that would pass it compacts first, a larger one is refused; compaction is due at half
MAX_DELTA = const(4096)  # cards in one delta applied in place (a larger change comes as a snapshot)
MAX_DFILES = const(4)  # delta files before they are folded into one  # larger changes go as a snapshot
IX = const(10)  # bytes of RAM index a page: first key 7, block 2, data offset 1 (its record
# count is read from the page's own header, which every use of the index reads anyway)
SCAN = const(64)  # bytes read per block when scanning for page headers
ENOSPC = const(28)
GAP = const(28)  # erased bytes always left between overrides and appended entries (two append
# slots): a scan from either end then meets a whole erased slot and stops, even on a full page
LOW_ROOM = const(56)  # a page with less erased room than this after a delta asks for compaction
MAX_VERSION = 0xFFFFFFFF  # versions are u32 on the wire and on flash; 0 means "none yet"


class BadData(ValueError):
    """An update the store refuses for what it says, not for the flash: a header past the hard
    limits, a record that cannot be (status, flags), records out of order, a count that does
    not add up. Raised before anything is allocated, written or deleted: the store, and a
    snapshot in progress, are exactly as before (the sync layer reports it as "malformed")."""


class LogFull(Exception):
    """A delta that fits only once the delta log is folded into the shards, on a store that
    leaves the folding to its owner (fold_inline False): a page write per step between
    decisions, not the whole compaction inside one call. Raised before anything is written;
    compaction_due() says True until the log is folded."""

MAN_HDR = "<4sBBHIIHHI"  # magic, format, 0, 0, version, count, nshards, ndeltas, tag
MAN_HDR_N = const(24)
SHARD = "<8sIII"  # first_key, tag, nrec, crc
SHARD_N = const(20)
MAX_SHARDS = const(202)  # shard entries one manifest block holds beside its crc and one CR slot
DELTA = "<III"  # tag, nrec, crc
DELTA_N = const(12)
DHDR = "<4sIIII"  # magic, from, to, nrec, crc
DHDR_N = const(20)
SNAP_HDR = "<4sIIIH"  # magic, version, count, received, nshards
SNAP_HDR_N = const(18)
# The manifest fills one block; after its crc, 12-byte records of in-place deltas are programmed
# into the erased rest: version u32, count u32, the low 24 bits of their crc32, marks (W intent
# written, C committed, D done: every entry's C mark programmed).
CR = const(12)
CR_W = const(1)
CR_C = const(2)
CR_D = const(4)


def _ptr_bytes(n):
    # LittleFS CTZ skip-list: data block n > 0 starts with ctz(n) + 1 pointers of 4 bytes.
    if n == 0:
        return 0
    c = 0
    while not (n >> c) & 1:
        c += 1
    return 4 * (c + 1)


def page_cap(n):
    """Records written to page n of a shard file (page n fills LittleFS data block n exactly)."""
    return min(PAGE_RECS, (BLOCK - _ptr_bytes(n) - PAGE_HDR) // FREC)


def _cmpk(a, ao, b, bo):
    # Compare the 52-bit keys at a[ao:] and b[bo:] (bytes 0-5 and the high nibble of byte 6; a
    # 16-byte record, a 13-byte flash record and an index entry all start with one) without
    # slicing (no heap). The store knows a card by these 52 bits only.
    for i in range(6):
        x = a[ao + i]
        y = b[bo + i]
        if x != y:
            return -1 if x < y else 1
    x = a[ao + 6] & 0xF0
    y = b[bo + 6] & 0xF0
    if x != y:
        return -1 if x < y else 1
    return 0


def unpack13(p, po, out, status=-1):
    """Bytes 8-15 of the 16-byte record for the flash record at p[po:] into out (status replaced
    when given). No heap: the lookup path. The caller fills the key (bytes 0-7)."""
    s = p[po + 6]
    st = (s >> 1) & 7 if status < 0 else status
    out[8] = st | (s & 1) << 3
    h = p[po + 7] << 16 | p[po + 8] << 8 | p[po + 9]
    lo = p[po + 10] << 16 | p[po + 11] << 8 | p[po + 12]
    fr = h >> 10
    un = (h & 0x3FF) << 4 | lo >> 20
    if fr == 0x3FFF:
        fr = 0xFFFF
    if un == 0x3FFF:
        un = 0xFFFF
    out[9] = fr >> 8
    out[10] = fr & 255
    out[11] = un >> 8
    out[12] = un & 255
    v = lo & 0xFFFFF
    out[13] = v >> 12
    out[14] = (v >> 4) & 255
    out[15] = (v & 15) << 4


def trunc_key(buf, o):
    # an incoming 8-byte key cut to the 52 bits the store keeps
    buf[o + 6] &= 0xF0
    buf[o + 7] = 0


def u32le(b, o):
    # a u32 LE read by hand: a small int for counts and page numbers, where unpack_from would
    # make a tuple a call (heap on the rebuild's and the index build's paths)
    return b[o] | b[o + 1] << 8 | b[o + 2] << 16 | b[o + 3] << 24


def same4(a, ao, b, bo):
    # a[ao:ao + 4] == b[bo:bo + 4] without slices (shard tags compared as bytes)
    return a[ao] == b[bo] and a[ao + 1] == b[bo + 1] and a[ao + 2] == b[bo + 2] and a[ao + 3] == b[bo + 3]


def is_page(p, o):
    # p[o:] starts with MAGIC_PAGE (no slice: the lookup's and the index build's paths)
    return p[o] == 0x47 and p[o + 1] == 0x56 and p[o + 2] == 0x41 and p[o + 3] == 0x70


def page_n(p, o):
    """The record count in the header of the page at p[o:], -1 unless it is one of our pages
    (magic) with a count a page can hold. No heap: the lookup's path."""
    if not is_page(p, o):
        return -1
    n = p[o + 10] | p[o + 11] << 8
    return n if n <= PAGE_RECS else -1


def _erased(p, o, n):
    for i in range(o, o + n):
        if p[i] != 0xFF:
            return False
    return True


def entry_slots(p, base, n):
    """Overrides and appends in the page whose records start at p[base:] (n of them), as one
    small int: overrides | appends << 12 (no tuple: the in-place path asks for every page it
    touches, three times a delta). The page ends with its block; a slot that is not erased is in
    use, whole or torn. Writers keep at least GAP erased bytes between the two kinds, whose
    erased room is BLOCK - appends * APS - (base + n * FREC + overrides * OVS)."""
    end = base + n * FREC
    na = 0
    a = BLOCK - APS
    while a >= end and not _erased(p, a, APS):
        na += 1
        a -= APS
    top = BLOCK - na * APS
    no = 0
    o = end
    while o + OVS <= top and not (p[o] == 0xFF and p[o + 1] == 0xFF):
        no += 1
        o += OVS
    return no | na << 12


def entry_span(p, base, n):
    """(overrides, appends, erased bytes between them): entry_slots as a tuple."""
    s = entry_slots(p, base, n)
    no, na = s & 0xFFF, s >> 12
    return no, na, BLOCK - na * APS - (base + n * FREC + no * OVS)


# Shard files spread over SHARD_DIRS directories (root/h0..h3, by tag) on a partition larger
# than BIG_PART blocks: LittleFS compacts a directory's metadata log in one call, in time that
# grows with the square of its entries (the longest compaction step). 250,000 cards make 60 shard
# files; in one directory that call read the flash 1,900 times. On 2 MiB (25 shards) the files
# stay in the root: each directory costs a metadata block pair the small partition cannot spare.
SHARD_DIRS = const(4)
BIG_PART = const(1024)  # blocks (4 MiB)


def _tag():
    t = struct.unpack("<I", os.urandom(4))[0]
    return t or 1


def _rfile(path):
    with open(path, "rb") as f:
        return f.read()


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass


PK = const(13)  # a written page as the writer reports it: first key (7), records (2, LE), crc (4, LE)


class _Shard:
    __slots__ = ("first", "tag", "nrec", "crc", "pk", "np")

    def __init__(self, first, tag, nrec, crc, pk, np):
        self.first = bytes(first)
        self.tag = tag
        self.nrec = nrec
        self.crc = crc
        self.pk = pk  # PK bytes a page, np pages: one object, not two per page on the heap
        self.np = np


class ShardTable:
    """The shard list as one bytearray of SHARD_N-byte entries (the manifest's own encoding):
    one allocation instead of hundreds of small objects scattered over a 100 KB heap."""

    def __init__(self, cap=8):
        self.buf = bytearray(max(cap, 1) * SHARD_N)
        self.n = 0

    @staticmethod
    def load(data, off, n):
        t = ShardTable(n + 8)
        t.buf[0:n * SHARD_N] = memoryview(data)[off:off + n * SHARD_N]
        t.n = n
        return t

    def __len__(self):
        return self.n

    def first(self, i):
        return bytes(self.buf[i * SHARD_N:i * SHARD_N + 8])

    def cmp_first(self, i, key):
        return _cmpk(self.buf, i * SHARD_N, key, 0)

    def tag(self, i):
        return struct.unpack_from("<I", self.buf, i * SHARD_N + 8)[0]

    def nrec(self, i):
        # u32le, not unpack_from: total() runs for every rebuild message, over every shard
        return u32le(self.buf, i * SHARD_N + 12)

    def crc(self, i):
        return struct.unpack_from("<I", self.buf, i * SHARD_N + 16)[0]

    def total(self):
        t = 0
        for i in range(self.n):
            t += self.nrec(i)
        return t

    def _room(self, k):
        if (self.n + k) * SHARD_N > len(self.buf):
            nb = bytearray((self.n + k + 16) * SHARD_N)
            nb[0:self.n * SHARD_N] = memoryview(self.buf)[0:self.n * SHARD_N]
            self.buf = nb

    def append(self, s):
        self._room(1)
        struct.pack_into(SHARD, self.buf, self.n * SHARD_N, s.first, s.tag, s.nrec, s.crc)
        self.n += 1

    def set_first(self, i, key):
        self.buf[i * SHARD_N:i * SHARD_N + 8] = key

    def splice(self, i, news):
        """Replace entry i by the shards in news (in place, tail moved by hand: no copy on heap)."""
        k = len(news)
        self._room(k)
        b = self.buf
        if k != 1:
            lo = (i + 1) * SHARD_N
            hi = self.n * SHARD_N
            d = (k - 1) * SHARD_N
            if d > 0:
                for j in range(hi - 1, lo - 1, -1):
                    b[j + d] = b[j]
            else:
                for j in range(lo, hi):
                    b[j + d] = b[j]
        for j in range(k):
            s = news[j]
            struct.pack_into(SHARD, b, (i + j) * SHARD_N, s.first, s.tag, s.nrec, s.crc)
        self.n += k - 1

    def write(self, f, crc, i=-1, news=None):
        """Write the entries to f (entry i replaced by news if given); returns the running crc32."""
        mv = memoryview(self.buf)
        parts = ((0, self.n),) if news is None else ((0, i), (i + 1, self.n))
        for a, b in parts:
            if b > a:
                chunk = mv[a * SHARD_N:b * SHARD_N]
                f.write(chunk)
                crc = crc32(chunk, crc)
            if news is not None and a == 0:
                e = bytearray(SHARD_N)
                for s in news:
                    struct.pack_into(SHARD, e, 0, s.first, s.tag, s.nrec, s.crc)
                    f.write(e)
                    crc = crc32(e, crc)
        return crc


def _round(n):
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _merge_into(log, na, b, nb):
    """Merge the nb sorted records of b into the na sorted records at the start of log, in place
    (log has the capacity: LOG_HARD records, taken at boot); b wins on equal keys. Returns the new
    record count. Works backwards so nothing is overwritten before it is read; no heap."""
    same = 0
    i = j = 0
    while i < na and j < nb:
        c = _cmpk(log, i * REC, b, j * REC)
        if c <= 0:
            i += 1
        if c >= 0:
            j += 1
        if c == 0:
            same += 1
    n = na + nb - same
    if n * REC > len(log):
        raise ValueError("delta log over capacity")
    i = na - 1
    j = nb - 1
    o = n - 1
    while j >= 0:
        c = _cmpk(log, i * REC, b, j * REC) if i >= 0 else -1
        if c > 0:
            _cp16(log, o * REC, log, i * REC)
            i -= 1
        else:
            _cp16(log, o * REC, b, j * REC)
            j -= 1
            if c == 0:
                i -= 1
        o -= 1
    return n


def _cp16(dst, do, src, so):
    # one record, byte by byte: a slice on either side is a heap object per record (~16 B on
    # 32-bit: 4.9 KB for a 61-card delta into a 195-record log). dst and src never overlap.
    for k in range(REC):
        dst[do + k] = src[so + k]

# On-flash layout of the allowlist store (constants, shard pages, manifest and delta codecs,
# sorted-record helpers), shared by store.py, update.py and snapshot.py.
# Format and reasoning: docs/allowlist-format.md.
import os
import struct
from array import array
from binascii import crc32
from gv.compat import const

BLOCK = const(4096)
MAGIC_PAGE = b"GVAp"
MAGIC_MAN = b"GVAm"
MAGIC_DELTA = b"GVAd"
MAGIC_SNAP = b"GVAs"
FORMAT = const(1)
PAGE_HDR = const(16)  # magic 4, tag 4, page_no 2, nrec 2, crc32 of the records 4
REC = const(16)
# Shards are written full (SHARD_PAGES full pages: 4065 cards, 64 KB), grow page by page as
# cards are added, and split evenly beyond 1.5 times that: only a shard's last page is ever part-full,
# which is what keeps 100,000 cards inside the 2 MiB partition with the firmware beside them.
SHARD_PAGES = const(16)  # split past 1.5 times this
LOG_HARD = const(1024)  # delta log records in RAM (16 KB; less if the heap has no such piece):
# a delta that would pass it compacts first, a larger delta is refused; compaction is due at half
MAX_DFILES = const(4)  # delta files before they are folded into one  # larger changes go as a snapshot
IX = const(12)  # bytes of RAM index a page: first key 8, block 2, records 1, data offset 1
SCAN = const(64)  # bytes read per block when scanning for page headers
MIN_FILE = const(256)  # a shard file never shorter (LittleFS keeps files <= 128 B inline)
ENOSPC = const(28)

MAN_HDR = "<4sBBHIIHH"  # magic, format, 0, 0, version, count, nshards, ndeltas
MAN_HDR_N = const(20)
SHARD = "<8sIII"  # first_key, tag, nrec, crc
SHARD_N = const(20)
DELTA = "<III"  # tag, nrec, crc
DELTA_N = const(12)
DHDR = "<4sIIII"  # magic, from, to, nrec, crc
DHDR_N = const(20)
SNAP_HDR = "<4sIIIH"  # magic, version, count, received, nshards
SNAP_HDR_N = const(18)


def _ptr_bytes(n):
    # LittleFS CTZ skip-list: data block n > 0 starts with ctz(n) + 1 pointers of 4 bytes.
    if n == 0:
        return 0
    c = 0
    while not (n >> c) & 1:
        c += 1
    return 4 * (c + 1)


def page_cap(n):
    """Records that fit page n of a shard file (page n fills LittleFS data block n exactly)."""
    return (BLOCK - _ptr_bytes(n) - PAGE_HDR) // REC


def _cmp8(a, ao, b, bo):
    # Compare 8-byte keys a[ao:] and b[bo:] without slicing (no heap).
    for i in range(8):
        x = a[ao + i]
        y = b[bo + i]
        if x != y:
            return -1 if x < y else 1
    return 0


def _tag():
    t = struct.unpack("<I", os.urandom(4))[0]
    return t or 1


def _wfile(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _rfile(path):
    with open(path, "rb") as f:
        return f.read()


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass


class _Shard:
    __slots__ = ("first", "tag", "nrec", "crc", "pages")

    def __init__(self, first, tag, nrec, crc, pages=None):
        self.first = bytes(first)
        self.tag = tag
        self.nrec = nrec
        self.crc = crc
        self.pages = pages  # [(first key, records)] of each page, from the writer


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
        return _cmp8(self.buf, i * SHARD_N, key, 0)

    def tag(self, i):
        return struct.unpack_from("<I", self.buf, i * SHARD_N + 8)[0]

    def nrec(self, i):
        return struct.unpack_from("<I", self.buf, i * SHARD_N + 12)[0]

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
        o = PAGE_HDR + self.n * REC
        self.page[o:o + REC] = rec
        self.n += 1
        self.nrec += 1
        if self.n == page_cap(self.pno) and self.pno < self.maxp - 1:
            self._flush(True)

    def _flush(self, pad):
        n = self.n
        body = memoryview(self.page)[PAGE_HDR:PAGE_HDR + n * REC]
        c = crc32(body)
        self.crc = crc32(body, self.crc)
        struct.pack_into("<4sIHHI", self.page, 0, MAGIC_PAGE, self.tag, self.pno, n, c)
        self.pages.append((bytes(self.page[PAGE_HDR:PAGE_HDR + 8]), n))
        # A full page fills its data block; a last page is at least MIN_FILE so LittleFS never
        # keeps the shard inline in its metadata (it must live in data blocks to be found).
        size = BLOCK - _ptr_bytes(self.pno) if pad else max(PAGE_HDR + n * REC, MIN_FILE)
        if size > PAGE_HDR + n * REC:
            for i in range(PAGE_HDR + n * REC, size):
                self.page[i] = 0
        try:
            self.f.write(memoryview(self.page)[:size])
        except OSError:
            self.abort()  # no open handle left behind for a finalizer to flush later
            raise
        self.pno += 1
        self.n = 0

    def close(self):
        if self.n:
            self._flush(False)
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


def _round(n):
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _sort_records(buf, n):
    # Shell sort of n 16-byte records by key, in place (no per-record objects on the heap;
    # a delta that is already sorted, as the host sends it, costs n - 1 compares a gap).
    tmp = bytearray(REC)
    mv = memoryview(buf)
    for gap in (701, 301, 132, 57, 23, 10, 4, 1):
        if gap >= n:
            continue
        for i in range(gap, n):
            if _cmp8(buf, (i - gap) * REC, buf, i * REC) <= 0:
                continue
            tmp[0:REC] = mv[i * REC:i * REC + REC]
            j = i
            while j >= gap and _cmp8(buf, (j - gap) * REC, tmp, 0) > 0:
                mv[j * REC:j * REC + REC] = mv[(j - gap) * REC:(j - gap) * REC + REC]
                j -= gap
            mv[j * REC:j * REC + REC] = tmp


def _merge_into(log, na, b, nb):
    """Merge the nb sorted records of b into the na sorted records at the start of log, in place
    (log has the capacity: LOG_HARD records, taken at boot); b wins on equal keys. Returns the new
    record count. Works backwards so nothing is overwritten before it is read; no heap."""
    same = 0
    i = j = 0
    while i < na and j < nb:
        c = _cmp8(log, i * REC, b, j * REC)
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
    mv = memoryview(log)
    while j >= 0:
        c = _cmp8(log, i * REC, b, j * REC) if i >= 0 else -1
        if c > 0:
            mv[o * REC:o * REC + REC] = mv[i * REC:i * REC + REC]
            i -= 1
        else:
            mv[o * REC:o * REC + REC] = b[j * REC:j * REC + REC]
            j -= 1
            if c == 0:
                i -= 1
        o -= 1
    return n

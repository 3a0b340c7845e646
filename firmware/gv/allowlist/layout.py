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
SHARD_PAGES = const(4)  # a shard is at most this many pages (~1000 cards, 16 KB)
SHARD_RECS = const(1017)  # records in SHARD_PAGES full pages: 255 + 3 * 254
LOG_SOFT = const(512)  # compaction is due above this many log records
LOG_HARD = const(2048)  # a delta that would pass this compacts first (RAM bound: 32 KB)
DELTA_MAX = const(2048)  # larger changes go as a snapshot
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
    __slots__ = ("first", "tag", "nrec", "crc")

    def __init__(self, first, tag, nrec, crc):
        self.first = bytes(first)
        self.tag = tag
        self.nrec = nrec
        self.crc = crc


class _ShardWriter:
    """Writes one shard file page by page from sorted records."""

    def __init__(self, root, first, page):
        self.tag = _tag()
        self.path = "%s/s%08x" % (root, self.tag)
        self.first = bytes(first)
        self.f = open(self.path, "wb")
        self.page = page  # a BLOCK-sized buffer reused across writers (no 4 KB allocation each)
        self.pno = 0
        self.n = 0  # records in the current page
        self.nrec = 0
        self.crc = 0

    def full(self):
        return self.pno == SHARD_PAGES - 1 and self.n == page_cap(self.pno)

    def add(self, rec):
        o = PAGE_HDR + self.n * REC
        self.page[o:o + REC] = rec
        self.n += 1
        self.nrec += 1
        if self.n == page_cap(self.pno) and self.pno < SHARD_PAGES - 1:
            self._flush(True)

    def _flush(self, pad):
        n = self.n
        body = memoryview(self.page)[PAGE_HDR:PAGE_HDR + n * REC]
        c = crc32(body)
        self.crc = crc32(body, self.crc)
        struct.pack_into("<4sIHHI", self.page, 0, MAGIC_PAGE, self.tag, self.pno, n, c)
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
        return _Shard(self.first, self.tag, self.nrec, self.crc)

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


def _sort_unique(buf):
    # Sort 16-byte records by key; of equal keys the last one wins. Allocates (update path only).
    n = len(buf) // REC
    idx = list(range(n))
    mv = memoryview(buf)
    idx.sort(key=lambda i: (bytes(mv[i * REC:i * REC + 8]), i))
    out = bytearray()
    for j in range(n):
        i = idx[j]
        if j + 1 < n and bytes(mv[idx[j + 1] * REC:idx[j + 1] * REC + 8]) == bytes(mv[i * REC:i * REC + 8]):
            continue
        out += mv[i * REC:i * REC + REC]
    return out


def _merge(a, b):
    # Union of two sorted record arrays; b's record wins on equal keys. Sized exactly up front
    # (a growing bytearray would fragment the small heap).
    na = len(a) // REC
    nb = len(b) // REC
    i = j = same = 0
    while i < na and j < nb:
        c = _cmp8(a, i * REC, b, j * REC)
        if c <= 0:
            i += 1
        if c >= 0:
            j += 1
        if c == 0:
            same += 1
    out = bytearray((na + nb - same) * REC)
    ma = memoryview(a)
    mb = memoryview(b)
    i = j = o = 0
    while i < na and j < nb:
        c = _cmp8(a, i * REC, b, j * REC)
        if c < 0:
            out[o:o + REC] = ma[i * REC:i * REC + REC]
            i += 1
        else:
            out[o:o + REC] = mb[j * REC:j * REC + REC]
            j += 1
            if c == 0:
                i += 1
        o += REC
    if i < na:
        out[o:] = ma[i * REC:]
    elif j < nb:
        out[o:] = mb[j * REC:]
    return out

# The on-flash allowlist store: boot (open), the in-RAM page index and the alloc-free lookup.
# Updates live in update.py (deltas, compaction) and snapshot.py, loaded when first used.
# Format and reasoning: docs/allowlist-format.md.
#
# Lookups read the flash block holding the record straight from the block device (one read, no
# heap): shard pages are laid out to fill LittleFS's data blocks exactly, each page starts with a
# header naming its shard file, and open() finds the pages by scanning block headers. LittleFS
# never moves the blocks of a file that is not rewritten, so the map holds until we replace it.
import os
import struct
from binascii import crc32
from gv.compat import const
from gv.allowlist.layout import (
    BLOCK, ENOSPC, FORMAT, MAGIC_DELTA, MAGIC_MAN,
    MAGIC_PAGE, MAGIC_SNAP, PAGE_HDR, REC, SCAN, SHARD_PAGES,
    DELTA, DELTA_N, DHDR, DHDR_N, MAN_HDR, MAN_HDR_N,
    SHARD, SHARD_N, SNAP_HDR, SNAP_HDR_N, ShardTable, _cmp8, IX,
    _exists, _merge_into, _ptr_bytes, LOG_HARD, _rfile, _rm, _round,
    _wfile, page_cap,
)


class Allowlist:
    """The reader's allowlist. dev: the block device under the LittleFS that holds root (the
    ESP32's flash partition is found by itself; the unix port passes the FlashDev)."""

    def __init__(self, root, dev=None, shard_pages=SHARD_PAGES):
        self.root = root
        # shard size: written full at shard_pages pages, split past 1.5 times that (tests use
        # small shards so a few thousand cards exercise many shards and splits)
        self._sp = shard_pages
        self._mp = shard_pages * 3 // 2
        self._srecs = _recs(self._sp)
        self._mrecs = _recs(self._mp)
        self._dev = dev if dev is not None else _find_dev()
        self.version = 0
        self.count = 0
        self.health = "empty"
        self.need_resync = True
        self._st = ShardTable()
        self._dtags = []  # (tag, nrec, crc) of each delta file in the manifest, oldest first
        # The delta log: sorted records (a removal has status 0), merged in place in a buffer of
        # LOG_HARD records taken at boot, so a stream of deltas never fragments the heap.
        # A heap already cut up by the rest of the app may not have 16 KB in one piece: then a
        # smaller log, and deltas above its size are refused (ValueError: send a snapshot).
        cap = LOG_HARD
        while True:
            try:
                self._log = bytearray(cap * REC)
                break
            except MemoryError:
                if cap <= 64:
                    raise
                cap //= 2
        self._logcap = cap
        self._nlog = 0
        self._page = bytearray(BLOCK)
        self._pmv = memoryview(self._page)
        # Page index, IX bytes a page: first key (8), flash block (2, LE), records (1), data
        # offset in the block (1). One bytearray, reused across rebuilds while it is big enough.
        # Sized once at boot for the whole partition (a page is a flash block, so there can never
        # be more pages than blocks): 6 KB for 2 MiB, never reallocated on a fragmented heap.
        self._ix = bytearray((self._dev.ioctl(4, 0) if self._dev is not None else FS_PAGES) * IX)
        self._np = 0
        self._cgen = None
        self._snap = None
        # Update buffers (shard page being written, shard page being merged), taken at boot while
        # the heap is whole: a 4 KB block found later on a fragmented heap may not exist.
        self._wb = bytearray(BLOCK)
        self._rbuf = bytearray(BLOCK)

    # ---------------------------------------------------------------- boot
    def open(self):
        """Load the manifest and delta log, find every shard page on flash and check it. Never
        raises on bad data: .health says what is wrong, .need_resync asks the host to resend."""
        self._cgen = None
        self._snap = None
        try:
            os.mkdir(self.root)
        except OSError:
            pass
        problems = []
        try:
            self._load_manifest()
        except (OSError, ValueError) as e:
            if _exists(self._p("M")):
                problems.append("manifest unreadable")
            self._st = ShardTable()
            self._dtags = []
            self.version = 0
            self.count = 0
        try:
            self._rebuild_log()
        except (OSError, ValueError):
            problems.append("delta log unreadable")
            self._nlog = 0
        bad = self._build_index(verify=True)
        if bad:
            problems.append("%d shard(s) missing or corrupt" % bad)
        self._collect_garbage()
        if problems:
            self.health = "corrupt: " + "; ".join(problems)
            self.need_resync = True
        elif not self.version:
            self.health = "empty"
            self.need_resync = True
        else:
            self.health = "ok"
            self.need_resync = False
        return self

    def _wbuf(self):
        if self._wb is None:
            self._wb = bytearray(BLOCK)
        return self._wb

    def _p(self, name):
        return self.root + "/" + name

    def _load_manifest(self):
        data = _rfile(self._p("M"))
        if len(data) < MAN_HDR_N + 4 or crc32(memoryview(data)[:-4]) != struct.unpack("<I", data[-4:])[0]:
            raise ValueError("manifest checksum")
        magic, fmt, _, _, version, count, ns, nd = struct.unpack_from(MAN_HDR, data, 0)
        if magic != MAGIC_MAN or fmt != FORMAT:
            raise ValueError("manifest format")
        if len(data) != MAN_HDR_N + ns * SHARD_N + nd * DELTA_N + 4:
            raise ValueError("manifest length")
        st = ShardTable.load(data, MAN_HDR_N, ns)
        o = MAN_HDR_N + ns * SHARD_N
        dt = []
        for _ in range(nd):
            dt.append(struct.unpack_from(DELTA, data, o))
            o += DELTA_N
        self._st = st
        self._dtags = dt
        self.version = version
        self.count = count

    def _write_manifest(self, version, count, st, dtags, i=-1, news=None):
        """The single atomic switch: write M.tmp, rename over M (LittleFS rename is all-or-nothing).
        Entry i of st is written as the shards in news when given (st itself is not changed)."""
        tmp = self._p("M.tmp")
        ns = len(st) + (len(news) - 1 if news is not None else 0)
        hdr = struct.pack(MAN_HDR, MAGIC_MAN, FORMAT, 0, 0, version, count, ns, len(dtags))
        with open(tmp, "wb") as f:
            f.write(hdr)
            crc = st.write(f, crc32(hdr), i, news)
            for d in dtags:
                e = struct.pack(DELTA, d[0], d[1], d[2])
                f.write(e)
                crc = crc32(e, crc)
            f.write(struct.pack("<I", crc))
        os.rename(tmp, self._p("M"))

    def _read_delta(self, tag, nrec, crc):
        data = _rfile(self._p("d%08x" % tag))
        magic, fr, to, n, c = struct.unpack_from(DHDR, data, 0)
        body = memoryview(data)[DHDR_N:]
        if magic != MAGIC_DELTA or n != nrec or c != crc or len(body) != n * REC or crc32(body) != c:
            raise ValueError("delta corrupt")
        return data

    def _rebuild_log(self):
        self._nlog = 0
        n = 0
        for tag, nrec, crc in self._dtags:
            d = self._read_delta(tag, nrec, crc)
            n = _merge_into(self._log, n, memoryview(d)[DHDR_N:], nrec)
            d = None
        self._nlog = n

    def _pages_of(self, nrec):
        n, p, left = 0, 0, nrec
        while left > 0:
            left -= page_cap(p)
            p += 1
            n += 1
        return n

    def _build_index(self, verify):
        """In-RAM page index, found by reading the first SCAN bytes of every flash block: LittleFS
        keeps a file's data blocks where they are until the file is rewritten. With verify, every
        page is read whole and checked against its crc and its shard's crc (boot, snapshot)."""
        st = self._st
        ns = len(st)
        base = bytearray(4 * (ns + 1))  # first page index of each shard (u32 LE)
        tags = {}
        np = 0
        for i in range(ns):
            struct.pack_into("<I", base, 4 * i, np)
            np += self._pages_of(st.nrec(i))
            tags[st.tag(i)] = i
        struct.pack_into("<I", base, 4 * ns, np)
        if len(self._ix) < np * IX:  # more pages than flash blocks: the manifest lies
            self._np = 0
            return ns
        ix = self._ix
        for j in range(np):
            ix[j * IX + 8] = 0xFF
            ix[j * IX + 9] = 0xFF
        dev = self._dev
        if dev is not None and np:
            hdr = bytearray(SCAN)
            for b in range(dev.ioctl(4, 0)):
                dev.readblocks(b, hdr, 0)
                for o in range(0, SCAN - PAGE_HDR + 1, 4):
                    if hdr[o] == 0x47 and hdr[o + 1] == 0x56 and hdr[o:o + 4] == MAGIC_PAGE:
                        tag, pno = struct.unpack_from("<IH", hdr, o + 4)
                        i = tags.get(tag)
                        if i is not None and _ptr_bytes(pno) == o:
                            j = struct.unpack_from("<I", base, 4 * i)[0] + pno
                            if j < struct.unpack_from("<I", base, 4 * i + 4)[0]:
                                ix[j * IX + 8] = b & 0xFF
                                ix[j * IX + 9] = b >> 8
                        break
        tags = None
        if dev is None:
            return self._build_index_fs(verify)
        page = self._page
        k = 0  # pages kept: a bad shard's pages are dropped, its cards denied until a resend
        bad = 0
        for i in range(ns):
            j0 = struct.unpack_from("<I", base, 4 * i)[0]
            j1 = struct.unpack_from("<I", base, 4 * i + 4)[0]
            crc = 0
            ok = True
            k0 = k
            for j in range(j0, j1):
                p = j - j0
                b = ix[j * IX + 8] | ix[j * IX + 9] << 8
                if b == 0xFFFF:
                    ok = False
                    break
                o = _ptr_bytes(p)
                if verify:
                    dev.readblocks(b, page, 0)
                else:
                    dev.readblocks(b, memoryview(page)[:o + PAGE_HDR + 8], 0)
                n = page[o + 10] | page[o + 11] << 8
                if n > page_cap(p):
                    ok = False
                    break
                if verify:
                    body = self._pmv[o + PAGE_HDR:o + PAGE_HDR + n * REC]
                    if crc32(body) != struct.unpack_from("<I", page, o + 12)[0]:
                        ok = False
                        break
                    crc = crc32(body, crc)
                _ix_put(ix, k, page, o, b, n, o)
                k += 1
            if ok and verify and crc != st.crc(i):
                ok = False
            if not ok:
                bad += 1
                k = k0
        self._np = k
        return bad

    def _build_index_fs(self, verify):
        # The index without a block device: shard and page number in place of block and offset.
        st = self._st
        ix = self._ix
        page = self._page
        k = 0
        bad = 0
        for i in range(len(st)):
            k0 = k
            ok = True
            crc = 0
            try:
                with open(self._p("s%08x" % st.tag(i)), "rb") as f:
                    for p in range(self._pages_of(st.nrec(i))):
                        o = _ptr_bytes(p)
                        size = BLOCK - o
                        f.seek(_file_off(p))
                        got = f.readinto(self._pmv[o:o + size])
                        n = page[o + 10] | page[o + 11] << 8
                        if (got < PAGE_HDR + n * REC or n > page_cap(p) or page[o:o + 4] != MAGIC_PAGE
                                or (k + 1) * IX > len(ix)):
                            ok = False
                            break
                        body = self._pmv[o + PAGE_HDR:o + PAGE_HDR + n * REC]
                        if verify and crc32(body) != struct.unpack_from("<I", page, o + 12)[0]:
                            ok = False
                            break
                        crc = crc32(body, crc)
                        _ix_put(ix, k, page, o, i, n, p)
                        k += 1
            except OSError:
                ok = False
            if ok and verify and crc != st.crc(i):
                ok = False
            if not ok:
                bad += 1
                k = k0
        self._np = k
        return bad

    def _collect_garbage(self):
        # Files neither the manifest nor the snapshot state names: what a cut or a failed write
        # left behind. Checked name by name against the tables (no set of every name in RAM).
        snap = self._load_snap()
        sst = snap[3] if snap else None
        doomed = []
        try:
            for e in os.ilistdir(self.root):
                if not self._wanted(e[0], sst):
                    doomed.append(e[0])
        except OSError:
            return
        for n in doomed:
            _rm(self._p(n))

    def _wanted(self, n, sst):
        if n == "M":
            return True
        if n == "S":
            return sst is not None
        if len(n) != 9 or n[0] not in "sd":
            return False
        try:
            tag = int(n[1:], 16)
        except ValueError:
            return False
        if n[0] == "d":
            for d in self._dtags:
                if d[0] == tag:
                    return True
            return False
        for t in (self._st, sst):
            if t is not None:
                for i in range(len(t)):
                    if t.tag(i) == tag:
                        return True
        return False

    # ---------------------------------------------------------------- lookup (hot path)
    def lookup(self, key8, rec16):
        """Copy the record for key8 into rec16 and return True; False if the card is unknown.
        One flash block read, no heap allocation."""
        log = self._log
        lo = 0
        hi = self._nlog - 1
        while lo <= hi:
            mid = (lo + hi) >> 1
            c = _cmp8(log, mid * REC, key8, 0)
            if c == 0:
                o = mid * REC
                if log[o + 8] == 0:  # removed by a delta
                    return False
                for i in range(REC):
                    rec16[i] = log[o + i]
                return True
            if c < 0:
                lo = mid + 1
            else:
                hi = mid - 1
        # the last page whose first key <= key8
        ix = self._ix
        lo = 0
        hi = self._np - 1
        p = -1
        while lo <= hi:
            mid = (lo + hi) >> 1
            if _cmp8(ix, mid * IX, key8, 0) <= 0:
                p = mid
                lo = mid + 1
            else:
                hi = mid - 1
        if p < 0:
            return False
        page = self._page
        try:
            base = self._read_page(p)
        except OSError:
            return False
        if page[base] != 0x47 or page[base + 1] != 0x56:  # not our page any more: fail secure
            self.health = "corrupt: page moved"
            self.need_resync = True
            return False
        base += PAGE_HDR
        lo = 0
        hi = ix[p * IX + 10] - 1
        while lo <= hi:
            mid = (lo + hi) >> 1
            o = base + mid * REC
            c = _cmp8(page, o, key8, 0)
            if c == 0:
                for i in range(REC):
                    rec16[i] = page[o + i]
                return True
            if c < 0:
                lo = mid + 1
            else:
                hi = mid - 1
        return False

    def _read_page(self, p):
        """Page p of the index into self._page at its in-block offset, which is returned."""
        ix = self._ix
        if self._dev is not None:  # one block read, no heap
            self._dev.readblocks(ix[p * IX + 8] | ix[p * IX + 9] << 8, self._page, 0)
            return ix[p * IX + 11]
        # No block device known (a port without esp32.Partition, nothing passed in): through the
        # filesystem. Same answers, but it opens a file (heap) and LittleFS reads more blocks.
        i = ix[p * IX + 8] | ix[p * IX + 9] << 8
        pno = ix[p * IX + 11]
        o = _ptr_bytes(pno)
        with open(self._p("s%08x" % self._st.tag(i)), "rb") as f:
            f.seek(_file_off(pno))
            f.readinto(self._pmv[o:o + PAGE_HDR + ix[p * IX + 10] * REC])
        return o

    def items(self):
        """Every live record, sorted (for checks and diagnostics; reads the whole store)."""
        log = memoryview(self._log)
        li = 0
        ix = self._ix
        for p in range(self._np):
            base = self._read_page(p) + PAGE_HDR
            for i in range(ix[p * IX + 10]):
                r = bytes(self._pmv[base + i * REC:base + i * REC + REC])
                while li < self._nlog and _cmp8(log, li * REC, r, 0) < 0:
                    if log[li * REC + 8]:
                        yield bytes(log[li * REC:li * REC + REC])
                    li += 1
                if li < self._nlog and _cmp8(log, li * REC, r, 0) == 0:
                    if log[li * REC + 8]:
                        yield bytes(log[li * REC:li * REC + REC])
                    li += 1
                else:
                    yield r
        while li < self._nlog:
            if log[li * REC + 8]:
                yield bytes(log[li * REC:li * REC + REC])
            li += 1

    def _storage_failed(self, e, temps):
        for t in temps:
            _rm(t)
        if e.args and e.args[0] == ENOSPC:
            self.health = "full: update needs more flash than is free"
        else:
            self.health = "write failed: %r" % (e,)
        self.need_resync = True

    def _load_snap(self):
        try:
            data = _rfile(self._p("S"))
        except OSError:
            return None
        try:
            if crc32(memoryview(data)[:-4]) != struct.unpack("<I", data[-4:])[0]:
                return None
            magic, version, count, received, ns = struct.unpack_from(SNAP_HDR, data, 0)
            if magic != MAGIC_SNAP:
                return None
            if len(data) != SNAP_HDR_N + ns * SHARD_N + 4:
                return None
            return (version, count, received, ShardTable.load(data, SNAP_HDR_N, ns))
        except (ValueError, IndexError):
            return None

    def flash_bytes(self):
        """Bytes of flash the live store occupies (whole blocks of its files plus the manifest)."""
        n = 0
        for i in range(len(self._st)):
            n += self._pages_of(self._st.nrec(i)) * BLOCK
        for d in self._dtags:
            n += _round(DHDR_N + d[1] * REC)
        return n + BLOCK



    # ---------------------------------------------------------------- updates (loaded on demand)
    def apply_delta(self, from_version, to_version, records):
        """Apply one delta (from_version -> to_version): records is an iterable of (key8, rec16)
        or (key8, None) to remove. True when applied; False when the flash refused (full or failing:
        .health says so, the store stays at from_version). ValueError on a delta that does not fit."""
        from gv.allowlist import update
        return update.apply_delta(self, from_version, to_version, records)

    def compaction_due(self):
        return self._nlog > self._logcap // 2

    def compact_step(self):
        """Fold the delta log into the shards, about one page write per call; True while more to do."""
        from gv.allowlist import update
        return update.compact_step(self)

    def begin_snapshot(self, version, count):
        """Start (or resume: same version and count) a full snapshot of count records sent sorted
        by key through snapshot_chunk; returns how many records are already durably received."""
        from gv.allowlist import snapshot
        return snapshot.begin_snapshot(self, version, count)

    def snapshot_chunk(self, records_bytes):
        from gv.allowlist import snapshot
        return snapshot.snapshot_chunk(self, records_bytes)

    def end_snapshot(self):
        from gv.allowlist import snapshot
        return snapshot.end_snapshot(self)

    def snapshot_progress(self):
        """(version, count, records durably received) of an unfinished snapshot, else None."""
        from gv.allowlist import snapshot
        return snapshot.snapshot_progress(self)


FS_PAGES = const(1024)  # index capacity without a block device to size it by (4 MiB of pages)


def _file_off(pno):
    # Offset of page pno in its shard file: every page before it fills its data block.
    n = 0
    for q in range(pno):
        n += BLOCK - _ptr_bytes(q)
    return n


def _recs(pages):
    n = 0
    for p in range(pages):
        n += page_cap(p)
    return n


def _ix_put(ix, k, page, o, where, n, at):
    # index entry k: the page's first key, where it is (block, or shard in the file fallback),
    # its record count and where in that block/shard (offset, or page number)
    e = k * IX
    ix[e:e + 8] = page[o + PAGE_HDR:o + PAGE_HDR + 8]
    ix[e + 8] = where & 0xFF
    ix[e + 9] = where >> 8
    ix[e + 10] = n
    ix[e + 11] = at


def _find_dev():
    try:
        import esp32
        parts = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")
        return parts[0] if parts else None
    except (ImportError, AttributeError):
        return None



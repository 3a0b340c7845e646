# The on-flash allowlist store: boot (open), the in-RAM page index and the alloc-free lookup.
# Updates live in update.py (deltas, compaction) and snapshot.py, loaded when first used.
# Format and reasoning: docs/allowlist-format.md.
#
# Lookups read the flash block holding the record straight from the block device (one read, no
# heap): shard pages are laid out to fill LittleFS's data blocks exactly, each page starts with a
# header naming its shard file, and open() finds the pages by scanning block headers. LittleFS
# never moves the blocks of a file that is not rewritten, so the map holds until we replace it.
# The same read brings the page's in-place entries: small deltas are programmed into the erased
# end of the pages they touch (NOR flash programs 1 -> 0 without an erase, as ESP-IDF's NVS does),
# so a status change costs a few bytes of flash instead of a page rewrite.
import os
import struct
from binascii import crc32
from gv.compat import const
from gv.allowlist.layout import (
    APS, AP_C, AP_D, AP_W, BLOCK, CR, CR_C, CR_D, CR_W, ENOSPC, FORMAT, FREC, MAGIC_DELTA,
    MAGIC_MAN, MAGIC_PAGE, MAGIC_SNAP, OVS, OV_C, OV_D, OV_W, PAGE_HDR, REC, SCAN,
    SHARD_PAGES, DELTA, DELTA_N, DHDR, DHDR_N, MAN_HDR, MAN_HDR_N,
    SHARD_N, SNAP_HDR, SNAP_HDR_N, ShardTable, _cmpk, _erased, IX, page_n, entry_slots, is_page,
    same4, u32le,
    _exists, _merge_into, _ptr_bytes, LOG_HARD, BIG_PART, SHARD_DIRS, _rfile, _rm, _round, _tag,
    entry_span, page_cap, unpack13,
)


class Allowlist:
    """The reader's allowlist. dev: the block device under the LittleFS that holds root (the
    ESP32's flash partition is found by itself; the unix port passes the FlashDev)."""

    # A delta that overflows the log: True folds the whole log first, inside apply_delta (tools,
    # tests); the reader's sync engine sets False and runs the compaction itself, a step at a
    # time, so the gate is never held for a whole compaction (apply_delta raises LogFull).
    fold_inline = True

    def __init__(self, root, dev=None, shard_pages=SHARD_PAGES, in_place=True, log_records=LOG_HARD):
        self.root = root
        self.in_place = in_place  # deltas into the pages' erased room (False: tests of the log path)
        # shard size: written full at shard_pages pages, split past 1.5 times that (tests use
        # small shards so a few thousand cards exercise many shards and splits)
        self._sp = shard_pages
        self._mp = shard_pages * 3 // 2
        self._srecs = _recs(self._sp)
        self._mrecs = _recs(self._mp)
        self._dev = dev if dev is not None else _find_dev()
        if in_place and _encrypted(self._dev):
            self.in_place = False  # encrypted writes are whole 16-byte units: no NOR byte programs
        big = self._dev is not None and self._dev.ioctl(4, 0) > BIG_PART
        self._sdirs = SHARD_DIRS if big else 0  # shard directories (0: shards in the root)
        self.version = 0
        self.count = 0
        self.health = "empty"
        self.need_resync = True
        self._st = ShardTable()
        self._dtags = []  # (tag, nrec, crc) of each delta file in the manifest, oldest first
        # The delta log: sorted records (a removal has status 0), merged in place in a buffer of
        # LOG_HARD records taken at boot, so a stream of deltas never fragments the heap.
        # A heap already cut up by the rest of the app may not have 4 KB in one piece: then a
        # smaller log, and deltas above its size that do not fit in place are refused
        # (ValueError: send a snapshot).
        cap = log_records
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
        # Where in-place deltas are recorded: the manifest's flash block (None: not located yet),
        # the offset of its next erased record slot, the manifest's header (to find the block).
        self._mblk = None
        self._crn = BLOCK
        self._mhdr = b""
        self._fix = 0
        self._crlast = -1
        self._dirty = False  # an in-place write failed and could not be undone: updates wait for a reboot
        self._need = set()  # shard tags with a page nearly out of erased room (compaction due)
        self._fold = False  # a delta waits for the log to be folded (LogFull): compaction due
        self._b1 = bytearray(1)
        self._s8 = bytearray(8)  # scratch of the rebuild's read-back
        # Page index, IX bytes a page: first key (7), flash block (2, LE), data offset in the
        # block (1); the page's record count is in its header, read with the page. One
        # bytearray, reused across rebuilds while it is big enough. Sized once at boot for the
        # whole partition (a page is a flash block, so there can never be more pages than
        # blocks): 5 KB for 2 MiB, never reallocated on a fragmented heap.
        self._ix = bytearray((self._dev.ioctl(4, 0) if self._dev is not None else FS_PAGES) * IX)
        self._np = 0
        self._cgen = None
        self._snap = None
        # Update buffers (shard page being written, shard page being merged), taken at boot while
        # the heap is whole: a 4 KB block found later on a fragmented heap may not exist. With a
        # block device the page being merged shares the lookup's buffer: compaction reads its
        # source page again at every step (_cblk), since lookups between steps reuse the buffer;
        # in-place deltas run between lookups, never beside them. 4 KB less heap.
        self._wb = bytearray(BLOCK)
        self._rbuf = self._page if self._dev is not None else bytearray(BLOCK)
        self._cblk = None  # flash block of the page compaction is merging (in self._rbuf)

    # ---------------------------------------------------------------- boot
    def open(self):
        """Load the manifest and delta log, find every shard page on flash and check it. Never
        raises on bad data: .health says what is wrong, .need_resync asks the host to resend."""
        self._cgen = None
        self._snap = None
        for d in self._dirs() + [self.root + "/m"]:
            try:
                os.mkdir(d)
            except OSError:
                pass
        problems = []
        try:
            self._load_manifest()
        except (OSError, ValueError):
            if _exists(self._p("M")):
                problems.append("manifest unreadable")
            self._st = ShardTable()
            self._dtags = []
            self.version = 0
            self.count = 0
            self._mhdr = b""
            self._crn = BLOCK
            self._fix = 1
        try:
            self._rebuild_log()
        except (OSError, ValueError):
            problems.append("delta log unreadable")
            self._nlog = 0
        bad = self._build_index(verify=True, fix=self._fix)
        if self._fix == 2 and self._mblk is not None:
            self._mark(self._mblk, self._crlast + CR - 1, CR_W | CR_C | CR_D)  # every entry committed
        self._fix = 0
        if bad:
            problems.append("%d shard(s) missing or corrupt" % bad)
        if _exists(self._p("S")):  # a rebuild was under way: its state must hold up
            from gv.allowlist import snapshot
            snapshot.check_state(self)
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

    def _shard_file_ok(self, tag, nrec):
        """The shard file is there with the size nrec records give it (every page fills its
        block's data: a file cut short, or gone, fails)."""
        try:
            return os.stat(self._p("s%08x" % tag))[6] == _file_off(self._pages_of(nrec))
        except OSError:
            return False

    def _wbuf(self):
        if self._wb is None:
            self._wb = bytearray(BLOCK)
        return self._wb

    def _p(self, name):
        # The manifest lives in a directory of its own: LittleFS reads a directory's whole
        # metadata log on each change, and the shard files' churn would make every manifest
        # switch pay for it (measured: 30,000 block reads a switch against under 1,000).
        if name[0] == "M":
            return self.root + "/m/" + name
        if name[0] == "s" and self._sdirs:
            return "%s/h%d/%s" % (self.root, int(name[1:], 16) % self._sdirs, name)
        return self.root + "/" + name

    def _dirs(self):
        return [self.root] + ["%s/h%d" % (self.root, k) for k in range(self._sdirs)]

    def _load_manifest(self):
        data = _rfile(self._p("M"))
        if len(data) < MAN_HDR_N + 4:
            raise ValueError("manifest length")
        magic, fmt, _, _, version, count, ns, nd, mtag = struct.unpack_from(MAN_HDR, data, 0)
        if magic != MAGIC_MAN or fmt != FORMAT:
            raise ValueError("manifest format")
        end = MAN_HDR_N + ns * SHARD_N + nd * DELTA_N
        if len(data) != BLOCK or end + 4 > BLOCK:
            raise ValueError("manifest length")
        if crc32(memoryview(data)[:end]) != struct.unpack_from("<I", data, end)[0]:
            raise ValueError("manifest checksum")
        st = ShardTable.load(data, MAN_HDR_N, ns)
        o = MAN_HDR_N + ns * SHARD_N
        dt = []
        for _ in range(nd):
            dt.append(struct.unpack_from(DELTA, data, o))
            o += DELTA_N
        # the records of in-place deltas after it: the last committed one is the version; the
        # last one decides what boot does with entries not yet committed (see _build_index)
        self._fix = 1  # entries written but never committed are dropped
        self._crlast = -1
        c = (end + 4 + CR - 1) // CR * CR
        while c + CR <= BLOCK and not _erased(data, c, CR):
            v, n = struct.unpack_from("<II", data, c)
            m = data[c + CR - 1]
            x = crc32(memoryview(data)[c:c + 8]) & 0xFFFFFF
            if (data[c + 8] | data[c + 9] << 8 | data[c + 10] << 16) == x and not m & CR_W:
                self._crlast = c
                if not m & CR_C:
                    version = v
                    count = n
                    self._fix = 1 if not m & CR_D else 2  # committed, entries not all marked yet
                else:
                    self._fix = 1
            c += CR
        self._crn = c
        self._mhdr = bytes(data[0:MAN_HDR_N])
        self._mblk = None
        self._st = st
        self._dtags = dt
        self.version = version
        self.count = count

    def _write_manifest(self, version, count, st, dtags, i=-1, news=None):
        """The single atomic switch: write M.tmp, rename over M (LittleFS rename is all-or-nothing).
        Entry i of st is written as the shards in news when given (st itself is not changed).
        The manifest fills a block: its erased end takes the records of in-place deltas."""
        tmp = self._p("M.tmp")
        ns = len(st) + (len(news) - 1 if news is not None else 0)
        end = MAN_HDR_N + ns * SHARD_N + len(dtags) * DELTA_N
        if end + 4 + CR > BLOCK:
            raise OSError(ENOSPC)
        hdr = struct.pack(MAN_HDR, MAGIC_MAN, FORMAT, 0, 0, version, count, ns, len(dtags), _tag())
        with open(tmp, "wb") as f:
            f.write(hdr)
            crc = st.write(f, crc32(hdr), i, news)
            for d in dtags:
                e = struct.pack(DELTA, d[0], d[1], d[2])
                f.write(e)
                crc = crc32(e, crc)
            f.write(struct.pack("<I", crc))
            pad = bytearray(64)
            for j in range(64):
                pad[j] = 0xFF
            left = BLOCK - end - 4
            while left > 0:
                f.write(pad if left >= 64 else memoryview(pad)[:left])
                left -= 64
        os.rename(tmp, self._p("M"))
        self._mhdr = hdr
        self._mblk = None
        self._crn = (end + 4 + CR - 1) // CR * CR
        self._crlast = -1

    def _find_mblk(self):
        # The manifest's flash block, by its header (which carries a random tag: an old copy
        # LittleFS freed but did not erase yet never matches).
        if self._mblk is None and self._dev is not None and self._mhdr:
            hdr = bytearray(MAN_HDR_N)
            for b in range(self._dev.ioctl(4, 0)):
                self._dev.readblocks(b, hdr, 0)
                if hdr == self._mhdr:
                    self._mblk = b
                    break
        return self._mblk

    def _mark(self, blk, off, bits):
        # program the given bits of one byte to 0 (NOR: no erase needed)
        b = self._b1
        self._dev.readblocks(blk, b, off)
        b[0] &= ~bits & 0xFF
        self._dev.writeblocks(blk, b, off)

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

    def _build_index(self, verify, fix=0, written=False):
        """In-RAM page index, found by reading the first SCAN bytes of every flash block: LittleFS
        keeps a file's data blocks where they are until the file is rewritten. With verify, every
        page is read whole and checked against its crc and its shard's crc (boot, snapshot).
        fix (boot): in-place entries written but not committed are dropped (1) or, when the
        manifest says their delta committed, committed (2). written: every shard file was just
        written and read back (a rebuild's switch): its size need not be asked of LittleFS (a
        stat, a path and a tuple a shard, in a step the gate loop waits for)."""
        st = self._st
        ns = len(st)
        base = bytearray(4 * (ns + 1))  # first page index of each shard (u32 LE)
        # shard by the low 24 bits of its tag (a small int: a full tag past 2^30 would be a heap
        # int for every page found); -1 where two shards share them (then looked for by hand)
        tags = {}
        np = 0
        sb = st.buf
        for i in range(ns):
            struct.pack_into("<I", base, 4 * i, np)
            np += self._pages_of(st.nrec(i))
            e = i * SHARD_N + 8
            t = sb[e] | sb[e + 1] << 8 | sb[e + 2] << 16
            tags[t] = -1 if t in tags else i
        struct.pack_into("<I", base, 4 * ns, np)
        if len(self._ix) < np * IX:  # more pages than flash blocks: the manifest lies
            self._np = 0
            return ns
        ix = self._ix
        for j in range(np):
            ix[j * IX + 7] = 0xFF
            ix[j * IX + 8] = 0xFF
        dev = self._dev
        if dev is not None and (np or self._mhdr):
            hdr = bytearray(SCAN)
            mh = self._mhdr
            for b in range(dev.ioctl(4, 0)):
                dev.readblocks(b, hdr, 0)
                if mh and hdr[0] == 0x47 and hdr[3] == 0x6D and hdr[0:MAN_HDR_N] == mh:
                    self._mblk = b
                    continue
                # by hand, byte by byte: a slice, a tuple or a big int here would be heap for
                # every page of the store (12 KB at 100,000 cards on 32-bit, one step)
                for o in range(0, SCAN - PAGE_HDR + 1, 4):
                    if is_page(hdr, o):
                        i = _shard_at(tags, sb, ns, hdr, o + 4)
                        pno = hdr[o + 8] | hdr[o + 9] << 8
                        if i >= 0 and _ptr_bytes(pno) == o:
                            j = u32le(base, 4 * i) + pno
                            if j < u32le(base, 4 * i + 4):
                                ix[j * IX + 7] = b & 0xFF
                                ix[j * IX + 8] = b >> 8
                        break
        tags = None
        if dev is None:
            return self._build_index_fs(verify)
        page = self._page
        k = 0  # pages kept: a bad shard's pages are dropped, its cards denied until a resend
        bad = 0
        for i in range(ns):
            j0 = u32le(base, 4 * i)
            j1 = u32le(base, 4 * i + 4)
            crc = 0
            # blocks LittleFS freed may still hold its pages: the file must be there, whole
            ok = written or self._shard_file_ok(st.tag(i), st.nrec(i))
            k0 = k
            for j in range(j0, j1 if ok else j0):
                p = j - j0
                b = ix[j * IX + 7] | ix[j * IX + 8] << 8
                if b == 0xFFFF:
                    ok = False
                    break
                o = _ptr_bytes(p)
                # without verify only the page header and first key are needed: the scan's
                # buffer holds them (SCAN >= the largest o + PAGE_HDR + 8), no memoryview per page
                pb = page if verify or o + PAGE_HDR + 8 > SCAN else hdr
                dev.readblocks(b, pb, 0)
                n = pb[o + 10] | pb[o + 11] << 8
                if n > page_cap(p):
                    ok = False
                    break
                if verify:
                    body = self._pmv[o + PAGE_HDR:o + PAGE_HDR + n * FREC]
                    if crc32(body) != struct.unpack_from("<I", page, o + 12)[0]:
                        ok = False
                        break
                    crc = crc32(body, crc)
                    if fix:
                        self._fix_entries(b, page, o + PAGE_HDR, n, fix)
                _ix_put(ix, k, pb, o, b, o)
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
            ok = self._shard_file_ok(st.tag(i), st.nrec(i))
            crc = 0
            try:
                with open(self._p("s%08x" % st.tag(i)), "rb") as f:
                    for p in range(self._pages_of(st.nrec(i))):
                        o = _ptr_bytes(p)
                        size = BLOCK - o
                        f.seek(_file_off(p))
                        got = f.readinto(self._pmv[o:o + size])
                        n = page[o + 10] | page[o + 11] << 8
                        if (got < PAGE_HDR + n * FREC or n > page_cap(p) or page[o:o + 4] != MAGIC_PAGE
                                or (k + 1) * IX > len(ix)):
                            ok = False
                            break
                        body = self._pmv[o + PAGE_HDR:o + PAGE_HDR + n * FREC]
                        if verify and crc32(body) != struct.unpack_from("<I", page, o + 12)[0]:
                            ok = False
                            break
                        crc = crc32(body, crc)
                        _ix_put(ix, k, page, o, i, p)
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

    def _fix_entries(self, blk, page, base, n, fix):
        # Boot: an entry whose data and W mark are programmed but not its C mark belongs to the
        # last in-place delta. Committed (fix 2): program C; otherwise: program D (dead).
        s = entry_slots(page, base, n)
        no, na = s & 0xFFF, s >> 12
        end = base + n * FREC
        for j in range(no):
            a = end + j * OVS + 1
            m = page[a]
            if not m & OV_W and m & OV_C and m & OV_D:
                self._mark(blk, a, OV_C if fix == 2 else OV_D)
        for k in range(na):
            a = BLOCK - (k + 1) * APS + FREC
            m = page[a]
            if not m & AP_W and m & AP_C and m & AP_D:
                self._mark(blk, a, AP_C if fix == 2 else AP_D)

    def _collect_garbage(self):
        # Files neither the manifest nor the snapshot state names: what a cut or a failed write
        # left behind. Checked name by name against the tables (no set of every name in RAM).
        snap = self._load_snap()
        sst = snap[3] if snap else None
        doomed = []
        for d in self._dirs():
            try:
                for e in os.ilistdir(d):
                    if not self._wanted(e[0], sst, d != self.root):
                        doomed.append(d + "/" + e[0])
            except OSError:
                pass
        for n in doomed:
            _rm(n)

    def _wanted(self, n, sst, in_dir=False):
        # in_dir: an entry of a shard directory (h0..h3), where only shard files belong
        if in_dir:
            if n[0] != "s":
                return False
        elif n == "m" or (len(n) == 2 and n[0] == "h" and n[1] in "0123456789"[:self._sdirs]):
            return True
        elif n[0] == "s" and self._sdirs:
            return False  # a shard file belongs in its directory
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
        j = self._log_at(key8, 0)
        if j >= 0:
            o = j * REC
            log = self._log
            if log[o + 8] == 0:  # removed by a delta
                return False
            for i in range(8):
                rec16[i] = key8[i]
            for i in range(8, REC):
                rec16[i] = log[o + i]
            return True
        p = self._page_at(key8, 0)
        if p < 0:
            return False
        ix = self._ix
        page = self._page
        try:
            base = self._read_page(p)
        except OSError:
            return False
        n = page_n(page, base)
        if n < 0:  # not our page any more: fail secure
            self.health = "corrupt: page moved"
            self.need_resync = True
            return False
        base += PAGE_HDR
        end = base + n * FREC
        # appended entries fill the block from its end down: the newest committed one wins
        hit = -1
        a = BLOCK - APS
        while a >= end:
            m = page[a + FREC]
            if m == 0xFF:
                if _erased(page, a, FREC):
                    break
            elif not m & (AP_W | AP_C) and m & AP_D and _cmpk(page, a, key8, 0) == 0:
                hit = a
            a -= APS
        if hit >= 0:
            if not (page[hit + 6] >> 1) & 7:  # removed
                return False
            for i in range(8):
                rec16[i] = key8[i]
            unpack13(page, hit, rec16)
            return True
        top = a + APS
        lo = 0
        hi = n - 1
        while lo <= hi:
            mid = (lo + hi) >> 1
            c = _cmpk(page, base + mid * FREC, key8, 0)
            if c == 0:
                # status overrides fill up from the records' end: the newest committed one wins
                st = -1
                o = end
                while o + OVS <= top:
                    m = page[o + 1]
                    if m == 0xFF and page[o] == 0xFF:
                        break
                    if not m & (OV_W | OV_C) and m & OV_D and (page[o] | (m & 1) << 8) == mid:
                        st = (m >> 1) & 7
                    o += OVS
                if st == 0:
                    return False
                for i in range(8):
                    rec16[i] = key8[i]
                unpack13(page, base + mid * FREC, rec16, st)
                return True
            if c < 0:
                lo = mid + 1
            else:
                hi = mid - 1
        return False

    def _log_at(self, k, ko):
        """Position of the key at k[ko:] in the delta log, -1 if absent (binary search, no heap)."""
        log = self._log
        lo = 0
        hi = self._nlog - 1
        while lo <= hi:
            mid = (lo + hi) >> 1
            c = _cmpk(log, mid * REC, k, ko)
            if c == 0:
                return mid
            if c < 0:
                lo = mid + 1
            else:
                hi = mid - 1
        return -1

    def _page_at(self, k, ko):
        """Index position of the page whose key range holds the key at k[ko:] (the last page whose
        first key is not above it), -1 if none (binary search, no heap)."""
        ix = self._ix
        lo = 0
        hi = self._np - 1
        p = -1
        while lo <= hi:
            mid = (lo + hi) >> 1
            if _cmpk(ix, mid * IX, k, ko) <= 0:
                p = mid
                lo = mid + 1
            else:
                hi = mid - 1
        return p

    def _read_page(self, p):
        """Page p of the index into self._page at its in-block offset, which is returned."""
        ix = self._ix
        if self._dev is not None:  # one block read, no heap
            self._dev.readblocks(ix[p * IX + 7] | ix[p * IX + 8] << 8, self._page, 0)
            return ix[p * IX + 9]
        # No block device known (a port without esp32.Partition, nothing passed in): through the
        # filesystem. Same answers, but it opens a file (heap) and LittleFS reads more blocks.
        i = ix[p * IX + 7] | ix[p * IX + 8] << 8
        pno = ix[p * IX + 9]
        o = _ptr_bytes(pno)
        with open(self._p("s%08x" % self._st.tag(i)), "rb") as f:
            f.seek(_file_off(pno))
            f.readinto(memoryview(self._page)[o:BLOCK])
        return o

    def items(self):
        """Every live record, sorted, keys cut to the 52 bits the store keeps (for checks and
        diagnostics; reads the whole store, into a page buffer of its own)."""
        from gv.allowlist.pages import page_records
        log = memoryview(self._log)
        li = 0
        buf = bytearray(BLOCK)
        keep = self._page
        for p in range(self._np):
            self._page = buf
            try:
                o = self._read_page(p)
            finally:
                self._page = keep
            n = page_n(buf, o)
            if n < 0:
                raise OSError(5)  # the index no longer names one of our pages
            for r in page_records(buf, o, n):
                while li < self._nlog and _cmpk(log, li * REC, r, 0) < 0:
                    if log[li * REC + 8]:
                        yield bytes(log[li * REC:li * REC + REC])
                    li += 1
                if li < self._nlog and _cmpk(log, li * REC, r, 0) == 0:
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

    def snapshot_flash_need(self, count, done=0):
        """About how many bytes of flash a rebuild of count records still needs with done of them
        stored: its shard files' blocks, the state file, the new manifest and LittleFS's copy-on-
        write block (the live version stays on flash until the switch). For the health report."""
        left = max(0, count - done)
        full, rest = left // self._srecs, left % self._srecs
        blocks = full * self._pages_of(self._srecs) + self._pages_of(rest)
        return (blocks + 3) * BLOCK



    # ---------------------------------------------------------------- updates (loaded on demand)
    def apply_delta(self, from_version, to_version, records):
        """Apply one delta (from_version -> to_version): records is an iterable of (key8, rec16)
        or (key8, None) to remove. True when applied; False when the flash refused (full or failing:
        .health says so, the store stays at from_version). ValueError on a delta that does not fit."""
        from gv.allowlist import update
        return update.apply_delta(self, from_version, to_version, records)

    def compaction_due(self):
        """True when the delta log is half full, a page is nearly out of erased room, or a delta
        waits for the log to be folded (LogFull)."""
        return (self._nlog > self._logcap // 2 or bool(self._need) or self._fold) and not self._dirty

    def want_compaction(self):
        """Rewrite every shard at the next compaction run (folds all in-place entries)."""
        for i in range(len(self._st)):
            self._need.add(self._st.tag(i))

    def compact_step(self):
        """Fold the delta log into the shards, about one page write per call; True while more to do."""
        from gv.allowlist import update
        return update.compact_step(self)

    def begin_snapshot(self, version, count):
        """Start (or resume: same version and count) a full snapshot of count records sent sorted
        by key through snapshot_chunk; returns how many records are already durably received."""
        from gv.allowlist import snapshot
        return snapshot.begin_snapshot(self, version, count)

    def snapshot_chunk(self, records_bytes, size=REC):
        """size: REC (16-byte records) or FREC (13-byte flash records, as pack13 makes them)."""
        from gv.allowlist import snapshot
        return snapshot.snapshot_chunk(self, records_bytes, size)

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


def _shard_at(tags, sb, ns, p, o):
    # index of the shard whose tag p[o:o + 4] is (shard table bytes sb), -1 if none
    i = tags.get(p[o] | p[o + 1] << 8 | p[o + 2] << 16, -2)
    if i >= 0:
        return i if sb[i * SHARD_N + 11] == p[o + 3] else -1
    if i == -2:
        return -1
    for i in range(ns):  # two shards share the low 24 bits: by hand
        if same4(sb, i * SHARD_N + 8, p, o):
            return i
    return -1


def _ix_put(ix, k, page, o, where, at):
    # index entry k: the page's first key (52 bits in 7 bytes), where it is (block, or shard in
    # the file fallback) and where in that block/shard (offset, or page number)
    e = k * IX
    for i in range(7):
        ix[e + i] = page[o + PAGE_HDR + i]
    ix[e + 6] &= 0xF0
    ix[e + 7] = where & 0xFF
    ix[e + 8] = where >> 8
    ix[e + 9] = at


def _encrypted(dev):
    # esp32.Partition.info(): (type, subtype, addr, size, label, encrypted)
    try:
        info = dev.info()
        return len(info) > 5 and bool(info[5])
    except (AttributeError, TypeError, OSError):
        return False


def _find_dev():
    try:
        import esp32
        parts = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")
        return parts[0] if parts else None
    except (ImportError, AttributeError):
        return None



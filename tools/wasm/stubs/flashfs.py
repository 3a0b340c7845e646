# LittleFS's data layout on a RAM block device, for the 32-bit WebAssembly MicroPython (the heap
# bench and the heap_lock proofs only; never deployed). That port has no LittleFS, so without
# this the allowlist store runs with no block device (its file-store path, not the board's).
#
# RamFlash is an esp32.Partition stand-in: 512 blocks of 4,096 bytes (the ESP32_GENERIC 2 MiB
# "vfs" partition), readblocks(n, buf, off), writeblocks(n, buf) (erase, then program) and
# writeblocks(n, buf, off) (program only, NOR: new = old AND data, 0 -> 1 is counted as a
# violation), ioctl(4) block count, ioctl(5) block size, ioctl(6, n) erase, info(). Its bytes live
# in a file of the port's in-memory filesystem (JavaScript memory), not in the GC heap, as the
# ESP32's flash is not in its heap.
#
# LfsEmu is a VFS (vfs.mount(LfsEmu(dev), "/flash")) that puts files where LittleFS puts them:
# - a file is a chain of data blocks; data block n > 0 starts with LittleFS's CTZ skip-list
#   pointers (ctz(n) + 1 of 4 bytes, the block numbers of data blocks n - 1, n - 2, n - 4, ...),
#   then data: the layout the store's pages are sized for (layout._ptr_bytes, page_cap);
# - a block is erased when it is allocated (next free block after the last one allocated, round
#   the device, as LittleFS's allocator goes), never when it is freed: a removed file's pages stay
#   on the flash until their blocks are reused, as on the board;
# - the data blocks of a file never move while it is not rewritten; a file opened "w" gets new
#   blocks, and the old ones are freed when it is closed; rename is atomic (over an existing file:
#   its blocks are freed); remove frees;
# - blocks 0-1 (the superblock / root directory pair) and two blocks a directory are taken for
#   metadata; a device with no free block raises OSError(28) (ENOSPC).
# Not modelled: metadata logs and their compaction (a directory's metadata never grows here),
# inline files (LittleFS keeps files of a few hundred bytes inside their directory's metadata;
# here every file takes at least one block: a little more flash used, no effect on the heap),
# power cuts, appends to an existing file and writes before a file's end (the firmware does not
# do them on the store's files: OSError(95)).
#
# Its own heap, since it runs inside measured steps: the whole file table (names, sizes, block
# chains) is preallocated at mount and never grows; a read, a write, a block read and a program
# allocate nothing (no slices: a piece that crosses a block is copied byte by byte through one
# scratch block); open() allocates its file object (which stands in for LittleFS's own file
# object, whose ~130 B struct the bench does not add), read() the bytes it returns, stat() its
# tuple, ilistdir() its tuples and names, as LittleFS's do. The bench measures these (fs_costs).
import array

BS = 4096
NAME = 40  # longest path (from the mount point) a file may have
MAXE = 160  # files and directories
NONE = 0xFFFF
K_FILE = 1
K_DIR = 2
K_PEND = 3  # a file being rewritten ("w" over an existing file): visible once closed
S_IFREG = 0x8000
S_IFDIR = 0x4000


def ptr_bytes(n):
    # LittleFS CTZ skip-list: data block n > 0 starts with ctz(n) + 1 pointers of 4 bytes
    if n == 0:
        return 0
    c = 0
    while not (n >> c) & 1:
        c += 1
    return 4 * (c + 1)


class RamFlash:
    """esp32.Partition's block-device protocol over RAM (a file of the in-memory filesystem)."""

    def __init__(self, path="/flash.img", blocks=512, label="vfs"):
        self.blocks = blocks
        self.label = label
        self._f = open(path, "w+b")
        self._ff = b"\xff" * BS
        for _ in range(blocks):
            self._f.write(self._ff)
        self._f.flush()
        self._s = bytearray(BS)  # scratch block: NOR programs, pieces that cross a block
        self.reads = 0
        self.programs = 0
        self.erases = 0
        self.nor_violations = 0

    def readblocks(self, n, buf, off=0):
        self.reads += 1
        f = self._f
        f.seek(n * BS + off)
        f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:  # the simple interface: erase the blocks, then program them
            for i in range((len(buf) + BS - 1) // BS):
                self.ioctl(6, n + i)
            self.raw(n, 0, buf)
            return
        # the extended interface: program only (NOR: bits go 1 -> 0, never back)
        s = self._s
        f = self._f
        m = len(buf)
        i = 0
        while i < m:
            blk = n + (off + i) // BS
            o = (off + i) % BS
            f.seek(blk * BS)
            f.readinto(s)
            while i < m and o < BS:
                d = buf[i]
                x = s[o]
                if x & d != d:
                    self.nor_violations += 1
                s[o] = x & d
                i += 1
                o += 1
            f.seek(blk * BS)
            f.write(s)
        self.programs += 1

    def raw(self, n, off, buf):
        # a program of erased flash (LittleFS never programs anything else): a plain write is exact
        self.programs += 1
        f = self._f
        f.seek(n * BS + off)
        f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return BS
        if op == 6:
            self.erases += 1
            f = self._f
            f.seek(arg * BS)
            f.write(self._ff)
            return 0
        return 0  # init, deinit, sync

    def info(self):
        # (type, subtype, address, size, label, encrypted), as esp32.Partition.info()
        return (1, 0x82, 0x200000, self.blocks * BS, self.label, False)


class LfsEmu:
    def __init__(self, dev):
        self.dev = dev
        nb = dev.ioctl(4, 0)
        self.nb = nb
        self._used = bytearray(nb)
        self._next = array.array("H", bytearray(2 * nb))  # next data block of a file
        for b in range(nb):
            self._next[b] = NONE
        self._nm = bytearray(MAXE * NAME)
        self._nl = bytearray(MAXE)  # name length; 0: free entry
        self._kd = bytearray(MAXE)
        self._h = array.array("H", bytearray(2 * MAXE))
        self._first = array.array("H", bytearray(2 * MAXE))  # a directory: its metadata pair
        self._last = array.array("H", bytearray(2 * MAXE))
        self._nblk = array.array("H", bytearray(2 * MAXE))
        self._size = array.array("I", bytearray(4 * MAXE))
        self._p4 = bytearray(4)
        self._cur = 0
        self._nfree = nb
        self._cwd = "/"
        for b in (0, 1):  # superblock / root directory metadata pair
            self._take(b)
        self.opened = 0  # files opened, ever
        self.nopen = 0  # files open now

    # ---- blocks
    def _take(self, b):
        self._used[b] = 1
        self._nfree -= 1

    def _alloc(self):
        nb = self.nb
        c = self._cur
        for _ in range(nb):
            b = c
            c += 1
            if c == nb:
                c = 0
            if not self._used[b]:
                self._take(b)
                self._cur = c
                self.dev.ioctl(6, b)  # LittleFS erases a block when it allocates it
                return b
        raise OSError(28)

    def _free_chain(self, e):
        b = self._first[e] if self._nblk[e] else NONE
        nx = self._next
        while b != NONE:
            n = nx[b]
            nx[b] = NONE
            self._used[b] = 0
            self._nfree += 1
            b = n
        self._nblk[e] = 0
        self._size[e] = 0

    # ---- the file table
    def _hash(self, p, n):
        h = n
        for i in range(n):
            h = (h * 31 + ord(p[i])) & 0xFFFF
        return h

    def _len(self, p):
        n = len(p)
        while n > 1 and p[n - 1] == "/":
            n -= 1
        return n

    def _find(self, p, n=-1, kinds=3):
        # the entry named p[:n] (kinds: bit 0 files, bit 1 directories), -1 if none; no heap
        if n < 0:
            n = self._len(p)
        h = self._hash(p, n)
        nm = self._nm
        for e in range(MAXE):
            if self._nl[e] != n or self._h[e] != h:
                continue
            k = self._kd[e]
            if not ((k == K_FILE and kinds & 1) or (k == K_DIR and kinds & 2)):
                continue
            o = e * NAME
            i = 0
            while i < n and nm[o + i] == ord(p[i]):
                i += 1
            if i == n:
                return e
        return -1

    def _new(self, p, n, kind):
        if n > NAME:
            raise OSError(36)  # ENAMETOOLONG
        for e in range(MAXE):
            if not self._nl[e]:
                self._setname(e, p, n)
                self._kd[e] = kind
                self._nblk[e] = 0
                self._size[e] = 0
                return e
        raise OSError(28)

    def _setname(self, e, p, n):
        o = e * NAME
        for i in range(n):
            self._nm[o + i] = ord(p[i])
        self._nl[e] = n
        self._h[e] = self._hash(p, n)

    def _drop(self, e):
        if self._kd[e] == K_DIR:
            for b in (self._first[e], self._last[e]):
                self._used[b] = 0
                self._nfree += 1
        else:
            self._free_chain(e)
        self._nl[e] = 0
        self._kd[e] = 0

    def _abs(self, p):
        if p and p[0] == "/":
            return p
        return (self._cwd if self._cwd == "/" else self._cwd + "/") + p

    def _parent_ok(self, p, n):
        j = n - 1
        while j > 0 and p[j] != "/":
            j -= 1
        return j == 0 or self._find(p, j, 2) >= 0

    def _children(self, p, n):
        # entries directly under p[:n]
        nm = self._nm
        for e in range(MAXE):
            ln = self._nl[e]
            if not ln or ln <= n + (0 if n == 1 else 1) or self._kd[e] == K_PEND:
                continue
            o = e * NAME
            i = 0
            while i < n and nm[o + i] == ord(p[i]):
                i += 1
            if i < n:
                continue
            s = n if n == 1 else n + 1  # the child's name starts here
            if n != 1 and nm[o + n] != 0x2F:
                continue
            j = s
            while j < ln and nm[o + j] != 0x2F:
                j += 1
            if j == ln:
                yield e, s

    # ---- VFS protocol
    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        p = self._abs(path)
        n = self._len(p)
        if "a" in mode or "+" in mode or "x" in mode:
            raise OSError(95)  # not modelled (not used on the store's files)
        if "w" in mode:
            old = self._find(p, n, 1)
            if old < 0:
                if self._find(p, n, 2) >= 0:
                    raise OSError(21)
                if not self._parent_ok(p, n):
                    raise OSError(2)
            e = self._new(p, n, K_PEND if old >= 0 else K_FILE)
            f = _File(self, e, old, True)
        else:
            e = self._find(p, n, 1)
            if e < 0:
                raise OSError(21 if self._find(p, n, 2) >= 0 else 2)
            f = _File(self, e, -1, False)
        self.opened += 1
        self.nopen += 1
        return f

    def stat(self, path):
        p = self._abs(path)
        n = self._len(p)
        if n == 1:
            return (S_IFDIR, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        e = self._find(p, n)
        if e < 0:
            raise OSError(2)
        if self._kd[e] == K_DIR:
            return (S_IFDIR, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        return (S_IFREG, 0, 0, 0, 0, 0, self._size[e], 0, 0, 0)

    def remove(self, path):
        p = self._abs(path)
        n = self._len(p)
        e = self._find(p, n)
        if e < 0:
            raise OSError(2)
        if self._kd[e] == K_DIR:
            for _ in self._children(p, n):
                raise OSError(39)  # ENOTEMPTY
        self._drop(e)

    def rmdir(self, path):
        self.remove(path)

    def rename(self, old, new):
        a = self._abs(old)
        na = self._len(a)
        b = self._abs(new)
        nb = self._len(b)
        ea = self._find(a, na)
        if ea < 0:
            raise OSError(2)
        if self._kd[ea] == K_DIR:
            for _ in self._children(a, na):
                raise OSError(95)  # not modelled
        if not self._parent_ok(b, nb):
            raise OSError(2)
        eb = self._find(b, nb)
        if eb == ea:
            return
        if eb >= 0:
            if self._kd[eb] == K_DIR:
                raise OSError(21)
            self._drop(eb)  # atomic: the new name now holds the renamed file's blocks
        if nb > NAME:
            raise OSError(36)
        self._setname(ea, b, nb)

    def mkdir(self, path):
        p = self._abs(path)
        n = self._len(p)
        if n == 1 or self._find(p, n) >= 0:
            raise OSError(17)
        if not self._parent_ok(p, n):
            raise OSError(2)
        e = self._new(p, n, K_DIR)
        try:
            self._first[e] = self._alloc()  # its metadata pair
            try:
                self._last[e] = self._alloc()
            except OSError:
                self._used[self._first[e]] = 0
                self._nfree += 1
                raise
        except OSError:
            self._nl[e] = 0
            self._kd[e] = 0
            raise

    def ilistdir(self, path):
        p = self._abs(path)
        n = self._len(p)
        if n > 1 and self._find(p, n, 2) < 0:
            raise OSError(2)
        return self._ilist(p, n)

    def _ilist(self, p, n):
        mv = memoryview(self._nm)
        for e, s in self._children(p, n):
            o = e * NAME
            name = bytes(mv[o + s:o + self._nl[e]]).decode()
            if self._kd[e] == K_DIR:
                yield (name, S_IFDIR, 0, 0)
            else:
                yield (name, S_IFREG, 0, self._size[e])

    def chdir(self, path):
        p = self._abs(path)
        n = self._len(p)
        if n > 1 and self._find(p, n, 2) < 0:
            raise OSError(2)
        self._cwd = p[:n]

    def getcwd(self):
        return self._cwd

    def statvfs(self, path):
        return (BS, BS, self.nb, self._nfree, self._nfree, 0, 0, 0, 0, 255)

    # ---- figures for the bench
    def files(self):
        n = 0
        for e in range(MAXE):
            if self._kd[e] == K_FILE:
                n += 1
        return n

    def free_blocks(self):
        return self._nfree


class _File:
    # A file's cursor: data block k of the file (device block b), whose data starts at file offset
    # ks. A writer always appends.
    def __init__(self, fs, e, old, w):
        self.fs = fs
        self.e = e
        self.old = old  # the entry a "w" open replaces at close (-1: none)
        self.w = w
        self.pos = 0
        self.k = 0
        self.b = fs._first[e]
        self.ks = 0
        self.open = True

    def __enter__(self):
        return self

    def __exit__(self, a, b, c):
        self.close()

    def _loc(self, pos):
        fs = self.fs
        e = self.e
        if pos < self.ks or not fs._nblk[e]:
            self.k = 0
            self.b = fs._first[e]
            self.ks = 0
        nx = fs._next
        while pos >= self.ks + BS - ptr_bytes(self.k) and nx[self.b] != NONE:
            self.ks += BS - ptr_bytes(self.k)
            self.k += 1
            self.b = nx[self.b]

    def readinto(self, buf):
        if not self.open:
            raise OSError(9)
        fs = self.fs
        dev = fs.dev
        want = len(buf)
        left = fs._size[self.e] - self.pos
        n = want if want < left else left
        done = 0
        while done < n:
            self._loc(self.pos)
            o = self.pos - self.ks
            m = BS - ptr_bytes(self.k) - o
            if m > n - done:
                m = n - done
            off = ptr_bytes(self.k) + o
            if done == 0 and m == want:
                dev.readblocks(self.b, buf, off)  # the usual case: one block's piece, no copy
            else:
                s = dev._s
                dev.readblocks(self.b, s, 0)
                for i in range(m):
                    buf[done + i] = s[off + i]
            done += m
            self.pos += m
        return n

    def read(self, n=-1):
        fs = self.fs
        left = fs._size[self.e] - self.pos
        if n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        self._loc(self.pos)
        o = self.pos - self.ks
        if o + n <= BS - ptr_bytes(self.k):  # in one block: the bytes returned are all it takes
            f = fs.dev._f
            f.seek(self.b * BS + ptr_bytes(self.k) + o)
            fs.dev.reads += 1
            self.pos += n
            return f.read(n)
        b = bytearray(n)  # across blocks (a large delta file): the bytes twice, an upper bound
        self.readinto(b)
        return bytes(b)

    def write(self, buf):
        if not (self.open and self.w):
            raise OSError(9)
        fs = self.fs
        dev = fs.dev
        e = self.e
        n = len(buf)
        done = 0
        while done < n:
            size = fs._size[e]
            if not fs._nblk[e] or size == self.ks + BS - ptr_bytes(self.k):
                self._extend()
            off = ptr_bytes(self.k) + size - self.ks
            m = BS - off
            if m > n - done:
                m = n - done
            if done == 0 and m == n:
                dev.raw(self.b, off, buf)  # the usual case: the whole write in one block
            else:
                s = dev._s
                dev.readblocks(self.b, s, 0)
                for i in range(m):
                    s[off + i] = buf[done + i]
                dev.raw(self.b, 0, s)
            done += m
            fs._size[e] = size + m
        self.pos = fs._size[e]
        return n

    def _extend(self):
        # a new data block at the end of the file: erased when allocated, its CTZ pointers first
        fs = self.fs
        e = self.e
        nb = fs._alloc()
        if not fs._nblk[e]:
            fs._first[e] = nb
            fs._last[e] = nb
            fs._nblk[e] = 1
            self.k = 0
            self.b = nb
            self.ks = 0
            return
        k = fs._nblk[e]
        p4 = fs._p4
        for i in range(ptr_bytes(k) // 4):
            t = k - (1 << i)  # data block k - 2^i
            b = fs._first[e]
            for _ in range(t):
                b = fs._next[b]
            p4[0] = b & 0xFF
            p4[1] = b >> 8
            p4[2] = 0
            p4[3] = 0
            fs.dev.raw(nb, 4 * i, p4)
        fs._next[fs._last[e]] = nb
        fs._last[e] = nb
        fs._nblk[e] = k + 1
        self.ks += BS - ptr_bytes(self.k)
        self.k = k
        self.b = nb

    def seek(self, off, whence=0):
        if whence == 1:
            off += self.pos
        elif whence == 2:
            off += self.fs._size[self.e]
        if self.w and off != self.fs._size[self.e]:
            raise OSError(95)  # a writer only appends here
        self.pos = off
        return off

    def tell(self):
        return self.pos

    def flush(self):
        pass

    def close(self):
        if not self.open:
            return
        self.open = False
        fs = self.fs
        fs.nopen -= 1
        if self.old >= 0:  # the rewritten file replaces the old one now, atomically
            if fs._nl[self.old] and fs._kd[self.old] == K_FILE:
                fs._drop(self.old)
            fs._kd[self.e] = K_FILE


def mount(point="/flash", path="/flash.img", blocks=512):
    """A RamFlash of blocks x 4 KB with an LfsEmu on it, mounted at point; (dev, fs)."""
    import vfs

    dev = RamFlash(path, blocks)
    fs = LfsEmu(dev)
    vfs.mount(fs, point)
    return dev, fs

# Flash stand-in for the unix port: a block device that VfsLfs2 mounts like the ESP32's
# LittleFS partition (4096-byte blocks, 2 MiB by default), backed by an image file. Without a
# path the image is an unlinked file on tmpfs (RAM), so the flash never counts against the
# MicroPython heap, just as the ESP32's flash does not.
# It counts blocks read, written (programmed) and erased, and bytes programmed, and can cut
# the power after the Nth block write: writes up to N stay, every later write or erase never
# happens and raises PowerCut until `restore()` (a new boot) is called. With tear=True the write
# the cut lands on is half done: its first half is programmed, as a program cut short can leave it.
# Programming is NOR flash's: it can only clear bits (new = old AND data); only an erase sets them
# back to 1. A program that tries to set a 0 bit to 1 is counted in `nor_violations`.
# Never deployed: the real board uses esp32.Partition.
import os
import vfs

BLOCK = 4096
ESP32_LFS_BLOCKS = 512  # ESP32_GENERIC 4 MB layout: 2 MiB LittleFS partition


class PowerCut(OSError):
    pass


# Raised from inside littlefs, sometimes while the heap is locked (the GC closing a dead file):
# one instance made up front needs no allocation.
_CUT = PowerCut(5)  # EIO as littlefs sees it


class FlashDev:
    def __init__(self, blocks=ESP32_LFS_BLOCKS, block_size=BLOCK, path=None):
        self.block_size = block_size
        self.blocks = blocks
        self.path = path
        self._erased = b"\xff" * block_size
        self._old = bytearray(128)  # what a program is about to change (see _program)
        self._oldmv = memoryview(self._old)
        self._one = bytearray(1)
        anon = path is None
        if anon:
            path = _anon_path()
        try:
            self._f = open(path, "r+b")
        except OSError:
            self._f = open(path, "w+b")
        if anon:
            os.remove(path)  # the open handle keeps it; nothing is left behind
        self._f.seek(0, 2)
        size = self._f.tell()
        for _ in range((blocks * block_size - size) // block_size):  # grow with erased flash
            self._f.write(self._erased)
        self._f.flush()
        self.cut_after = None  # power is cut after this many further block writes
        self.tear = False
        self.dead_torn = False
        self.dead = False
        self.nor_violations = 0
        self.reset_counters()

    def reset_counters(self):
        self.reads = 0
        self.writes = 0
        self.erases = 0
        self.bytes_written = 0
        self.bytes_read = 0

    # -- fault injection --
    def cut_power_after(self, n, tear=False):
        """Let n more block writes through, then cut the power (tear: the next write half happens)."""
        self.cut_after = self.writes + n
        self.tear = tear
        self.dead_torn = False
        self.dead = False

    def restore(self):
        """Power comes back: the device accepts writes again (contents are as the cut left them).
        Run gc.collect() before this: a LittleFS file object left open by the cut would otherwise
        be finalised later and write the dead boot's state into the new one."""
        self.cut_after = None
        self.dead = False
        self.tear = False
        self.dead_torn = False

    def _power(self):
        if self.dead or (self.cut_after is not None and self.writes >= self.cut_after):
            self.dead = True
            raise _CUT

    # -- storage --
    def _read(self, addr, buf):
        self._f.seek(addr)
        self._f.readinto(buf)

    def _write(self, addr, data):
        self._f.seek(addr)
        self._f.write(data)

    def _program(self, addr, data, n):
        # NOR programming: only 1 -> 0, a chunk at a time through one small buffer taken at start
        # (a stand-in that allocated per write would fragment the heap it shares with the
        # firmware under test).
        c = 0
        while c < n:
            k = min(n - c, len(self._old))
            self._program_chunk(addr + c, data, c, k)
            c += k

    def _program_chunk(self, addr, data, c, k):
        old = self._old
        try:
            view = self._oldmv[:k]
        except MemoryError:  # the heap locked (LittleFS flushing a file from a finaliser)
            view = None
        if view is None:  # LittleFS only ever programs erased flash: a plain write is exact
            self._f.seek(addr)
            one = self._one  # a byte at a time through a buffer of its own (no slice: no heap)
            for i in range(k):
                one[0] = data[c + i]
                self._f.write(one)
            return
        self._f.seek(addr)
        self._f.readinto(view)
        changed = False
        for i in range(k):
            d = data[c + i]
            o = old[i]
            if o & d != d:
                self.nor_violations += 1
            if o != o & d:
                old[i] = o & d
                changed = True
        if changed:
            self._f.seek(addr)
            self._f.write(view)

    def save(self, path):
        """Copy the whole image to path (a snapshot to return to)."""
        buf = bytearray(self.block_size)
        with open(path, "wb") as out:
            for b in range(self.blocks):
                self._read(b * self.block_size, buf)
                out.write(buf)

    def load(self, path):
        """Replace the whole image with the snapshot at path."""
        buf = bytearray(self.block_size)
        with open(path, "rb") as src:
            for b in range(self.blocks):
                src.readinto(buf)
                self._write(b * self.block_size, buf)
        self._f.flush()

    # -- block device protocol (extended interface, as VfsLfs2 uses it) --
    def readblocks(self, block, buf, offset=0):
        self.reads += 1
        self.bytes_read += len(buf)
        self._read(block * self.block_size + offset, buf)

    def writeblocks(self, block, buf, offset=None):
        try:
            self._power()
        except PowerCut:
            if self.tear and not self.dead_torn:
                self.dead_torn = True
                if offset is None:
                    offset = 0
                self._program(block * self.block_size + offset, buf, len(buf) // 2)
            raise
        if offset is None:  # simple interface: erase the blocks, then program them
            for i in range((len(buf) + self.block_size - 1) // self.block_size):
                self.ioctl(6, block + i)
            offset = 0
        self.writes += 1
        self.bytes_written += len(buf)
        self._program(block * self.block_size + offset, buf, len(buf))

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.blocks
        if op == 5:  # block size
            return self.block_size
        if op == 6:  # erase one block
            self._power()
            self.erases += 1
            self._write(arg * self.block_size, self._erased)
            return 0
        return 0  # init, deinit, sync

    def flush(self):
        self._f.flush()

    def close(self):
        if self._f:
            self._f.close()
            self._f = None


def format_and_mount(dev, mountpoint="/flash"):
    vfs.VfsLfs2.mkfs(dev)
    return mount(dev, mountpoint)


def mount(dev, mountpoint="/flash"):
    """Mount dev at mountpoint (a fresh boot's mount, with the settings firmware/boot.py gives the
    reader's root filesystem); returns the VfsLfs2 object."""
    from gv.fsmount import lfs

    try:
        vfs.umount(mountpoint)
    except OSError:
        pass
    fs = lfs(dev)
    vfs.mount(fs, mountpoint)
    return fs


def umount(mountpoint="/flash"):
    try:
        vfs.umount(mountpoint)
    except OSError:
        pass


_seq = [0]


def _anon_path():
    _seq[0] += 1
    for d in ("/dev/shm", "/tmp"):
        try:
            os.stat(d)
        except OSError:
            continue
        return "%s/gv-flash-%s-%d.img" % (d, "".join("%02x" % b for b in os.urandom(6)), _seq[0])
    return "gv-flash-%d.img" % _seq[0]

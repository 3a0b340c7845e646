# The root filesystem's LittleFS settings (gv.fsmount): what boot.py remounts "/" with, and why:
# the one LittleFS call that compacts a directory's metadata log reads the flash far less often.
import os
import vfs
import mpt
from flashdev import FlashDev, umount
from gv import fsmount

TIMEOUT = 300


def test_lookahead_covers_the_partition():
    mpt.eq(fsmount.lookahead_bytes(512), 64)  # ESP32 4 MB: 2 MiB of 4 KB blocks
    mpt.eq(fsmount.lookahead_bytes(1536), 192)  # 8 MB board: 6 MiB
    mpt.eq(fsmount.lookahead_bytes(1), 8)  # LittleFS counts it in whole 8-byte words
    mpt.eq(fsmount.lookahead_bytes(65), 16)


def test_remount_keeps_files_and_cwd():
    dev = FlashDev(blocks=64)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), "/flash")  # as the port mounts it: LittleFS's defaults
    try:
        with open("/flash/config.json", "w") as f:
            f.write('{"site": "A"}')
        cwd = os.getcwd()
        assert fsmount.remount(dev, "/flash")
        mpt.eq(os.getcwd(), cwd)
        with open("/flash/config.json") as f:
            mpt.eq(f.read(), '{"site": "A"}')
        with open("/flash/after", "wb") as f:  # and it writes
            f.write(b"x" * 9000)
        umount()
        vfs.mount(vfs.VfsLfs2(dev), "/flash")  # what it wrote, any mount reads
        mpt.eq(os.stat("/flash/after")[6], 9000)
    finally:
        umount()


def test_what_an_older_firmware_wrote_reads_and_grows_with_ours():
    # Readers in the field were mounted with 512-byte reads (2 KB caches). LittleFS keeps a file
    # up to min(cache, block / 8) bytes inline in its directory, so they hold inline files of up
    # to 512 bytes; after the update the same flash is mounted with these settings, whose cache
    # may be smaller than such a file.
    dev = FlashDev(blocks=64)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev, readsize=512, progsize=32, mtime=False), "/flash")
    sizes = (20, 100, 128, 200, 256, 300, 500, 512, 600, 5000)
    try:
        for n in sizes:
            with open("/flash/f%d" % n, "wb") as f:
                f.write(bytes((n + i) & 0xFF for i in range(n)))
        umount()
        vfs.mount(fsmount.lfs(dev), "/flash")
        for n in sizes:
            with open("/flash/f%d" % n, "rb") as f:
                mpt.eq(f.read(), bytes((n + i) & 0xFF for i in range(n)), n)
            with open("/flash/f%d" % n, "ab") as f:  # an append (the event log's segments)
                f.write(b"tail")
            with open("/flash/f%d" % n, "r+b") as f:  # a write in the middle
                f.seek(n // 2)
                f.write(b"M")
        umount()
        for mount_fs in (fsmount.lfs, lambda d: vfs.VfsLfs2(d, readsize=512, progsize=32)):
            vfs.mount(mount_fs(dev), "/flash")  # and back: either firmware reads what the other wrote
            for n in sizes:
                want = bytearray((n + i) & 0xFF for i in range(n))
                want[n // 2] = ord("M")
                with open("/flash/f%d" % n, "rb") as f:
                    mpt.eq(f.read(), bytes(want) + b"tail", n)
            umount()
    finally:
        umount()


def test_not_littlefs_keeps_the_old_mount():
    dev = FlashDev(blocks=64)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), "/flash")
    try:
        with open("/flash/keep", "w") as f:
            f.write("k")
        blank = FlashDev(blocks=64)  # erased: no filesystem on it
        assert not fsmount.remount(blank, "/flash")
        with open("/flash/keep") as f:
            mpt.eq(f.read(), "k")
    finally:
        umount()


def test_remount_root_without_esp32_partition():
    # the unix port has no esp32 module: "/" stays as it is
    before = sorted(os.listdir("/"))
    assert not fsmount.remount_root()
    mpt.eq(sorted(os.listdir("/")), before)


def _worst_dir_op(mount_fs):
    # A directory of 60 shard-like files rewritten over and over, as compaction does: the
    # most block reads any one create/rename/remove took. LittleFS compacts the directory's
    # metadata log inside one of these calls.
    dev = FlashDev(blocks=256)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(mount_fs(dev), "/flash")
    os.mkdir("/flash/al")
    worst = 0
    try:
        for i in range(60):
            with open("/flash/al/s%08x" % i, "wb") as f:
                f.write(b"p" * 100)
        for k in range(400):
            i = k % 60
            dev.reset_counters()
            with open("/flash/al/t%08x" % i, "wb") as f:
                f.write(b"q" * 100)
            os.rename("/flash/al/t%08x" % i, "/flash/al/s%08x" % i)
            worst = max(worst, dev.reads)
    finally:
        umount()
    return worst


def test_directory_compaction_reads_far_less():
    default = _worst_dir_op(lambda dev: vfs.VfsLfs2(dev))
    ours = _worst_dir_op(fsmount.lfs)
    print("worst reads in one directory operation: defaults", default, "ours", ours)
    assert default > 1000, default  # the quadratic compaction is there to be cut
    # 128-byte reads: about 5,700 against 15,700 (512-byte reads made it 1,500, at four times
    # the heap for every cache: gv/fsmount.py)
    assert ours * 2 < default, (ours, default)


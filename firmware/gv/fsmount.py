# The root filesystem's LittleFS settings, and the boot-time remount that applies them.
#
# The ESP32 port mounts the "vfs" partition with LittleFS's defaults: 32-byte reads, a 256-block
# lookahead and file times. MicroPython makes each LittleFS cache 4 x max(READ_SIZE, PROG_SIZE)
# bytes from the GC heap: a read and a prog cache for the mount and one more for every open file.
# When a directory's metadata log fills, LittleFS compacts it inside one call, re-reading the
# block a cache at a time for every entry it keeps (quadratic in the entries), so the read size
# sets how long the longest flash call holds the gate loop. Measured with 100,000 cards on the
# ESP32_GENERIC 2 MiB partition (the sync bench's reader, unix port, flash stand-in; own time:
# gaps less run-queue waits; 2 runs each, load 0.2-2.2 on a shared 2-core machine):
#   READ_SIZE  cache  heap: mount / file  flash gap  store step: reads, ms  one LittleFS call
#     512      2 KB      4,160 / 2,048 B   12-16 ms       1,517   14 ms      1,411 reads  2.8 ms
#     256      1 KB      2,112 / 1,024 B   13-19 ms       2,145   16 ms      2,003 reads  5.0 ms
#     128      512 B     1,088 /   512 B   14-19 ms       3,209   15 ms      3,015 reads  7.6 ms
#      64      256 B       576 /   256 B   14-23 ms       6,488   30 ms      6,214 reads 16 ms
#      32      128 B       320 /   128 B   17-34 ms      11,166   37 ms     10,864 reads 29 ms
# (flash gap: the gate loop's worst gap that read the flash, through a rebuild, a compaction of
# every shard and a 1,000-change catch-up; store step and call: the most reads and the longest
# time of any one. The worst gap of a rebuild or catch-up, 22-43 ms at every size in 6-7 runs,
# came before the first connect was up in the runs that recorded it, all but one at 32: the TLS
# handshake's CPU work, no flash.) 128 is where the cost turns: below it each halving doubles
# the reads of a directory compaction (a shard file's close or rename, the rebuild's
# end_snapshot) and lowers the inline limit. LittleFS keeps a file of up to min(cache, block / 8)
# bytes inline in its directory: 512 bytes here as with 2 KB caches, so files keep the form older
# firmware gave them, and the rebuild's state file (about 500 bytes at 100,000 cards) stays
# inline (at 64 it would take a block of its own). Against 512-byte
# reads: 3,072 B less heap for the mount, 1,536 B less for each open file.
# A lookahead bitmap that covers the whole partition walks the file tree once per pass over the
# free blocks instead of every 256.
# No modification times: each file's 12-byte time attribute, rewritten at every close, made a
# directory of 60 shard files outgrow half a metadata block, and removing one file then cost
# 5,800 reads (1,800 without). Nothing here reads a file's time (deploy compares SHA-256).
# Nothing on flash depends on these settings: any mount reads the same filesystem
# (tests/mp/test_fsmount.py reads and grows, with these, what 512-byte reads wrote).
import os
import vfs

READ_SIZE = 128
PROG_SIZE = 32  # LittleFS pads every metadata commit to this: keep it small


def lookahead_bytes(blocks):
    # one bit a block, in whole 8-byte words (LittleFS's unit)
    return (blocks + 63) // 64 * 8


def lfs(dev):
    """A VfsLfs2 of dev with the settings above (mounts it: reads only)."""
    return vfs.VfsLfs2(dev, readsize=READ_SIZE, progsize=PROG_SIZE,
                       lookahead=lookahead_bytes(dev.ioctl(4, 0)), mtime=False)


def remount(dev, point="/"):
    """Remount dev at point with these settings. The new mount is made before the old one is
    taken down, so a device that is not LittleFS v2 leaves the old mount as it was (False)."""
    try:
        fs = lfs(dev)
    except OSError:
        return False
    cwd = os.getcwd()
    vfs.umount(point)
    vfs.mount(fs, point)
    os.chdir(cwd)
    return True


def remount_root():
    """Remount "/" (the ESP32's "vfs" partition) with these settings; False, and the port's own
    mount kept, on a port without esp32.Partition or a partition that is not LittleFS v2."""
    try:
        import esp32
    except ImportError:
        return False
    parts = esp32.Partition.find(esp32.Partition.TYPE_DATA, label="vfs")
    return remount(parts[0]) if parts else False

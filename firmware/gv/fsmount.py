# The root filesystem's LittleFS settings, and the boot-time remount that applies them.
#
# The ESP32 port mounts the "vfs" partition with LittleFS's defaults: 32-byte reads (128-byte
# caches) and a 256-block lookahead. When a directory's metadata log fills, LittleFS compacts it
# in one call, re-reading the block 32 bytes at a time for every entry it keeps (quadratic in
# the entries): with the allowlist's shard files beside each other that was up to 22,000 block
# reads in one call, 40-50 ms on the unix port with the gate loop stopped. 512-byte reads
# (2 KB caches) cut that call to about 1,500 reads, and a lookahead bitmap that covers the whole
# partition walks the file tree once per pass over the free blocks instead of every 256.
# No modification times: each file's 12-byte time attribute, rewritten at every close, made a
# directory of 60 shard files outgrow half a metadata block, and removing one file then cost
# 5,800 reads (1,800 without). Nothing here reads a file's time (deploy compares SHA-256).
# Cost: 4 KB of heap for the two caches (256 B before) and 2 KB for each open file (128 B).
# Nothing on flash depends on these settings: any mount reads the same filesystem.
import os
import vfs

READ_SIZE = 512
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

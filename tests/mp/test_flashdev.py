# The flash stand-in: LittleFS mounts on it, counts its I/O, and survives a power cut at
# every block-write index with every file written before the cut intact.
import gc
import os
import mpt
from flashdev import FlashDev, PowerCut, format_and_mount, mount, umount

TIMEOUT = 300


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_mount_and_count():
    dev = FlashDev()
    mpt.eq(dev.blocks * dev.block_size, 2 * 1024 * 1024)
    format_and_mount(dev)
    dev.reset_counters()
    _write("/flash/a.bin", b"x" * 10000)
    assert dev.writes > 0 and dev.erases > 0 and dev.bytes_written >= 10000
    umount()
    mount(dev)
    mpt.eq(_read("/flash/a.bin"), b"x" * 10000)
    assert dev.reads > 0
    umount()


def test_file_backed_image_persists():
    path = mpt.tmpdir() + "/flash.img"
    dev = FlashDev(blocks=64, path=path)
    format_and_mount(dev)
    _write("/flash/keep.txt", b"kept")
    umount()
    dev.close()
    dev2 = FlashDev(blocks=64, path=path)
    mount(dev2)
    mpt.eq(_read("/flash/keep.txt"), b"kept")
    umount()
    dev2.close()


def _scenario(dev):
    """Three files, each replaced atomically (temp file then rename); returns how many completed."""
    done = 0
    for i in range(3):
        _write("/flash/f%d.tmp" % i, bytes([65 + i]) * (3000 + 1500 * i))
        os.rename("/flash/f%d.tmp" % i, "/flash/f%d" % i)
        done += 1
    return done


def test_power_cut_at_every_write():
    dev = FlashDev(blocks=64)
    format_and_mount(dev)
    _write("/flash/base", b"base" * 100)
    umount()
    image = mpt.tmpdir() + "/before.img"
    dev.save(image)
    # Count the writes the whole scenario takes.
    mount(dev)
    start = dev.writes
    _scenario(dev)
    total = dev.writes - start
    umount()
    assert total > 5, total
    for n in range(total + 1):
        dev.restore()
        dev.load(image)
        mount(dev)
        dev.cut_power_after(n)
        done = 0
        try:
            done = _scenario(dev)
        except OSError:
            pass
        umount()
        # Files left open by the cut belong to the dead boot: let the GC finalise them while the
        # power is still off, or their close would write stale state into the next boot's flash.
        gc.collect()
        dev.restore()
        mount(dev)  # a new boot: must mount, and what was complete must read back
        mpt.eq(_read("/flash/base"), b"base" * 100, "base at cut %d" % n)
        for i in range(done):
            mpt.eq(_read_or("/flash/f%d" % i, n), bytes([65 + i]) * (3000 + 1500 * i), "cut %d" % n)
        for i in range(3):  # a renamed file is either whole or absent
            try:
                data = _read("/flash/f%d" % i)
            except OSError:
                continue
            mpt.eq(data, bytes([65 + i]) * (3000 + 1500 * i), "partial f%d at cut %d" % (i, n))
        umount()
    assert n == total


def test_power_cut_raises_and_blocks_later_writes():
    dev = FlashDev(blocks=16)
    dev.cut_power_after(0)
    mpt.raises(PowerCut, dev.writeblocks, 0, bytearray(16), 0)
    mpt.raises(PowerCut, dev.ioctl, 6, 1)
    dev.restore()
    dev.writeblocks(0, bytearray(16), 0)
    mpt.eq(dev.writes, 1)


def _read_or(path, n):
    try:
        return _read(path)
    except OSError as e:
        raise AssertionError("%s missing after cut at write %d: %r" % (path, n, e))

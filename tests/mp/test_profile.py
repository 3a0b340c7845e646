# The production profile on the reader's side (gv/profile.py, docs/security.md): a frozen gv_build
# that says "production" turns the store's in-place (NOR) deltas off, and so does a partition that
# says it is encrypted (esp32.Partition.info()[5]): the deltas then go through the delta log.
import os
import sys
import vfs

import mpt
from flashdev import FlashDev, umount
from gv.allowlist.store import Allowlist
from test_allowlist_fixture import ROOT, SP, fresh, install, key, rec

HEAPSIZE = "320k"
N = 600


def test_an_encrypted_partition_keeps_deltas_off_the_pages():
    dev = fresh()
    dev.info = lambda: (1, 129, 0x200000, dev.ioctl(4, 0) * 4096, "vfs", True)
    al = Allowlist(ROOT, dev, SP).open()
    mpt.eq(al.in_place, False)
    install(al, N, 1)
    before = sorted(os.listdir(ROOT))
    dev.reset_counters()
    assert al.apply_delta(1, 2, [(key(3), None), (key(5), rec(5, 3))])
    mpt.eq(al._nlog, 2, "the delta went to the log, not into the pages")
    assert sorted(os.listdir(ROOT)) != before, "a delta file was written"
    out = bytearray(16)
    assert not al.lookup(key(3), out)
    assert al.lookup(key(5), out) and al.lookup(key(7), out)
    umount()
    # the same store on a partition without the flag: in place as before
    dev2 = fresh()
    dev2.info = lambda: (1, 129, 0x200000, 0, "vfs", False)
    mpt.eq(Allowlist(ROOT, dev2, SP).in_place, True)
    umount()


def test_a_production_build_turns_in_place_off():
    # the frozen gv_build of a production build ("/rom" stands for the ESP32's ".frozen"); one on
    # the filesystem ("") cannot make a production board a development one, nor the reverse
    from gv import profile

    mpt.eq(profile.name(), "development")
    assert profile.store_in_place()
    dev = FlashDev(blocks=16)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), "/rom")
    try:
        with open("/rom/gv_build.py", "w") as f:
            f.write("ID = 'x'\nPROFILE = 'production'\n")
        sys.path.insert(0, "/rom")
        sys.modules.pop("gv_build", None)
        mpt.eq(profile.name(), "production")
        assert profile.production() and not profile.store_in_place()
    finally:
        sys.modules.pop("gv_build", None)
        sys.path.remove("/rom")
        vfs.umount("/rom")
    mpt.eq(profile.name(), "development")

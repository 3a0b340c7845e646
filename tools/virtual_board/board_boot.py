# The virtual board's ROM boot (MicroPython side): mounts the LittleFS flash image as the root
# filesystem, as the ESP32 port's _boot.py does, then runs boot.py and main.py from it. With
# GV_VB_SKIP_MAIN set (a soft reset from the raw REPL) main.py is skipped, as on a real board.
import os
import sys
import vfs

import vboard  # noqa: F401 - connects to the launcher before the host filesystem goes away
import machine  # noqa: F401 - the shim, imported while its modules are still reachable
import flashdev

# A frozen-firmware board (--romfs): the reader's bytecode is in a ROMFS image, mounted at /rom
# and run in place. On an ESP32 that is memory-mapped flash; here the image has to be read into the
# heap, which the launcher made that much larger, and vboard.ROM_BYTES leaves it out of the heap
# the board reports. Read before the host filesystem goes away.
_rom = None
if os.getenv("GV_VB_ROMFS"):
    with open(os.getenv("GV_VB_ROMFS"), "rb") as _f:
        _rom = bytearray(os.stat(os.getenv("GV_VB_ROMFS"))[6])
        _f.readinto(_rom)
    vboard.ROM_BYTES = len(_rom)

_dev = flashdev.FlashDev(blocks=int(os.getenv("GV_VB_BLOCKS") or 512), path=os.getenv("GV_VB_IMAGE"))
vboard.FLASH_DEV = _dev
import esp32  # noqa: E402,F401 - the shim's partition table, importable after the root changes
try:
    _fs = vfs.VfsLfs2(_dev)
except OSError:
    print("flash: no filesystem found, formatting")
    vfs.VfsLfs2.mkfs(_dev)
    _fs = vfs.VfsLfs2(_dev)
vfs.umount("/")
vfs.mount(_fs, "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
if _rom is not None:
    vfs.mount(vfs.VfsRom(_rom), "/rom")
    sys.path[:] = ["", "/rom", ".frozen", "/lib"]  # "/rom" where the ESP32 has ".frozen"
del _fs


def _run(name):
    try:
        os.stat(name)
    except OSError:
        return
    with open(name) as f:
        code = f.read()
    exec(code, {"__name__": "__main__", "__file__": name})


def _run_frozen(name):
    # as the ESP32 port runs a frozen boot.py/main.py in place of the filesystem's
    sys.path.insert(0, "/rom/frozen_boot")
    try:
        __import__(name)
    finally:
        sys.path.remove("/rom/frozen_boot")


if _rom is not None:
    _run_frozen("boot")
    if not os.getenv("GV_VB_SKIP_MAIN"):
        _run_frozen("main")
else:
    _run("boot.py")
    if not os.getenv("GV_VB_SKIP_MAIN"):
        _run("main.py")

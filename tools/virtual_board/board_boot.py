# The virtual board's ROM boot (MicroPython side): mounts the LittleFS flash image as the root
# filesystem, as the ESP32 port's _boot.py does, then runs boot.py and main.py from it. With
# GV_VB_SKIP_MAIN set (a soft reset from the raw REPL) main.py is skipped, as on a real board.
import os
import sys
import vfs

import vboard  # noqa: F401 - connects to the launcher before the host filesystem goes away
import machine  # noqa: F401 - the shim, imported while its modules are still reachable
import flashdev

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
del _fs


def _run(name):
    try:
        os.stat(name)
    except OSError:
        return
    with open(name) as f:
        code = f.read()
    exec(code, {"__name__": "__main__", "__file__": name})


_run("boot.py")
if not os.getenv("GV_VB_SKIP_MAIN"):
    _run("main.py")

# Writes files into a LittleFS flash image (MicroPython side of tools/virtual_board/image.py).
# usage: micropython image_write.py IMAGE BLOCKS [--format] SRC=DST ...
import os
import sys
import vfs

import flashdev

args = sys.argv[1:]
image, blocks = args[0], int(args[1])
dev = flashdev.FlashDev(blocks=blocks, path=image)
fmt = "--format" in args
if not fmt:
    try:
        vfs.VfsLfs2(dev)
    except OSError:
        fmt = True
if fmt:
    vfs.VfsLfs2.mkfs(dev)
vfs.mount(vfs.VfsLfs2(dev), "/flash")


def makedirs(path):
    cur = "/flash"
    for part in path.split("/")[:-1]:
        if not part:
            continue
        cur += "/" + part
        try:
            os.mkdir(cur)
        except OSError:
            pass


buf = bytearray(4096)
for pair in args[2:]:
    if pair == "--format":
        continue
    src, dst = pair.split("=", 1)
    makedirs(dst)
    with open(src, "rb") as fi, open("/flash/" + dst.lstrip("/"), "wb") as fo:
        while True:
            n = fi.readinto(buf)
            if not n:
                break
            fo.write(memoryview(buf)[:n])
vfs.umount("/flash")
dev.close()
print("image: wrote", len(args) - 2 - (1 if "--format" in args else 0), "files")

"""What keeping the firmware's bytecode in flash would save (the reader's largest open item: the
whole app does not fit an ESP32 heap when its modules are loaded from .mpy files, which copies
their bytecode into RAM). The same modules are imported from .mpy files and from a ROMFS image
(`mpremote romfs build`, MicroPython's read-only filesystem whose bytecode runs in place); the
heap each import leaves taken is compared. The image itself is held in the heap on the unix port
and left out of the count: on an ESP32 it is a memory-mapped flash partition."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tools import mpy
from tools.bench import metric

# The modules a running reader has loaded (the drivers are left out: they need `machine`).
MODULES = ["gv.app", "gv.config", "gv.events", "gv.allowlist.store", "gv.allowlist.update",
           "gv.allowlist.snapshot", "gv.allowlist.pages", "gv.gate.core", "gv.gate.runner",
           "gv.sync.engine", "gv.sync.mqtt", "gv.sync.protocol"]

PROBE = r"""
import gc, json, sys, vfs
MODE = %r
if MODE == "rom":
    with open(%r, "rb") as f:
        img = f.read()
    vfs.mount(vfs.VfsRom(img), "/rom")
    sys.path.insert(0, "/rom")
else:
    sys.path.insert(0, %r)
gc.collect()
h0 = gc.mem_alloc()
for m in %r:
    __import__(m)
gc.collect()
h1 = gc.mem_alloc()
where = sys.modules["gv.app"].__file__
assert where.startswith("/rom/" if MODE == "rom" else %r), where
print(json.dumps({"heap": h1 - h0}))
"""


def _import_heap(mode: str, image: Path, mpy_dir: Path) -> int:
    p = mpy.run_mp(["-c", PROBE % (mode, str(image), str(mpy_dir), MODULES, str(mpy_dir))], heapsize="1m",
                   timeout=120, env={"MICROPYPATH": ".frozen"})
    if p.returncode:
        raise RuntimeError(f"romfs bench ({mode}) failed:\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])["heap"]


def _vboard_heap(tmp: Path, romfs: bool) -> dict:
    """The live heap of a whole reader on the virtual board (real boot.py/main.py, synced over a
    real broker from a real host, one grant and one refusal), sampled from inside its running loop
    after the sync and after each decision; the largest sample. The ROMFS image is left out."""
    from tools.site import ReaderSpec, SiteSpec, VirtualSite, present

    cards = mpy.ROOT / "tools" / "demo_data" / "cards.csv"
    samples = []
    with VirtualSite(tmp, [SiteSpec("site-a", "A", "BY-2026-000101"), SiteSpec("site-b", "B", "BY-2026-000202")],
                     [ReaderSpec("gate-01", "site-a")], romfs=romfs) as site:
        site.start(cards)
        site.wait_converged(120)
        vb = site.readers["gate-01"].board
        samples.append(vb.heap())
        for uid in ("04a1b2c3d4e5f6", "04c0ffee112233"):
            present(vb, uid)
            samples.append(vb.heap())
    top = max(samples, key=lambda h: h["alloc"])
    return {"alloc": top["alloc"], "rom": top["rom_bytes"]}


def run() -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = tmp / "src"
        shutil.copytree(mpy.FIRMWARE / "gv", src / "gv", ignore=shutil.ignore_patterns("__pycache__"))
        mpy_dir = tmp / "mpy"
        for f in (src / "gv").rglob("*.py"):
            out = mpy_dir / f.relative_to(src).with_suffix(".mpy")
            out.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([mpy.mpy_cross_bin(), "-o", str(out), str(f)], check=True, cwd=src)
        image = tmp / "romfs.img"
        env = dict(os.environ, PATH=os.pathsep.join([str(Path(mpy.mpy_cross_bin()).parent),
                                                     os.environ.get("PATH", "")]))
        mpremote = Path(mpy.micropython_bin()).parent / "mpremote"
        subprocess.run([str(mpremote) if mpremote.exists() else "mpremote", "romfs", "-o", str(image),
                        "build", str(src)], check=True, env=env, capture_output=True)
        from_mpy = _import_heap("mpy", image, mpy_dir)
        from_rom = _import_heap("rom", image, mpy_dir)
        size = image.stat().st_size
        vb_mpy = _vboard_heap(tmp / "vb-mpy", romfs=False)
        vb_rom = _vboard_heap(tmp / "vb-romfs", romfs=True)
    return {
        "romfs.vboard_reader_heap_bytes_mpy": metric(
            vb_mpy["alloc"], "bytes", "virtual board, reader as .mpy files on LittleFS (today's deploy): live heap "
            "after sync and decisions, 64-bit, shim and PN532 simulator (~41 KB) included"),
        "romfs.vboard_reader_heap_bytes_romfs": metric(
            vb_rom["alloc"], "bytes", f"the same reader booted from a ROMFS image of the frozen firmware's modules "
            f"(bytecode in place; the {vb_rom['rom']:,}-byte image not counted)"),
        "romfs.vboard_reader_heap_saved_bytes": metric(vb_mpy["alloc"] - vb_rom["alloc"], "bytes",
                                                       "what running the bytecode in place frees on the virtual board"),
        "romfs.image_bytes": metric(size, "bytes", "the firmware's gv package as a ROMFS image"),
        "romfs.import_heap_bytes_mpy": metric(
            from_mpy, "bytes", f"heap left taken by importing {len(MODULES)} reader modules from .mpy files"),
        "romfs.import_heap_bytes_romfs": metric(
            from_rom, "bytes", "the same from the ROMFS image (bytecode runs in place, as in the virtual board's --romfs boot)"),
        "romfs.import_heap_saved_bytes": metric(from_mpy - from_rom, "bytes", "what ROMFS would free"),
    }


if __name__ == "__main__":
    for k, v in run().items():
        print(k, v["value"], v["unit"])

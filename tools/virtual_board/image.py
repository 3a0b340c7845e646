"""Flash images for the virtual board: a LittleFS image file holding what a deployed board holds."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tools import mpy

HERE = Path(__file__).resolve().parent


def blocks_for(board: dict) -> int:
    """LittleFS blocks of the board's default partition: 2 MiB on 4 MB flash, flash - 2 MiB above."""
    mb = int(board.get("flash_mb", 4))
    return 512 if mb <= 4 else (mb - 2) * 256


def write(image: Path, blocks: int, files: dict[str, Path], fmt: bool = False) -> None:
    pairs = [f"{src}={dst}" for dst, src in files.items()]
    args = [str(HERE / "image_write.py"), str(image), str(blocks)] + (["--format"] if fmt else []) + pairs
    proc = mpy.run_mp(args, heapsize="256k", timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"writing flash image failed:\n{proc.stdout}{proc.stderr}")


def create(image: Path, board_path: Path, config: dict | None = None, firmware: bool = True,
           romfs: bool = False) -> None:
    """A fresh image holding what `make build` puts on a board (the firmware compiled to .mpy for
    the board's chip, boot.py, main.py, board.json) and an optional /config.json. With romfs the
    reader is in the firmware (romfs_image), and the filesystem holds only board.json (and the
    config), as the frozen deploy leaves it."""
    board = json.loads(Path(board_path).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path] = {}
        if firmware and romfs:
            bj = Path(tmp) / "board.json"
            bj.write_text(json.dumps(board, sort_keys=True) + "\n")  # the bytes tools.deploy writes
            files["board.json"] = bj
        elif firmware:
            out, manifest = cached_build(Path(board_path))
            files = {f["path"]: out / f["path"] for f in manifest["files"]}
        if config is not None:
            cfg = Path(tmp) / "config.json"
            cfg.write_text(json.dumps(config))
            files["config.json"] = cfg
        write(image, blocks_for(board), files, fmt=True)


def cached_build(board_path: Path) -> tuple[Path, dict]:
    """`make build` output for this board and these sources, reused while neither changes (many
    virtual boards of one site share it)."""
    import hashlib

    from tools import build

    h = hashlib.sha256(board_path.read_bytes())
    for p in build.sources():
        h.update(str(p.relative_to(build.FIRMWARE)).encode() + b"\0" + p.read_bytes())
    root = build.BUILD / "vb-cache" / h.hexdigest()[:16]
    manifest_path = root / board_path.stem / "manifest.json"
    if not manifest_path.exists():
        tmp = root.with_name(root.name + ".%d" % os.getpid())
        manifest = build.build(board_path, out_root=tmp)
        try:
            os.rename(tmp, root)  # atomic: a concurrent builder of the same key just loses
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return root / board_path.stem, json.loads(manifest_path.read_text())


# In the ROMFS image boot.py and main.py sit in this folder, which board_boot.py puts first in
# sys.path for those two imports only: a frozen boot.py/main.py runs in place of the filesystem's,
# while for every other module the filesystem ("") still comes first, as on the ESP32 port.
ROM_BOOT_DIR = "frozen_boot"


def romfs_image(board_path: Path, out: Path | None = None, def_path: Path | None = None,
                profile: str = "development") -> Path:
    """A ROMFS image (`mpremote romfs build`) of what the frozen firmware for this board's chip
    freezes (tools.firmware: boot.py, main.py, gv/, and gv_build with the build id), compiled to
    .mpy: the virtual board mounts it with vfs.VfsRom and runs that bytecode in place, as the
    ESP32 runs frozen modules from flash. Cached by build id. def_path: another board definition
    (e.g. of another checkout) than this repository's for the chip."""
    from tools import boards, build, firmware

    d = def_path or firmware.def_dir(boards.load(board_path).chip)
    img = out or build.BUILD / "vb-cache" / f"romfs-{d.name}-{firmware.build_id(d, profile=profile)}.img"
    if img.exists():
        return img
    img.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "rom"
        firmware.stage(d, tree, profile)
        (tree / ROM_BOOT_DIR).mkdir()
        for name in ("boot.py", "main.py"):
            os.rename(tree / name, tree / ROM_BOOT_DIR / name)
        part = img.with_name(img.name + ".%d" % os.getpid())
        mpremote = Path(mpy.micropython_bin()).parent / "mpremote"
        env = dict(os.environ, PATH=os.pathsep.join([str(Path(mpy.mpy_cross_bin()).parent), os.environ.get("PATH", "")]))
        p = subprocess.run([str(mpremote) if mpremote.exists() else "mpremote", "romfs", "-o", str(part), "build",
                            str(tree)], env=env, capture_output=True, text=True, timeout=300)
        if p.returncode:
            raise RuntimeError(f"mpremote romfs build failed:\n{p.stdout}{p.stderr}")
        os.replace(part, img)
    return img

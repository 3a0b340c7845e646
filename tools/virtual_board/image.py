"""Flash images for the virtual board: a LittleFS image file holding what a deployed board holds."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tools import mpy

HERE = Path(__file__).resolve().parent
FIRMWARE = mpy.ROOT / "firmware"


def blocks_for(board: dict) -> int:
    """LittleFS blocks of the board's default partition: 2 MiB on 4 MB flash, flash - 2 MiB above."""
    mb = int(board.get("flash_mb", 4))
    return 512 if mb <= 4 else (mb - 2) * 256


def firmware_files(src: Path = FIRMWARE) -> dict[str, Path]:
    """Device path -> source file for every file that goes onto a board (sources, not tests)."""
    out = {}
    for p in sorted(src.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".mpy", ".json") and "__pycache__" not in p.parts:
            out[str(p.relative_to(src))] = p
    return out


def write(image: Path, blocks: int, files: dict[str, Path], fmt: bool = False) -> None:
    pairs = [f"{src}={dst}" for dst, src in files.items()]
    args = [str(HERE / "image_write.py"), str(image), str(blocks)] + (["--format"] if fmt else []) + pairs
    proc = mpy.run_mp(args, heapsize="256k", timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"writing flash image failed:\n{proc.stdout}{proc.stderr}")


def create(image: Path, board: dict, config: dict | None = None, firmware: bool = True) -> None:
    """A fresh image: formatted, with the firmware sources, /board.json and an optional /config.json."""
    files = firmware_files() if firmware else {}
    with tempfile.TemporaryDirectory() as tmp:
        if firmware:
            b = Path(tmp) / "board.json"
            b.write_text(json.dumps(board))
            files["board.json"] = b
        if config is not None:
            cfg = Path(tmp) / "config.json"
            cfg.write_text(json.dumps(config))
            files["config.json"] = cfg
        write(image, blocks_for(board), files, fmt=True)

"""make build: every module compiled for the board's arch, boot.py/main.py kept, manifest honest."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import build

ROOT = Path(__file__).resolve().parent.parent


def test_build_compiles_everything_and_the_manifest_matches_the_files(tmp_path):
    m = build.build(ROOT / "boards" / "esp32s3-uart.json", tmp_path)
    out = tmp_path / "esp32s3-uart"
    assert m["chip"] == "esp32s3" and m["arch"] == "xtensawin" and m["mpy_version"] == 6
    paths = {f["path"] for f in m["files"]}
    assert {"boot.py", "main.py", "board.json", "gv/app.mpy", "gv/config.mpy"} <= paths
    assert not [p for p in paths if p.endswith(".py") and p not in ("boot.py", "main.py")]
    srcs = {p.relative_to(build.FIRMWARE).as_posix() for p in build.sources()}
    assert len(paths) == len(srcs) + 1  # every source, plus the board file
    for f in m["files"]:
        data = (out / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]
        if f["path"].endswith(".mpy"):
            assert data[:2] == b"M\x06", f["path"]
    assert m["footprint_bytes"] == sum(f["size"] for f in m["files"])
    assert json.loads((out / "manifest.json").read_text()) == m
    assert json.loads((out / "board.json").read_text())["chip"] == "esp32s3"


def test_build_is_reproducible_and_one_change_changes_one_hash(tmp_path):
    src = tmp_path / "fw"
    shutil.copytree(build.FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    board = ROOT / "boards" / "esp32-devkitc-i2c.json"
    a = build.build(board, tmp_path / "a", src)
    b = build.build(board, tmp_path / "b", src)
    assert a["files"] == b["files"] and a["build_id"] == b["build_id"]
    (src / "gv" / "app.py").write_text((src / "gv" / "app.py").read_text() + "\nX_CHANGED = 1\n")
    c = build.build(board, tmp_path / "c", src)
    diff = [f["path"] for f, g in zip(a["files"], c["files"]) if f != g]
    assert diff == ["gv/app.mpy"] and c["build_id"] != a["build_id"]


def test_build_refuses_code_micropython_cannot_compile(tmp_path):
    src = tmp_path / "fw"
    (src / "gv").mkdir(parents=True)
    (src / "gv" / "bad.py").write_text("def f(:\n    pass\n")
    with pytest.raises(build.BuildError, match="gv/bad.py"):
        build.build(ROOT / "boards" / "esp32-spi.json", tmp_path / "out", src)


def test_make_build_cli_refuses_a_bad_board_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "chip": "esp32", "flash_mb": 4}))
    out = subprocess.run([sys.executable, "-m", "tools.build", "--board", str(bad), "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "pn532: missing" in out.stderr

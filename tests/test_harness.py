"""The harness itself: firmware tests really run in MicroPython, and can fail there."""
import subprocess
import sys
from pathlib import Path

import pytest

from tools import mpy

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_FILES = sorted(p for p in (ROOT / "firmware").rglob("*.py"))

# Runs under CPython, not under MicroPython: MicroPython has no `match` statement.
CPYTHON_ONLY = '''
def test_match():
    match 3:
        case 3:
            pass
'''


def test_micropython_is_the_unix_port_v129():
    out = mpy.run_snippet("import sys; print(sys.implementation.name, sys.implementation.version[:2])")
    assert out.stdout.split() == ["micropython", "(1,", "29)"], out


def test_a_cpython_only_module_is_reported_failing(tmp_path):
    mod = tmp_path / "test_cpython_only.py"
    mod.write_text(CPYTHON_ONLY)
    ok = subprocess.run([sys.executable, "-c", CPYTHON_ONLY + "\ntest_match()"], capture_output=True)
    assert ok.returncode == 0  # CPython accepts it ...
    proc = mpy.run_mp(["tools/mptest.py", str(mod), "test_match"])
    assert proc.returncode != 0  # ... MicroPython does not, and the runner says so
    assert "SyntaxError" in proc.stdout + proc.stderr
    assert "MPTEST PASS" not in proc.stdout


def test_a_raising_test_fails_with_its_traceback(tmp_path):
    mod = tmp_path / "test_raises.py"
    mod.write_text("def test_boom():\n    raise ValueError('boom at the gate')\n")
    proc = mpy.run_mp(["tools/mptest.py", str(mod)])
    assert proc.returncode == 1
    assert "MPTEST FAIL test_boom" in proc.stdout and "boom at the gate" in proc.stdout


def test_heapsize_is_enforced():
    proc = mpy.run_snippet("b = bytearray(200 * 1024)", heapsize="128k")
    assert proc.returncode != 0 and "MemoryError" in proc.stdout + proc.stderr


@pytest.mark.parametrize("path", FIRMWARE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_firmware_file_compiles_with_mpy_cross(path, tmp_path):
    """Every firmware file must load on the board: mpy-cross compiles it for xtensawin."""
    proc = subprocess.run([mpy.mpy_cross_bin(), "-march=xtensawin", "-o", str(tmp_path / "out.mpy"),
                           str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

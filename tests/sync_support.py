"""Shared pieces of the sync tests and bench: an in-memory registry behind the host engine's
SyncData interface (the data layer only: broker, paho and firmware all run for real), and a
MicroPython reader process (tests/mp/sync_reader.py) driven from CPython."""
from __future__ import annotations

import json
import os
import queue
import random
import secrets
import struct
import subprocess
import threading
import time
from pathlib import Path

import host_sync  # noqa: F401
from gv.allowlist import record
from tools import mpy

ROOT = Path(__file__).resolve().parent.parent


def make_record(rng: random.Random, status: int = record.ACTIVE, key: bytes | None = None) -> bytes:
    key = key or bytes(rng.getrandbits(8) for _ in range(8))
    pin = rng.random() < 0.3
    vf = rng.choice([0, 1200, 1300, 1400])
    vu = vf + 1826 if vf else record.NO_END
    pv = bytes(rng.getrandbits(8) for _ in range(3)) if pin else b"\0\0\0"
    return record.pack(key, status, record.F_PIN if pin else 0, vf, vu, pv)


class MemData:
    """SyncData over dicts: one site's records with a version history of every change."""

    def __init__(self, secrets_by_reader: dict[str, tuple[str, bytes]]):
        self.readers = dict(secrets_by_reader)  # reader_id -> (site, secret)
        self.records: dict[str, dict[bytes, bytes]] = {}
        self.version: dict[str, int] = {}
        self.history: dict[str, list[tuple[int, bytes, bytes | None]]] = {}
        self.history_from: dict[str, int] = {}  # versions at or below this are gone
        self.events: dict[tuple[str, int], bytes] = {}
        self.applied: dict[str, int] = {}
        self.hellos: dict[str, dict] = {}
        self.status: dict[str, bool] = {}
        self.rejects: list[tuple[str, int, int]] = []
        self.cmd_results: list[tuple[str, int, int, int]] = []
        self.lock = threading.Lock()

    # registry side
    def change(self, site: str, recs: list[bytes] = (), removes: list[bytes] = ()) -> int:
        with self.lock:
            v = self.version.get(site, 0) + 1
            d = self.records.setdefault(site, {})
            h = self.history.setdefault(site, [])
            for r in recs:
                d[r[:8]] = r
                h.append((v, r[:8], r))
            for k in removes:
                d.pop(k, None)
                h.append((v, k, None))
            self.version[site] = v
            return v

    def forget_history(self, site: str) -> None:
        with self.lock:
            self.history[site] = []
            self.history_from[site] = self.version.get(site, 0)

    # SyncData
    def current_version(self, site):
        return self.version.get(site, 0)

    def changes_since(self, site, version, limit):
        with self.lock:
            if version < self.history_from.get(site, 0):
                return None
            out = [c for c in self.history.get(site, []) if c[0] > version]
            if len(out) > limit:  # whole versions only
                last = out[limit - 1][0]
                out = [c for c in out if c[0] <= last]
            return out

    def snapshot(self, site):
        with self.lock:
            return self.version.get(site, 0), sorted(self.records.get(site, {}).values())

    def reader_secret(self, rid):
        r = self.readers.get(rid)
        return r[1] if r else None

    def reader_site(self, rid):
        r = self.readers.get(rid)
        return r[0] if r else None

    def record_events(self, rid, events):
        n = 0
        with self.lock:
            for e in events:
                seq = struct.unpack_from("<I", e, 4)[0]
                if (rid, seq) not in self.events:
                    self.events[(rid, seq)] = e
                    n += 1
        return n

    def reader_applied(self, rid, version):
        self.applied[rid] = version

    def reader_hello(self, rid, info):
        self.hellos[rid] = info

    def reader_status(self, rid, online):
        self.status[rid] = online

    def reader_rejected(self, rid, reason, count):
        self.rejects.append((rid, reason, count))

    def command_result(self, rid, counter, cmd, result):
        self.cmd_results.append((rid, counter, cmd, result))


def reader_config(reader_id: str, site: str, broker_cfg: dict, secret: bytes) -> dict:
    return {"reader_id": reader_id, "site": site, "broker": broker_cfg, "secret": secret.hex(),
            "site_keys": {"card": "00" * 16, "pin": "11" * 16},
            "gate": {"hold_ms": 500, "open_ms": 3000, "pin_policy": "card"}}


class ReaderProc:
    """tests/mp/sync_reader.py in a micropython process; .stat is its latest STAT line."""

    def __init__(self, workdir: Path, config: dict, events: int = 0, heapsize: str = "128k",
                 image: str | None = None, stat_ms: int = 100, blocks: int = 512,
                 mpy_dir: str | None = None, live_heap: bool = False, in_place: bool = True):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(json.dumps(config))
        env = mpy.mp_env(GV_SYNC_DIR=str(self.dir), GV_SYNC_EVENTS=str(events),
                         GV_SYNC_STAT_MS=str(stat_ms), GV_SYNC_BLOCKS=str(blocks))
        if image:
            env["GV_SYNC_IMAGE"] = image
        if live_heap:
            env["GV_SYNC_LIVE"] = "1"
        if not in_place:
            env["GV_SYNC_IN_PLACE"] = "0"
        script = ["tests/mp/sync_reader.py"]
        if mpy_dir:  # precompiled, as a reader runs its firmware
            env["MICROPYPATH"] = os.pathsep.join([".frozen", mpy_dir])
            script = ["-m", "sync_reader"]
        self.proc = subprocess.Popen(
            [mpy.micropython_bin(), "-X", f"heapsize={heapsize}", *script],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.stat: dict = {}
        self.lines: list[str] = []
        self.q: queue.Queue = queue.Queue()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("STAT "):
                try:
                    self.stat = json.loads(line[5:])
                except ValueError:
                    pass
            else:
                self.lines.append(line)
                self.q.put(line)

    def ctl(self, *cmds: str) -> None:
        p = self.dir / "ctl"
        while p.exists():
            time.sleep(0.02)
        tmp = self.dir / "ctl.tmp"
        tmp.write_text("\n".join(cmds) + "\n")
        os.replace(tmp, p)

    def wait(self, pred, timeout: float = 30.0, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"reader exited {self.proc.returncode}:\n" +
                                     "\n".join(self.lines[-30:]))
            s = self.stat
            if s and pred(s):
                return s
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last stat {self.stat}\n" +
                             "\n".join(self.lines[-30:]))

    def lookup(self, key: bytes, timeout: float = 10.0) -> bytes | None:
        self.ctl(f"lookup {key.hex()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith("LOOKUP " + key.hex()):
                v = line.split()[2]
                return None if v == "-" else bytes.fromhex(v)
        raise AssertionError("no LOOKUP answer")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def compile_mpy(dest: Path) -> str:
    """The firmware, the flash stand-in and the test reader as .mpy files in dest (bytecode
    only, what mpy-cross makes for a board): no compiling in the reader's heap."""
    dest = Path(dest)
    srcs = {"flashdev.py": ROOT / "tools/sim/flashdev.py",
            "sync_reader.py": ROOT / "tests/mp/sync_reader.py"}
    for f in sorted((ROOT / "firmware").rglob("*.py")):
        srcs[str(f.relative_to(ROOT / "firmware"))] = f
    for rel, src in srcs.items():
        out = dest / rel.replace(".py", ".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([mpy.mpy_cross_bin(), "-o", str(out), str(src)], check=True,
                       capture_output=True)
    return str(dest)

"""Desk enrolment against the simulated PN532 behind a pseudo-terminal: the real tools.enroll
process opens the tty with pyserial and drives adafruit's driver; a bridge thread carries the
bytes between the pty and the simulator's UART. Registration runs the real host-sync CLI."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import tty
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools" / "sim"))

from pn532_sim import PN532Sim  # noqa: E402


class PtyPN532:
    """A PN532 on a serial port: the simulator's HSU behind a pseudo-terminal."""

    def __init__(self, sim: PN532Sim):
        self.sim = sim
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        u = self.sim.uart()
        while not self.stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.005)
            with self.lock:
                if r:
                    try:
                        data = os.read(self.master, 4096)
                    except OSError:
                        return
                    u.write(data)
                n = u.any()
                out = u.read(n) if n else None
            if out:
                os.write(self.master, out)

    def close(self):
        self.stop.set()
        self.t.join(2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def reader():
    r = PtyPN532(PN532Sim())
    yield r
    r.close()


def _enroll(args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "tools.enroll", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_reads_uid_with_leading_zeros(reader):
    with reader.lock:
        reader.sim.enter(bytes.fromhex("00000a1b"))
    r = _enroll(["--port", reader.path, "--wait", "5"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "UID 00000a1b"


def test_no_card_is_exit_1(reader):
    r = _enroll(["--port", reader.path, "--wait", "0.5"])
    assert r.returncode == 1
    assert "no card" in r.stderr


def test_bad_card_number_is_refused_before_reading(reader):
    r = _enroll(["--port", reader.path, "--register", "12-3456-7"])
    assert r.returncode == 2 and "BB-YYMM-NNNNNN" in r.stderr


def test_no_reader_on_the_port(tmp_path):
    r = _enroll(["--port", str(tmp_path / "ttyNONE"), "--wait", "0.5"])
    assert r.returncode == 3 and "no PN532" in r.stderr


def test_register_runs_host_sync_cards_add(reader, tmp_path):
    with reader.lock:
        reader.sim.enter(bytes.fromhex("0004a1b2c3d400"), atqa=0x0044, sak=0x00)
    env = {"GV_DATA": str(tmp_path / "data"), "GV_DB": "", "GV_OPERATOR": "desk"}
    env = {k: v for k, v in env.items()}
    r = _enroll(["--port", reader.path, "--wait", "5", "--register", "BB-2611-000123", "--holder", "Ann Berg"],
                env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "UID 0004a1b2c3d400" in r.stdout
    assert "BB-2611-000123" in r.stdout
    show = subprocess.run([sys.executable, "-m", "host_sync", "cards", "show", "BB-2611-000123"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert show.returncode == 0, show.stderr
    assert "0004a1b2c3d400" in show.stdout and "Ann Berg" in show.stdout
    # the same card again: host-sync refuses, enrol reports it
    r2 = _enroll(["--port", reader.path, "--wait", "5", "--register", "BB-2611-000124"], env=env)
    assert r2.returncode == 4, r2.stdout + r2.stderr

"""The deploy never hangs on a board that misbehaves: every serial wait is bounded. A board that
crash-loops or prints without pause is still stopped, reached, deployed and reset; one that never
answers fails within the REPL timeout and a reset into a printing loop returns (mpremote's own
reads wait for a 10 s quiet gap: the deploy hung at "resetting the board")."""
import os
import pty
import select
import shutil
import threading
import tty

import pytest

from tests.test_install_deploy import BOARD, QUIET, reader_config
from tools import build, deploy
from tools.virtual_board.client import VirtualBoard

CRASH_LOOP = ("import time, machine\n"
              "print('Traceback (most recent call last):\\n  ValueError: gate.hold_ms must be a whole number')\n"
              "time.sleep_ms(400)\n"
              "machine.reset()\n")
# (never quiet for more than 10 ms: mpremote's reads only end after a quiet gap; as fast as the
# unix port can print would only measure how fast the virtual board's reports can be logged)
CHATTER = ("import time\n"
           "i = 0\n"
           "while True:\n"
           "    print('chatter %d ' % i + 'x' * 70)\n"
           "    i += 1\n"
           "    time.sleep_ms(10)\n")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("fw")
    shutil.copytree(build.FIRMWARE, d / "firmware", ignore=shutil.ignore_patterns("__pycache__"))
    return d / "firmware"


@pytest.fixture(scope="module")
def build_root(src):
    return src.parent / "build"  # one build for the module's deploys


def _misbehaving(tmp_path, main_py):
    vb = VirtualBoard(BOARD, tmp_path / "flash.img", blank=True).start()
    vb.wait_for(lambda e: e.get("event") == "boot", 30)
    code = "f = open('main.py', 'w'); f.write(%r); f.close()" % main_py
    assert vb.mpremote("exec", code, resume=False).returncode == 0
    vb.mark()
    vb.send("reset")  # power cycle: main.py now runs at every boot
    return vb


@pytest.mark.parametrize("main_py,sign", [(CRASH_LOOP, "ValueError"), (CHATTER, "chatter")],
                         ids=["crash-loop", "chatter"])
def test_a_crash_looping_or_chattering_board_is_still_deployed_and_reset(tmp_path, src, build_root,
                                                                        main_py, sign):
    vb = _misbehaving(tmp_path, main_py)
    try:
        vb.wait_for(lambda e: sign in e.get("log", ""), 30)
        vb.mark()
        rep = deploy.deploy(vb.pty, BOARD, config=reader_config(), hello_timeout=None, progress=QUIET,
                            build_root=build_root, src=src, repl_timeout=20)
        assert rep.config_written and rep.verified > 1 and "main.py" in rep.copied
        # the deployed firmware boots (reset by the deploy): the reader is up, no more crash loop
        vb.wait_for(lambda e: "reader gate-01 at site-a up" in e.get("log", ""), 60)
    finally:
        vb.stop()


class ChattyPort:
    """A serial port whose board never shows a prompt and prints a line every 0.2 s (a board
    reset into a loop of tracebacks), behind a pty as the real mpremote opens it."""

    def __init__(self, tmp_path):
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.path = str(tmp_path / "chatty.pty")
        os.symlink(os.ttyname(slave), self.path)
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop.wait(0.2):
            try:
                os.write(self.master, b"Traceback (most recent call last):\r\n")
                while select.select([self.master], [], [], 0)[0]:
                    os.read(self.master, 1024)  # what the host sends goes nowhere
            except OSError:
                return

    def close(self):
        self.stop.set()
        os.close(self.master)


def test_every_serial_wait_is_bounded_against_a_board_that_never_stops_printing(tmp_path):
    port = ChattyPort(tmp_path)
    try:
        dev = deploy.Device(port.path, repl_timeout=2)
        dev.t.max_wait = 3  # (60 s in the deploy) mpremote's own reads only end after a 10 s quiet gap
        with pytest.raises(deploy.NoMicroPython) as e:
            dev.enter()  # Ctrl-C, Ctrl-A again and again: the board never answers
        assert b"Traceback" in e.value.args[0]
        done = threading.Event()
        threading.Thread(target=lambda: (dev.reset(timeout=3), done.set()), daemon=True).start()
        assert done.wait(30), "reset() still waiting for a prompt"  # it waited forever before
        data = dev.t.read_until(1, b">", timeout=10) if dev.t.serial.is_open else b""
        assert not data.endswith(b">")
        dev.close()
    finally:
        port.close()

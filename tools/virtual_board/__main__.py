"""The virtual board: the real firmware on the MicroPython unix port, on simulated hardware.

    python -m tools.virtual_board --board boards/esp32-devkitc-i2c.json --flash site/gate-01.img

boots boot.py and main.py from a LittleFS flash image (created with the firmware and an
optional --config if it does not exist), with a board-support shim in place of `machine`:
the PN532 simulator on the board file's bus, a key matrix on the keypad pins, and the relay,
LED and buzzer pins reported as they change. The board's serial REPL is a pseudo-terminal
(--pty, default IMAGE.pty) that the real mpremote connects to; a soft or hard reset, a
watchdog timeout or a crash restarts the interpreter with the same flash, as a board reboots.

Steering (from this terminal's stdin, or text lines on the --control TCP port):
  card HEX [ATQA SAK]   a card enters the field (UID in hex, leading zeros kept)
  leave [HEX]           that card (or every card) leaves the field
  hold HEX MS           a card held for MS milliseconds, then taken away
  wave HEX              a card waved past the reader (150 ms)
  key KEYS              keys pressed one after another, e.g. `key 1234#`
  fault KIND [N]        a PN532 fault (checksum, nack, no_ack, hang, stretch, garbage)
  reset                 power cycle the board        status    report state
  heap                  report the live heap {"event": "heap", "alloc": ...} from inside the firmware
  quit                  stop the board
Reports (stdout, or --events FILE; also sent to every control connection), one JSON object
a line with "t" (seconds since start): boots {"event": "boot", "cause": ...}, outputs
{"dev": "relay", "on": false, "ms": 3000}, {"dev": "led", "color": "green", "on": true},
{"dev": "buzzer", ...}, the firmware's console lines {"log": "..."}, watchdog resets.
"""
from __future__ import annotations

import argparse
import json
import os
import pty
import re
import selectors
import signal
import socket
import sys
import termios
import time
from pathlib import Path

from tools import mpy
from tools.virtual_board import image as flash_image

HERE = Path(__file__).resolve().parent
# The whole reader app loaded from .mpy files (bytecode, qstrs and module tables copied into RAM)
# plus this shim and the PN532 simulator (~41 KB) do not fit the 128k proxy heap on the 64-bit
# unix port; see docs/virtual-board.md.
DEFAULT_HEAP = "384k"
# A board with PSRAM gets a heap like stock MicroPython gives it there (all of the PSRAM the chip
# maps, at most 4 MB on an ESP32), so that tools.deploy reading gc.mem_free() + gc.mem_alloc()
# tells the two kinds of board apart here as on the hardware (a plain board stays at DEFAULT_HEAP,
# which is more than an ESP32's ~112 KB: the 64-bit port and the shim need it, docs/virtual-board.md).
PSRAM_HEAP_MAX_MB = {"esp32": 4, "esp32s3": 8}


def heap_bytes(text: str) -> int:
    t = str(text).strip().lower()
    mult = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    return int(t[:-1] if mult > 1 else t) * mult


def default_heap(board: dict) -> str:
    if board.get("psram") and board.get("psram_mb"):
        mb = min(int(board["psram_mb"]), PSRAM_HEAP_MAX_MB.get(board.get("chip"), 4))
        return f"{mb * 1024 - 64}k"  # less what the IDF keeps of it
    return DEFAULT_HEAP
SHIM_PATH = [".frozen", str(HERE / "shim"), str(mpy.ROOT / "tools" / "sim")]


# Console lines go to a log file: a config printed at the REPL (`mpremote fs cat :config.json`)
# must not put the reader's secrets there. The serial port itself still carries them unchanged.
_SECRET = re.compile(r'("(?:secret|password|card|pin|ca)"\s*:\s*)"[^"]*"')


def _redact(text: str) -> str:
    return _SECRET.sub(r'\1"<redacted>"', text)


class Board:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.board_path = Path(args.board).resolve()
        self.board = json.loads(self.board_path.read_text())
        self.image = Path(args.flash).resolve()
        self.blocks = flash_image.blocks_for(self.board)
        self.t0 = time.monotonic()
        self.sel = selectors.DefaultSelector()
        self.out = open(args.events, "a", buffering=1) if args.events else sys.stdout
        self.controls: list[socket.socket] = []
        self.timers: list[tuple[float, str]] = []
        self.child_pid = 0
        self.child_fd = -1
        self.child_talked = False
        self.child_started_at = 0.0
        self.held = b""
        self.hw: socket.socket | None = None
        self.hw_buf = b""
        self.log_buf = b""
        self.raw_repl = False
        self.boots = 0
        self.wdt_deadline: float | None = None
        self.wdt_timeout = 0.0
        self.relay_on_at: float | None = None
        self.running = True
        self.next_cause = "power-on"

    # -- reporting --
    def emit(self, obj: dict) -> None:
        obj = {"t": round(time.monotonic() - self.t0, 3), **obj}
        line = json.dumps(obj)
        print(line, file=self.out, flush=True)
        data = (line + "\n").encode()
        for c in list(self.controls):
            try:
                c.sendall(data)
            except OSError:
                self._drop_control(c)

    # -- set-up --
    def setup(self) -> None:
        if not self.image.exists() or self.args.fresh:
            config = json.loads(Path(self.args.config).read_text()) if self.args.config else None
            flash_image.create(self.image, self.board_path, config, firmware=not self.args.blank,
                               romfs=bool(self.args.romfs or self.args.romfs_image))
        self.romfs = None
        if self.args.romfs_image:
            self.romfs = Path(self.args.romfs_image).resolve()
        elif self.args.romfs:
            self.romfs = flash_image.romfs_image(self.board_path, profile=self.args.profile)
        heap = heap_bytes(self.args.heapsize or default_heap(self.board))
        self.heapsize = heap + (self.romfs.stat().st_size + 64 if self.romfs else 0)
        # the serial port: we keep the slave open so the port survives clients coming and going
        self.outer_master, self.outer_slave = os.openpty()
        attrs = termios.tcgetattr(self.outer_slave)
        attrs[0] = 0
        attrs[1] = 0
        attrs[3] = 0  # raw: no echo, no line editing, no signals, no output processing
        termios.tcsetattr(self.outer_slave, termios.TCSANOW, attrs)
        os.set_blocking(self.outer_master, False)
        self.pty_link = Path(self.args.pty or str(self.image) + ".pty")
        if self.pty_link.is_symlink() or self.pty_link.exists():
            self.pty_link.unlink()
        self.pty_link.symlink_to(os.ttyname(self.outer_slave))
        self.sel.register(self.outer_master, selectors.EVENT_READ, "outer")
        self.hw_server = socket.create_server(("127.0.0.1", 0))
        self.sel.register(self.hw_server, selectors.EVENT_READ, "hw-accept")
        self.ctl_server = socket.create_server(("127.0.0.1", self.args.control))
        self.sel.register(self.ctl_server, selectors.EVENT_READ, "ctl-accept")
        if self.args.stdin and sys.stdin.isatty() or self.args.stdin:
            self.sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
        self.emit({"event": "ready", "pty": str(self.pty_link), "control": self.ctl_server.getsockname()[1],
                   "board": self.board.get("name"), "chip": self.board.get("chip"), "flash": str(self.image),
                   "heap": heap, "romfs": str(self.romfs) if self.romfs else None})

    # -- the interpreter --
    def start_child(self, cause: str, skip_main: bool = False) -> None:
        env = mpy.mp_env(GV_VB_BOARD=str(self.board_path), GV_VB_IMAGE=str(self.image),
                         GV_VB_BLOCKS=str(self.blocks), GV_VB_HW=str(self.hw_server.getsockname()[1]),
                         GV_VB_RESET=cause)
        env["MICROPYPATH"] = os.pathsep.join(SHIM_PATH)
        if skip_main:
            env["GV_VB_SKIP_MAIN"] = "1"
        if self.romfs:
            env["GV_VB_ROMFS"] = str(self.romfs)
        argv = [mpy.micropython_bin(), "-X", f"heapsize={self.heapsize}", "-i", str(HERE / "board_boot.py")]
        pid, fd = pty.fork()
        if pid == 0:  # child: a terminal like a board's UART: no echo or line editing, ^C interrupts
            try:
                attrs = termios.tcgetattr(0)
                attrs[0] &= ~(termios.ICRNL | termios.IXON)
                attrs[1] &= ~termios.OPOST
                attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN)
                attrs[3] |= termios.ISIG
                termios.tcsetattr(0, termios.TCSANOW, attrs)
                os.chdir(mpy.ROOT)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.child_pid, self.child_fd = pid, fd
        # The interpreter is a CPython process that embeds MicroPython: a Ctrl-C reaching it while
        # CPython itself starts kills it with a traceback (a board just reset would take it in its
        # boot.py). What comes in on the serial port waits until the child has said something.
        self.child_talked = False
        self.child_started_at = time.monotonic()
        self.held = b""
        os.set_blocking(fd, False)
        self.sel.register(fd, selectors.EVENT_READ, "child")
        self.boots += 1
        self.wdt_deadline = None
        self.hw = None
        self.emit({"event": "boot", "cause": cause, "boot": self.boots, "skip_main": skip_main})

    def stop_child(self, sig: int = signal.SIGKILL) -> int | None:
        if not self.child_pid:
            return None
        try:
            os.kill(self.child_pid, sig)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(self.child_pid, 0)
        self._child_gone()
        return status

    def _child_gone(self) -> None:
        try:
            self.sel.unregister(self.child_fd)
        except (KeyError, ValueError):
            pass
        try:
            os.close(self.child_fd)
        except OSError:
            pass
        if self.hw is not None:
            try:
                self.sel.unregister(self.hw)
            except (KeyError, ValueError):
                pass
            self.hw.close()
            self.hw = None
        if self.relay_on_at is not None:
            self.emit({"dev": "relay", "on": False, "ms": self._relay_ms(), "why": "reboot"})
        self.child_pid, self.child_fd = 0, -1

    def _relay_ms(self) -> int:
        ms = int((time.monotonic() - (self.relay_on_at or time.monotonic())) * 1000)
        self.relay_on_at = None
        return ms

    def child_exited(self) -> None:
        _, status = os.waitpid(self.child_pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self._child_gone()
        if not self.running:
            return
        if code == 3:
            cause = "wdt"
        elif code == 2:
            cause = "hard"
        elif code == 0:
            cause = "soft"
        else:
            cause = "crash"
            self.emit({"event": "crash", "exit": code})
        if cause == "soft":
            os.write(self.outer_master, b"soft reboot\r\n") if self._outer_ok() else None
        raw = cause == "soft" and self.raw_repl
        self.start_child(cause, skip_main=raw)
        if raw:  # back at the raw REPL, as a board soft-reset from it is
            os.write(self.child_fd, b"\x01")

    def _outer_ok(self) -> bool:
        return True

    # -- I/O --
    def on_child_output(self) -> None:
        try:
            data = os.read(self.child_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.child_exited()
            return
        if not self.child_talked:
            self._release_held()
        try:
            os.write(self.outer_master, data)
        except (BlockingIOError, OSError):
            pass  # nobody on the serial port: the bytes go nowhere, as on a UART
        self.log_buf += data
        while b"\n" in self.log_buf:
            line, self.log_buf = self.log_buf.split(b"\n", 1)
            text = line.decode("utf-8", "replace").strip("\r")
            if text:
                self.emit({"log": _redact(text)})
        if len(self.log_buf) > 4096:
            self.log_buf = b""

    def on_outer_input(self) -> None:
        try:
            data = os.read(self.outer_master, 4096)
        except (BlockingIOError, OSError):
            return
        for b in data:
            if b == 0x01:
                self.raw_repl = True
            elif b == 0x02:
                self.raw_repl = False
        if self.child_fd >= 0 and not self.child_talked:
            self.held += data
        elif self.child_fd >= 0:
            try:
                os.write(self.child_fd, data)
            except OSError:
                pass

    def _release_held(self) -> None:
        self.child_talked = True
        data, self.held = self.held, b""
        if data and self.child_fd >= 0:
            try:
                os.write(self.child_fd, data)
            except OSError:
                pass

    def on_hw(self) -> None:
        try:
            data = self.hw.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(self.hw)
            self.hw.close()
            self.hw = None
            return
        self.hw_buf += data
        while b"\n" in self.hw_buf:
            line, self.hw_buf = self.hw_buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            self.on_hw_message(msg)

    def on_hw_message(self, msg: dict) -> None:
        now = time.monotonic()
        if "wdt" in msg:
            if msg["wdt"] == "start":
                self.wdt_timeout = msg.get("timeout", 5000) / 1000
                self.emit({"event": "wdt-start", "timeout_ms": msg.get("timeout")})
            self.wdt_deadline = now + self.wdt_timeout
            return
        if msg.get("console") == "locked":  # gv.profile: ^C is a character now, as on the ESP32 with
            if self.child_fd >= 0:        # kbd_intr(-1) (on the unix port ^C is SIGINT: take it off)
                attrs = termios.tcgetattr(self.child_fd)
                attrs[3] &= ~termios.ISIG
                termios.tcsetattr(self.child_fd, termios.TCSANOW, attrs)
            self.emit({"event": "console", "state": "locked"})
            return
        if msg.get("event") == "reset-request":  # machine.reset(), soft_reset() or a crash path
            self.emit(msg)
            self.stop_child()
            self.start_child(msg.get("cause", "hard"))
            return
        if msg.get("dev") == "relay":
            if msg["on"]:
                self.relay_on_at = now
            elif self.relay_on_at is not None:
                msg["ms"] = self._relay_ms()
        self.emit(msg)

    def to_hw(self, line: str) -> None:
        if self.hw is not None:
            try:
                self.hw.sendall((line + "\n").encode())
            except OSError:
                pass

    # -- steering --
    def command(self, line: str) -> None:
        parts = line.split()
        if not parts:
            return
        op, rest = parts[0], parts[1:]
        now = time.monotonic()
        try:
            if op == "card" and rest:
                bytes.fromhex(rest[0])
                self.to_hw("enter " + " ".join(rest))
            elif op == "cards":
                for uid in rest:
                    self.to_hw("enter " + uid)
            elif op == "leave":
                self.to_hw("leave " + (rest[0] if rest else "all"))
            elif op == "hold" and len(rest) == 2:
                self.to_hw("enter " + rest[0])
                self.timers.append((now + int(rest[1]) / 1000, "leave " + rest[0]))
            elif op == "wave" and rest:
                self.to_hw("enter " + rest[0])
                self.timers.append((now + 0.15, "leave " + rest[0]))
            elif op == "key" and rest:
                at = now
                for k in rest[0]:
                    self.timers.append((at, "down " + k))
                    self.timers.append((at + 0.08, "up"))
                    at += 0.16
            elif op == "heap":
                self.to_hw("heap")
            elif op == "fault" and rest:
                self.to_hw("fault " + " ".join(rest))
            elif op == "reset":
                self.stop_child()
                self.start_child("power-on")
            elif op == "status":
                self.emit({"event": "status", "pid": self.child_pid, "boots": self.boots,
                           "raw_repl": self.raw_repl, "relay_on": self.relay_on_at is not None})
            elif op == "quit":
                self.running = False
            else:
                self.emit({"event": "error", "error": f"unknown command: {line}"})
        except ValueError as e:
            self.emit({"event": "error", "error": f"bad command {line!r}: {e}"})

    def _drop_control(self, c: socket.socket) -> None:
        if c in self.controls:
            self.controls.remove(c)
            try:
                self.sel.unregister(c)
            except (KeyError, ValueError):
                pass
            c.close()

    def run(self) -> None:
        self.setup()
        self.start_child("power-on")
        ctl_bufs: dict[socket.socket, bytes] = {}
        while self.running:
            now = time.monotonic()
            due = [t for t in self.timers if t[0] <= now]
            for t in due:
                self.timers.remove(t)
                self.to_hw(t[1])
            if self.child_pid and not self.child_talked and now - self.child_started_at > 3:
                self._release_held()  # a firmware that prints nothing at boot still gets its input
            if self.wdt_deadline is not None and now > self.wdt_deadline and self.child_pid:
                self.emit({"event": "wdt-reset"})
                self.stop_child()
                self.start_child("wdt")
            timeout = 0.02 if self.timers else 0.2
            for key, _ in self.sel.select(timeout):
                tag = key.data
                if tag == "child":
                    self.on_child_output()
                elif tag == "outer":
                    self.on_outer_input()
                elif tag == "hw-accept":
                    conn, _ = self.hw_server.accept()
                    if self.hw is not None:
                        self.sel.unregister(self.hw)
                        self.hw.close()
                    self.hw = conn
                    self.hw_buf = b""
                    self.sel.register(conn, selectors.EVENT_READ, "hw")
                elif tag == "hw":
                    if self.hw is not None:
                        self.on_hw()
                elif tag == "ctl-accept":
                    conn, _ = self.ctl_server.accept()
                    self.controls.append(conn)
                    ctl_bufs[conn] = b""
                    self.sel.register(conn, selectors.EVENT_READ, ("ctl", conn))
                elif tag == "stdin":
                    line = sys.stdin.readline()
                    if not line:
                        self.sel.unregister(sys.stdin)
                        continue
                    self.command(line.strip())
                elif isinstance(tag, tuple):
                    conn = tag[1]
                    try:
                        data = conn.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop_control(conn)
                        continue
                    ctl_bufs[conn] = ctl_bufs.get(conn, b"") + data
                    while b"\n" in ctl_bufs[conn]:
                        line, ctl_bufs[conn] = ctl_bufs[conn].split(b"\n", 1)
                        self.command(line.decode("utf-8", "replace").strip())
        self.stop_child()
        self.emit({"event": "stopped"})
        try:
            self.pty_link.unlink()
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.virtual_board", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", required=True, help="board file (boards/*.json): buses and pins to emulate")
    ap.add_argument("--flash", required=True, help="flash image file (LittleFS); created if missing")
    ap.add_argument("--config", help="reader config JSON to put at /config.json when creating the image")
    ap.add_argument("--fresh", action="store_true", help="recreate the flash image even if it exists")
    ap.add_argument("--blank", action="store_true", help="a new image without firmware (a bare board)")
    ap.add_argument("--pty", help="path of the serial-port symlink for mpremote (default: FLASH.pty)")
    ap.add_argument("--control", type=int, default=0, help="TCP port on 127.0.0.1 for steering (0: any free)")
    ap.add_argument("--events", help="append the JSON-line reports to this file instead of stdout")
    ap.add_argument("--heapsize", help=f"MicroPython heap (default {DEFAULT_HEAP}, or the PSRAM of a board "
                                        f"file with psram_mb: see docs/virtual-board.md on heap)")
    ap.add_argument("--romfs", action="store_true",
                    help="a frozen-firmware board: the reader runs in place from a ROMFS image of what "
                         "`make firmware` freezes (tools.firmware), the flash holds only board.json/config")
    ap.add_argument("--profile", choices=["development", "production"], default="development",
                    help="with --romfs: the firmware profile the image is built for (production: no REPL once "
                         "provisioned, no in-place deltas; docs/security.md)")
    ap.add_argument("--romfs-image", help="that ROMFS image from this file (default: built from firmware/)")
    ap.add_argument("--stdin", action="store_true", help="read steering commands from stdin")
    args = ap.parse_args(argv)
    board = Board(args)
    signal.signal(signal.SIGTERM, lambda *_: setattr(board, "running", False))
    try:
        board.run()
    except KeyboardInterrupt:
        board.running = False
        board.stop_child()
    return 0


if __name__ == "__main__":
    sys.exit(main())

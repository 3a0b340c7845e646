"""Deploy a build and one reader's config onto a board over its serial REPL, with the real mpremote.

    python -m tools.deploy --port /dev/ttyUSB0 --board boards/esp32-devkitc-i2c.json --reader gate-01
    make deploy PORT=/dev/ttyUSB0 BOARD=boards/esp32-devkitc-i2c.json READER=gate-01

A board file with "firmware": "frozen" (plain ESP32, S3 without PSRAM) runs the grindvakt firmware
with the reader frozen in (`make firmware`): the deploy flashes it with esptool when given --flash
(else prints the command), copies no code, removes code on the filesystem that would shadow the
frozen modules, checks over the REPL that the board runs the build id these sources give, and
provisions board.json and the config. A "stock" board (PSRAM) gets the .mpy files below, after
the board's heap (gc.mem_free() + gc.mem_alloc()) shows PSRAM: a plain ESP32 is refused
(--allow-small-heap overrides, for development).

Steps: build (tools.build) -> reach the raw REPL (a board without MicroPython is recognised and the
esptool command to run is printed) -> check the chip, the MicroPython version and .mpy compatibility
-> hash every file on the device (sha256 in the device's hashlib) -> mark the deploy as in progress
(/deploy.json) -> copy only the files whose hash differs (each through a .part file renamed into
place) -> remove stale code -> write /config.json -> re-hash and verify every file -> mark the
deploy complete (written last, so a cut anywhere before is detected and said) -> reset -> wait for
the reader's first authenticated HELLO: as `host-sync serve` records it in the registry (default; no
broker password needed), or on its MQTT hello topic with --mqtt / GV_MQTT_USER (docs/protocol.md). A
missing hello is explained from what the reader printed on its console after the reset: the step
that failed (Wi-Fi, broker address, TLS, credentials), or a sync service that is not running.

A rerun after a pulled cable finishes the job: files already on the device with the right hash are
not copied again. Exit codes: 0 done, 1 refused (wrong chip, incompatible MicroPython, bad board or
config), 2 no MicroPython on the board, 3 connection lost (rerun), 4 verification failed,
5 no hello from the reader in time.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import errno
import io
import json
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from tools import boards, build, hello, provision

STATE_PATH = "deploy.json"
CONFIG_PATH = "config.json"
MIN_MICROPYTHON = (1, 23, 0)  # the `vfs` module and .mpy v6.3
CHUNK = 1024  # bytes per raw-REPL write (~4 KiB of source on the device's heap at worst)

# What the esptool command needs per chip: MicroPython's download page names the images
# <BOARD>-<date>-v<version>.bin; the ESP32 bootloader sits at 0x1000, the S3's at 0.
ESPTOOL = {
    "esp32": {"offset": "0x1000", "image": "ESP32_GENERIC"},
    "esp32s3": {"offset": "0", "image": "ESP32_GENERIC_S3"},
}
# The stock image with PSRAM support: ESP32_GENERIC's default build leaves a WROVER's PSRAM unused;
# the S3's default build finds quad PSRAM itself, octal needs its own variant.
PSRAM_VARIANT = {("esp32", "quad"): "-SPIRAM", ("esp32s3", "octal"): "-SPIRAM_OCT"}
ROM_BANNERS = (b"ets ", b"ESP-ROM", b"rst:0x", b"waiting for download", b"boot:0x")


class DeployError(Exception):
    code = 1


class NoMicroPython(DeployError):
    code = 2


class ConnectionLost(DeployError):
    code = 3


class VerifyFailed(DeployError):
    code = 4


class NoHello(DeployError):
    code = 5


def esptool_commands(chip: str, port: str, flash_mb: int | None = None, psram: str | None = None) -> list[str]:
    """Stock MicroPython onto a bare board (esptool v5: hyphenated commands)."""
    e = ESPTOOL[chip]
    image = e["image"] + PSRAM_VARIANT.get((chip, psram), "")
    if chip == "esp32s3" and flash_mb == 4:
        image += "-FLASH_4M"  # the default S3 image expects 8 MiB
    fw = f"{image}-<date>-v{'.'.join(map(str, MIN_MICROPYTHON[:2]))}+.bin"
    return [f"esptool --chip {chip} --port {port} erase-flash",
            f"esptool --chip {chip} --port {port} --baud 460800 write-flash -z {e['offset']} {fw}"]


# ---- on the device (sent over the raw REPL; plain MicroPython) ----
_INFO = """
import sys, os
_m = os.uname().machine if hasattr(os, 'uname') else getattr(sys.implementation, '_machine', sys.platform)
if sys.platform == 'esp32':
    _c = _m.split(' with ')[-1].strip().lower().replace('-', '')
else:
    try:
        import vboard
        _c = vboard.CHIP
    except ImportError:
        _c = sys.platform
print(repr({'chip': _c, 'version': tuple(sys.implementation.version[:3]), 'mpy': getattr(sys.implementation, '_mpy', 0), 'machine': _m, 'platform': sys.platform}))
"""

_HASH = """
import os, hashlib, binascii
_b = bytearray(1024)
_v = memoryview(_b)
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    while True:
        n = f.readinto(_b)
        if not n:
            break
        h.update(_v[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _walk(d, out):
    for e in os.ilistdir(d):
        p = d.rstrip('/') + '/' + e[0]
        if e[1] == 0x4000:
            _walk(p, out)
        elif p.endswith('.py') or p.endswith('.mpy') or p.endswith('.part'):
            out.append(p.lstrip('/'))
    return out
print(repr(({p: _h(p) for p in %r}, _walk('/', []) if %r else [])))
"""


@dataclass
class Report:
    copied: list[str] = field(default_factory=list)
    bytes_copied: int = 0
    removed: list[str] = field(default_factory=list)
    verified: int = 0
    resumed: bool = False
    config_written: bool = False
    up_to_date: bool = False
    device: dict = field(default_factory=dict)
    hello: dict | None = None
    wire_bytes: int = 0

    def as_dict(self) -> dict:
        return {"copied": self.copied, "files_copied": len(self.copied), "bytes_copied": self.bytes_copied,
                "removed": self.removed, "verified": self.verified, "resumed": self.resumed,
                "config_written": self.config_written, "up_to_date": self.up_to_date,
                "device": self.device, "hello": self.hello, "wire_bytes": self.wire_bytes}


RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
MAX_WAIT_S = 60.0  # the longest any one serial wait may take (a whole exec is bounded by Device.deadline)


class BoundedSerial(SerialTransport):
    """mpremote's serial transport with every wait bounded. Its read_until() only gives up after
    a quiet gap, so a board that keeps printing (a crash loop, a chatty main.py) kept it reading
    forever: the deploy hung at "resetting the board" in 5 of 18 tries. Here every read has an
    overall bound, and the raw REPL is entered by trying again within the REPL timeout (Ctrl-C
    sent while a crash-looping board is between resets is lost; the next one lands)."""

    max_wait = MAX_WAIT_S

    def read_until(self, min_num_bytes, ending, timeout=10, data_consumer=None, timeout_overall=None):
        bound = self.max_wait if timeout_overall is None else min(timeout_overall, self.max_wait)
        return super().read_until(min_num_bytes, ending, timeout, data_consumer, bound)

    def _drain(self, seconds: float) -> tuple[bool, bytes]:
        """Read what the board prints for at most `seconds`, until it is quiet for 100 ms:
        (went quiet, the last 4 KiB read)."""
        end = time.monotonic() + seconds
        quiet = time.monotonic() + 0.1
        got = b""
        while time.monotonic() < end:
            n = self.serial.inWaiting()
            if n:
                got = (got + self.serial.read(n))[-4096:]
                quiet = time.monotonic() + 0.1
            elif time.monotonic() >= quiet:
                return True, got
            else:
                time.sleep(0.01)
        return False, got

    def enter_raw_repl(self, soft_reset=True, timeout_overall=10):
        deadline = time.monotonic() + timeout_overall
        seen = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                print(seen[-2000:])  # Device.enter() keeps it for the error message
                raise TransportError("could not enter raw repl")
            self.serial.write(b"\r\x03\x03")  # ctrl-C twice: stop the program (and a paste)
            quiet, got = self._drain(min(2.0, left))
            seen = (seen + got)[-4096:]
            if not quiet:  # still printing: the Ctrl-C was lost (mid-reset) or ignored; again
                continue
            self.serial.write(b"\r\x01")  # ctrl-A: raw REPL
            data = self.read_until(1, RAW_BANNER + b">", timeout=1,
                                   timeout_overall=max(0.1, min(2.0, deadline - time.monotonic())))
            seen = (seen + data)[-4096:]
            if data.endswith(RAW_BANNER + b">"):
                break
        if soft_reset:
            # ctrl-D in the raw REPL: a soft reset that runs boot.py, not main.py; boot.py may print
            self.serial.write(b"\x04")
            left = max(2.0, deadline - time.monotonic())
            data = self.read_until(1, b"soft reboot\r\n", timeout_overall=left)
            if not data.endswith(b"soft reboot\r\n"):
                print(data[-2000:])
                raise TransportError("could not enter raw repl")
            data = self.read_until(1, RAW_BANNER, timeout_overall=max(2.0, deadline - time.monotonic()))
            if not data.endswith(RAW_BANNER):
                print(data[-2000:])
                raise TransportError("could not enter raw repl")
        self.in_raw_repl = True


class Device:
    """One board's raw REPL through mpremote's SerialTransport, every wait bounded."""

    def __init__(self, port: str, repl_timeout: float = 10):
        self.port = port
        self.repl_timeout = repl_timeout
        try:
            # a read timeout so a pulled cable ends in an error, not a hang
            self.t = BoundedSerial(port, baudrate=115200, timeout=5)
        except TransportError as e:
            raise DeployError(f"can't open {port}: {e}") from None
        self.wire_bytes = 0  # bytes sent to the board: what a 115200-baud UART has to carry
        write = self.t.serial.write

        def counted(data):
            self.wire_bytes += len(data)
            return write(data)

        self.t.serial.write = counted

    def enter(self) -> None:
        seen = io.StringIO()
        try:
            # Ctrl-C stops the reader (its app relaxes the watchdog), then a soft reset from the
            # raw REPL gives a clean heap without running main.py again, as mpremote itself does
            with contextlib.redirect_stdout(seen):  # mpremote prints what it got on failure
                self.t.enter_raw_repl(soft_reset=True, timeout_overall=self.repl_timeout)
        except TransportError:
            data = self.t.read_until(1, b"\x00", timeout=0.5, timeout_overall=1)
            raise NoMicroPython(seen.getvalue().encode() + data) from None

    @contextlib.contextmanager
    def deadline(self, seconds: float = 60):
        """A board that stops answering mid-command (mpremote would wait for it forever while it
        keeps printing) ends in a lost connection, not a hang: the port is closed under the read."""
        timer = threading.Timer(seconds, self.close)
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def run(self, code: str) -> str:
        try:
            with self.deadline():
                return self.t.exec(code).decode()
        except TransportError as e:
            if getattr(e, "error_output", None):
                raise DeployError(f"device error: {e.error_output.strip().splitlines()[-1]}") from None
            raise ConnectionLost(str(e)) from None
        except (OSError, TypeError, AttributeError) as e:  # the port closed under a read
            raise ConnectionLost(f"{type(e).__name__}: {e}") from None

    def eval(self, code: str):
        return ast.literal_eval(self.run(code).strip().splitlines()[-1])

    def info(self) -> dict:
        return self.eval(_INFO)

    def hashes(self, paths: list[str], walk: bool = False) -> tuple[dict[str, str | None], list[str]]:
        return self.eval(_HASH % (paths, walk))

    def read_text(self, path: str) -> str | None:
        r = self.eval(f"try:\n f=open({path!r})\n print(repr(f.read()))\n f.close()\n"
                      f"except OSError:\n print(None)\n")
        return r

    def makedirs(self, path: str) -> None:
        parts = path.split("/")[:-1]
        if parts:
            self.run("import os\nfor _d in %r:\n try:\n  os.mkdir(_d)\n except OSError:\n  pass\n"
                     % ["/".join(parts[: i + 1]) for i in range(len(parts))])

    def write(self, path: str, data: bytes, progress=None) -> None:
        """Write through path.part then rename: a cut never leaves a truncated module in place."""
        tmp = path + ".part"
        try:
            with self.deadline(60 + len(data) / 500):
                self.t.fs_writefile(tmp, data, chunk_size=CHUNK, progress_callback=progress)
        except TransportError as e:
            if getattr(e, "error_output", None):
                raise DeployError(f"device refused {path}: {e.error_output.strip().splitlines()[-1]}") from None
            raise ConnectionLost(str(e)) from None
        except OSError as e:
            if e.strerror == tmp:  # mpremote's translation of the device's own OSError (e.g. ENOSPC)
                raise DeployError(f"device refused {path}: {errno.errorcode.get(e.errno, e.errno)}") from None
            raise ConnectionLost(f"{type(e).__name__}: {e}") from None  # the serial line itself
        self.run(f"import os\nos.rename({tmp!r}, {path!r})")

    def remove(self, path: str) -> None:
        if path.endswith("/"):  # a whole folder
            self.run(_RMTREE % path.rstrip("/"))
            return
        self.run(f"import os\ntry:\n os.remove({path!r})\nexcept OSError as e:\n if e.errno != 2:\n  raise\n")

    def isdir(self, path: str) -> bool:
        return self.eval(f"import os\ntry:\n print(os.stat({path!r})[0] & 0x4000 != 0)\nexcept OSError:\n print(False)\n")

    def reset(self, timeout: float = 15) -> None:
        """machine.reset() from the raw REPL, within `timeout` s (the board may be gone before it
        answers, or reset into a loop that prints a traceback every few seconds).
        Nothing is read once the command is sent: what the board prints from then on (the raw
        REPL's "OK", then the reader booting) stays on the port for the ConsoleTap, which says
        why a hello is missing. mpremote's exec_raw_no_follow() sends it in raw-paste mode and
        then reads until an end-of-data ack that a board resetting on the spot never sends: that
        read took (and dropped) the reader's first ~10 s of output, where it says
        "mqtt: HOST:PORT: ... ECONNREFUSED" once (then only every 10th failure)."""
        try:
            with self.deadline(timeout):
                prompt = self.t.read_until(1, b">", timeout=1, timeout_overall=max(0.1, timeout - 1))
                if prompt.endswith(b">"):  # at the raw REPL: the plain (not raw-paste) way in
                    self.t.serial.write(b"import machine\nmachine.reset()\x04")
        except (TransportError, OSError, TypeError, AttributeError):
            pass

    def close(self) -> None:
        try:
            self.t.close()
        except OSError:
            pass


def stale_code(on_device: list[str], want: dict) -> list[str]:
    """Code files to remove: anything under a folder the build owns (gv/...) that the build lacks,
    a top-level module the build ships in another form (main.mpy next to main.py, or app.py
    shadowing app.mpy), and .part files left by a cut. Other files (e.g. lib/) are left alone."""
    owned = {p.split("/", 1)[0] for p in want if "/" in p}
    stems = {p.rsplit(".", 1)[0] for p in want}
    out = []
    for c in on_device:
        if c in want:
            continue
        top = c.split("/", 1)[0] if "/" in c else None
        if c.endswith(".part") or top in owned or (top is None and c.rsplit(".", 1)[0] in stems):
            out.append(c)
    return sorted(out)


def bare_board_message(data: bytes, board: boards.Board, port: str) -> str:
    what = ("the ESP32 ROM bootloader answered" if any(b in data for b in ROM_BANNERS)
            else "nothing answered" if not data.strip() else "something that is not a MicroPython REPL answered")
    if board.firmware == "frozen":
        cmds = "\n  ".join(shlex.join(c) for c in flash_commands(board, port, erase=True))
        return (f"no MicroPython on {port} ({what}). This board runs the grindvakt firmware: build it "
                f"(make firmware BOARD={board.path}), then rerun the deploy with --flash --erase, or run:\n  {cmds}")
    cmds = "\n  ".join(esptool_commands(board.chip, port, board.data.get("flash_mb"), board.data.get("psram")))
    return (f"no MicroPython on {port} ({what}). Put MicroPython on this {board.chip} first "
            f"(image from micropython.org/download/{ESPTOOL[board.chip]['image']}/), then rerun:\n  {cmds}")


# ---- the frozen firmware ("firmware": "frozen" board files) and the heap check of the stock path ----

# Stock MicroPython with .mpy files needs a heap only PSRAM gives: loaded from .mpy the reader takes
# ~158 KB of GC heap on 32-bit (issue 14), a plain ESP32 gives ~112 KB, a PSRAM board megabytes.
PSRAM_MIN_HEAP = 1024 * 1024

# The build id of the firmware's own frozen gv_build, never a gv_build.py on the filesystem
# ("" is first in sys.path): only the frozen entries (".frozen"; "/rom" on the virtual board).
_BUILD_ID = """
import sys
_p = sys.path[:]
sys.path[:] = [x for x in _p if x in ('.frozen', '/rom')]
try:
    import gv_build
    print(repr(gv_build.ID))
except ImportError:
    print(None)
finally:
    sys.path[:] = _p
"""
_RMTREE = """
import os
def _rm(d):
    for e in os.ilistdir(d):
        p = d + '/' + e[0]
        if e[1] == 0x4000:
            _rm(p)
        else:
            os.remove(p)
    os.rmdir(d)
try:
    _rm(%r)
except OSError as e:
    if e.errno != 2:
        raise
"""
_HEAP = "import gc\ngc.collect()\nprint(gc.mem_free() + gc.mem_alloc())\n"


def flash_commands(board: boards.Board, port: str, erase: bool = False,
                   out_root: Path | None = None, profile: str = "development") -> list[list[str]]:
    """esptool (v5, hyphenated commands) lines that put the frozen firmware `make firmware` built on
    the board: the one merged image at the chip's bootloader offset. --erase first wipes the whole
    flash, LittleFS with it (a first install); without it the filesystem stays (same partitions)."""
    from tools import firmware

    d = firmware.def_dir(board.chip)
    image = firmware.out_dir(d, profile, out_root or firmware.OUT) / "firmware.bin"
    base = ["esptool", "--chip", board.chip, "--port", port]
    cmds = [base + ["erase-flash"]] if erase else []
    cmds.append(base + ["--baud", "460800", "write-flash", "-z", firmware.DEFS[board.chip]["offset"],
                        str(image.relative_to(build.ROOT) if image.is_relative_to(build.ROOT) else image)])
    return cmds


def _run_esptool(argv: list[str]) -> int:
    """One esptool command line, run with this Python's esptool (requirements.txt)."""
    import subprocess
    return subprocess.run([sys.executable, "-m", "esptool", *argv[1:]], cwd=build.ROOT).returncode


def frozen_expect(board: boards.Board, flash: bool, out_root: Path | None = None,
                  profile: str = "development") -> str:
    """The build id the board must run: what this checkout's sources give. Flashing also needs
    `make firmware` to have built exactly that."""
    from tools import firmware

    d = firmware.def_dir(board.chip)
    fit = firmware.check_partitions(firmware.partitions_file(d, profile), board.data["flash_mb"])
    if fit:
        raise DeployError(f"{board.path.name}: the frozen firmware {d.name} does not fit this board: " + "; ".join(fit))
    want = firmware.build_id(d, profile=profile)
    mk = f"make firmware BOARD={board.path}" + (f" PROFILE={profile}" if profile != "development" else "")
    if flash:
        built = firmware.built_manifest(board.path, out_root or firmware.OUT, profile)
        where = firmware.out_dir(d, profile, Path("build/firmware"))
        if built is None:
            raise DeployError(f"--flash: no firmware built for {where.name}: run `{mk}` first")
        if built["build_id"] != want:
            raise DeployError(f"--flash: the firmware in {where} is build {built['build_id']}, the "
                              f"sources give {want}: run `{mk}` again")
    return want


def flash_firmware(board: boards.Board, port: str, erase: bool, p: "Progress", run=None,
                   out_root: Path | None = None, profile: str = "development") -> None:
    for c in flash_commands(board, port, erase, out_root, profile):
        p.say("flashing: " + shlex.join(c))
        if (run or _run_esptool)(c) != 0:
            raise DeployError(f"esptool failed: {shlex.join(c)} (is the board in download mode? hold BOOT, tap EN)")


def check_firmware(running: str | None, want: str, board: boards.Board, port: str,
                   profile: str = "development") -> None:
    """The board must run the frozen firmware this checkout builds: its gv_build.ID, over the REPL."""
    how = ("flash it: `make firmware BOARD={b}`, then rerun the deploy with --flash, or run\n  {c}"
           .format(b=board.path, c="\n  ".join(shlex.join(c) for c in flash_commands(board, port, profile=profile))))
    if running is None:
        raise DeployError(f"the board runs MicroPython without the grindvakt firmware (no frozen gv_build): "
                          f"{board.path.name} is a frozen-firmware board; {how}")
    if running != want:
        raise DeployError(f"the board runs firmware build {running}, this checkout builds {want}; {how}")


def frozen_build(board: boards.Board, build_root: Path, build_id: str) -> dict:
    """What a frozen board's filesystem gets: board.json only (the code is in the firmware), as a
    manifest shaped like tools.build's."""
    out = build_root / board.stem
    if out.exists():
        import shutil
        shutil.rmtree(out)
    out.mkdir(parents=True)
    bj = out / "board.json"
    bj.write_text(json.dumps(board.data, sort_keys=True) + "\n")
    files = [{"path": "board.json", "sha256": build.sha256_file(bj), "size": bj.stat().st_size}]
    m = {"board": board.stem, "board_name": board.name, "chip": board.chip, "firmware": "frozen",
         "build_id": build_id, "mpy_version": None, "mpy_sub_version": None, "mpy_native_arch": 0,
         "files": files, "footprint_bytes": files[0]["size"], "footprint_blocks": 1}
    (out / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    return m


def frozen_shadows(on_device: list[str], board: boards.Board) -> list[str]:
    """Code on the filesystem that would shadow the frozen firmware ("" is before ".frozen" in
    sys.path): anything under gv/, a frozen module's name as .py or .mpy, and .part leftovers
    (the gv/ folder itself goes too: the caller adds it)."""
    from tools import firmware

    names = set(firmware.frozen_set(firmware.def_dir(board.chip))) | {"gv_build.py"}
    stems = {n[:-3] for n in names}
    return sorted(c for c in on_device if c.endswith(".part") or c.startswith("gv/")
                  or c.rsplit(".", 1)[0] in stems)


def check_heap(heap: int, board: boards.Board, allow_small_heap: bool, p: "Progress") -> None:
    """Stock MicroPython with .mpy files only where the heap is a PSRAM board's."""
    if heap >= PSRAM_MIN_HEAP:
        return
    msg = (f"the board has {heap:,} bytes of MicroPython heap: no PSRAM in use (a plain ESP32 gives ~112 KB). "
           f"The reader as .mpy files on stock MicroPython needs ~158 KB and does not fit. On a plain ESP32 or an "
           f"ESP32-S3 without PSRAM run the frozen grindvakt firmware instead: a board file with "
           f"\"firmware\": \"frozen\" (e.g. boards/esp32-devkitc-i2c.json), `make firmware BOARD=...`, then "
           f"`make deploy` (docs/install.md). A PSRAM module (\"psram\" in {board.path.name}) on stock firmware "
           f"needs the image with PSRAM support: {esptool_commands(board.chip, '<port>', board.data.get('flash_mb'), board.data.get('psram'))[1]}")
    if not allow_small_heap:
        raise DeployError(msg + ". --allow-small-heap deploys anyway (development only).")
    p.say("WARNING (--allow-small-heap): " + msg)


def check_device(info: dict, board: boards.Board, manifest: dict) -> None:
    if info["chip"] != board.chip:
        raise DeployError(f"the board file is for {board.chip} but the device is {info['chip']} "
                          f"({info['machine']}): pick the board file for this hardware")
    v = tuple(info["version"])
    if v < MIN_MICROPYTHON:
        raise DeployError(f"MicroPython {'.'.join(map(str, v))} on the device is older than "
                          f"{'.'.join(map(str, MIN_MICROPYTHON))}: flash a current image "
                          f"({esptool_commands(board.chip, '<port>')[1]})")
    mpy = info["mpy"]
    if manifest["mpy_version"] is not None and (mpy & 0xFF) != manifest["mpy_version"]:
        raise DeployError(f"the build is .mpy v{manifest['mpy_version']} but the device loads "
                          f"v{mpy & 0xFF}: use the mpy-cross matching the device's MicroPython")
    if manifest.get("mpy_native_arch") and ((mpy >> 10) != manifest["mpy_native_arch"]
                                            or ((mpy >> 8) & 3) != manifest["mpy_sub_version"]):
        raise DeployError("the build has native code for another architecture or ABI than the device's")


class Progress:
    def __init__(self, out=sys.stdout, quiet: bool = False):
        self.out, self.quiet = out, quiet

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"deploy: {msg}", file=self.out, flush=True)


def deploy(port: str, board_path: str | Path, reader: str | None = None, *, config: dict | None = None,
           reset: bool = True, hello_timeout: float | None = 60.0, mqtt: str | None = None,
           mqtt_user: str | None = None, mqtt_password: str | None = None,
           repl_timeout: float = 10, progress: Progress | None = None,
           build_root: Path | None = None, src: Path | None = None, flash: bool = False,
           erase: bool = False, allow_small_heap: bool = False, esptool_run=None,
           firmware_root: Path | None = None, db: str | None = None, profile: str = "development") -> Report:
    p = progress or Progress()
    board = boards.load(board_path)
    frozen = board.firmware == "frozen"
    if config is None:
        if reader is None:
            raise DeployError("which reader? give --reader <id or config file>")
        config = provision.load_config(reader)
    else:
        provision.validate(config)
    if frozen:  # the code is in the firmware: the filesystem gets board.json and the config
        fw_id = frozen_expect(board, flash or erase, firmware_root, profile)
        manifest = frozen_build(board, build_root or build.BUILD, fw_id)
        p.say(f"{board.name} runs the frozen grindvakt firmware, build {fw_id}: gv/ is not copied")
        if flash or erase:
            flash_firmware(board, port, erase, p, esptool_run, firmware_root, profile)
        else:
            p.say("not flashing (--flash does): " + " && ".join(shlex.join(c) for c in flash_commands(
                board, port, out_root=firmware_root, profile=profile)))
    else:
        manifest = build.build(board_path, build_root or build.BUILD, src or build.FIRMWARE)
    out_dir = (build_root or build.BUILD) / manifest["board"]
    cfg_bytes = provision.encode(config)
    cfg_sha = build.hashlib.sha256(cfg_bytes).hexdigest()
    p.say(f"built {len(manifest['files'])} files for {board.name}: {manifest['footprint_bytes']} bytes")
    rep = Report()
    tap = None
    dev = Device(port, repl_timeout)
    try:
        try:
            dev.enter()
        except NoMicroPython as e:
            raise NoMicroPython(bare_board_message(e.args[0], board, port)) from None
        info = dev.info()
        rep.device = info
        p.say(f"device: {info['machine']}, MicroPython {'.'.join(map(str, info['version']))}, "
              f"chip {info['chip']}, mpy v{info['mpy'] & 0xFF}")
        if config.get("virtual") and info.get("platform") == "esp32":
            raise DeployError("this config is for a virtual board (\"virtual\": true: loopback broker, no "
                              "Wi-Fi); write the reader's real config with host-sync readers config")
        check_device(info, board, manifest)
        if frozen:
            running = dev.eval(_BUILD_ID)
            check_firmware(running, manifest["build_id"], board, port, profile)
            p.say(f"the board runs firmware build {running}: the one built")
        else:
            heap = dev.eval(_HEAP)
            rep.device["heap"] = heap
            check_heap(heap, board, allow_small_heap, p)
        state_txt = dev.read_text(STATE_PATH)
        state = json.loads(state_txt) if state_txt else {}
        if state.get("state") == "in-progress":
            rep.resumed = True
            p.say(f"the last deploy to this board (build {state.get('build')}) was cut off before it "
                  f"finished: finishing it now")
        want = {f["path"]: f for f in manifest["files"]}
        have, code_on_device = dev.hashes(sorted(want) + [CONFIG_PATH], walk=True)
        todo = [f for f in manifest["files"] if have.get(f["path"]) != f["sha256"]]
        stale = frozen_shadows(code_on_device, board) if frozen else stale_code(code_on_device, want)
        if frozen and dev.isdir("gv"):  # even an empty gv/ folder shadows the frozen package
            stale.append("gv/")
        cfg_todo = have.get(CONFIG_PATH) != cfg_sha
        complete = (state.get("state") == "complete" and state.get("build") == manifest["build_id"]
                    and state.get("config") == cfg_sha)
        if not todo and not stale and not cfg_todo and complete:
            rep.up_to_date = True
            rep.verified = len(want) + 1
            p.say(f"up to date: all {len(want)} files and the config already match (build "
                  f"{manifest['build_id']}); nothing copied")
        else:
            dev.write(STATE_PATH, (json.dumps({"state": "in-progress", "build": manifest["build_id"],
                                               "board": manifest["board"]}) + "\n").encode())
            total = sum(f["size"] for f in todo)
            p.say(f"copying {len(todo)} of {len(want)} files ({total} bytes); "
                  f"{len(want) - len(todo)} already match")
            # leftovers of a cut mid-file first: copying that file again would reuse its .part name
            for s in [x for x in stale if x.endswith(".part")]:
                dev.remove(s)
                rep.removed.append(s)
            made: set[str] = set()
            for i, f in enumerate(todo, 1):
                d = f["path"].rsplit("/", 1)[0] if "/" in f["path"] else ""
                if d and d not in made:
                    dev.makedirs(f["path"])
                    made.add(d)
                p.say(f"[{i}/{len(todo)}] {f['path']} ({f['size']} bytes)")
                dev.write(f["path"], (out_dir / f["path"]).read_bytes())
                rep.copied.append(f["path"])
                rep.bytes_copied += f["size"]
            for s in [x for x in stale if not x.endswith(".part")]:
                p.say(f"removing stale {s}")
                dev.remove(s)
                rep.removed.append(s)
            if cfg_todo:
                p.say(f"writing the config of reader {config['reader_id']} (site {config['site']})")
                dev.write(CONFIG_PATH, cfg_bytes)
                rep.config_written = True
            have, _ = dev.hashes(sorted(want) + [CONFIG_PATH])
            bad = [f["path"] for f in manifest["files"] if have.get(f["path"]) != f["sha256"]]
            if have.get(CONFIG_PATH) != cfg_sha:
                bad.append(CONFIG_PATH)
            if bad:
                raise VerifyFailed(f"after copying, {len(bad)} file(s) differ on the device: {', '.join(bad)}; "
                                   f"the board is marked as half deployed, rerun to retry")
            rep.verified = len(want) + 1
            dev.write(STATE_PATH, (json.dumps({"state": "complete", "build": manifest["build_id"],
                                               "board": manifest["board"], "config": cfg_sha,
                                               "files": len(want)}) + "\n").encode())
            p.say(f"verified {rep.verified} files on the device by sha256; deploy marked complete")
        waiter = None
        if reset and hello_timeout:
            waiter = hello_waiter(config, mqtt, mqtt_user, mqtt_password, db)
            waiter.start()
            if isinstance(waiter, hello.RegistryHelloWaiter) and not waiter.serve_up():
                p.say(f"warning: {waiter.serve_state()}: the hello cannot be seen until it runs")
        if reset:
            p.say("resetting the board")
            dev.reset()
            if waiter is not None:  # what the reader prints on its way up says why, if it fails
                tap = hello.ConsoleTap(dev.t.serial, skip=b"OK").start()
    except (OSError, TransportError) as e:  # serial errors: the cable, the board's power
        raise ConnectionLost(f"{type(e).__name__}: {e}") from None
    finally:
        rep.wire_bytes = dev.wire_bytes
        if tap is None:
            dev.close()
    if waiter is not None:
        p.say(f"waiting up to {hello_timeout:g} s for {config['reader_id']}'s hello on {waiter.topic}")
        try:
            rep.hello = waiter.wait(hello_timeout, tap)
        except hello.NoHelloError as e:
            raise NoHello(str(e)) from None
        finally:
            waiter.stop()
            if tap is not None:
                tap.stop()
        p.say(f"hello from {config['reader_id']}: firmware {rep.hello.get('fw')!r}, "
              f"allowlist v{rep.hello.get('al_version')}")
    return rep


def hello_waiter(config: dict, mqtt: str | None, user: str | None, password: str | None,
                 db: str | None) -> "HelloWaiter | hello.RegistryHelloWaiter":
    """The registry's view (what host-sync serve saw) unless a broker account is given."""
    try:
        if mqtt or user:
            return HelloWaiter(config, mqtt, user, password)
        return hello.RegistryHelloWaiter(config, db)
    except hello.NoHelloError as e:
        raise NoHello(str(e)) from None


class HelloWaiter:
    """Subscribes (before the reset) to the reader's retained hello topic and waits for a live,
    authenticated HELLO: one sealed with the secret just deployed, from a session not seen before."""

    def __init__(self, config: dict, mqtt: str | None = None, user: str | None = None,
                 password: str | None = None):
        from gv.sync import protocol  # firmware/ is on sys.path via tools.provision
        import paho.mqtt.client as paho

        self.protocol = protocol
        self.cfg = config
        b = config.get("broker") or {}
        host, port = b.get("host"), b.get("port")
        if mqtt:
            host, _, port = mqtt.rpartition(":")
            port = int(port)
        self.host, self.port = host, int(port)
        self.topic = protocol.topic(config["site"], config["reader_id"], "hello")
        self.key = protocol.Key(bytes.fromhex(config["secret"]), config["reader_id"])
        self.result: dict | None = None
        self.old_nonces: set[bytes] = set()
        self.errors: list[str] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"gv-deploy-{os.getpid()}")
        if user:
            self.client.username_pw_set(user, password)
        if b.get("tls") and not mqtt:
            import ssl
            ctx = ssl.create_default_context(cadata=b.get("ca"))
            ctx.check_hostname = False  # readers pin the site CA; the broker may be addressed by IP
            self.client.tls_set_context(ctx)
        self.client.connect_timeout = 10  # a broker address that drops SYNs: bounded too
        self.client.on_message = self._on_message
        self.subscribed = False

    def _on_message(self, client, userdata, msg) -> None:
        p = self.protocol
        try:
            typ, nonce, _, body = p.unseal(self.key, p.DIR_READER, msg.payload)
        except p.ProtoError as e:
            self.errors.append(f"unauthentic message on {msg.topic}: {e}")
            return
        if typ != p.T_HELLO:
            return
        if msg.retain:  # the previous session's hello, kept by the broker
            self.old_nonces.add(nonce)
            return
        if nonce in self.old_nonces:
            return
        self.result = dict(p.parse_hello(body), nonce=nonce.hex())

    def start(self) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise NoHello(f"can't reach the broker at {self.host}:{self.port} to watch for the hello: {e} "
                          f"(use --mqtt HOST:PORT, or --no-hello)") from None
        self.client.subscribe(self.topic, qos=1)
        self.client.loop_start()

    def wait(self, timeout: float, console: "hello.ConsoleTap | None" = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.result is not None:
                return self.result
            time.sleep(0.05)
        why = ("; " + "; ".join(self.errors[-3:])) if self.errors else ""
        step = hello.diagnose(console.lines if console else [], self.cfg,
                              "no authentic hello reached %s" % self.topic)
        raise NoHello(f"no hello from {self.cfg['reader_id']} on {self.topic} within {timeout:g} s{why}: "
                      f"{step}; the files are deployed and verified")

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.deploy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", required=True, help="the board's serial port (e.g. /dev/ttyUSB0)")
    ap.add_argument("--board", required=True, help="board file (boards/*.json) matching the hardware")
    ap.add_argument("--reader", required=True, help="reader id (config from GV_READERS_DIR) or config file")
    ap.add_argument("--no-reset", action="store_true", help="leave the board at the REPL (no reset, no hello)")
    ap.add_argument("--no-hello", action="store_true", help="don't wait for the reader's hello")
    ap.add_argument("--hello-timeout", type=float, default=60, help="seconds to wait for the hello (60)")
    ap.add_argument("--mqtt", help="HOST:PORT of the broker as seen from here (default: the config's); "
                                   "account from GV_MQTT_USER / GV_MQTT_PASSWORD")
    ap.add_argument("--db", help="the registry where host-sync serve records the hello (default: "
                                 "the host's, as for host-sync; env GV_DB)")
    ap.add_argument("--repl-timeout", type=float, default=10, help="seconds to wait for the REPL (10)")
    ap.add_argument("--build-dir", help="build root (default build/)")
    ap.add_argument("--src", help="firmware source folder (default firmware/), e.g. a release checkout's")
    ap.add_argument("--report", help="write the deploy report (JSON, no secrets) to this file")
    ap.add_argument("--flash", action="store_true", help="frozen boards: flash the firmware `make firmware` "
                                                         "built with esptool first (else the command is printed)")
    ap.add_argument("--erase", action="store_true", help="with --flash: erase the whole flash first (a first "
                                                         "install; wipes the allowlist, events and config)")
    ap.add_argument("--profile", choices=["development", "production"], default="development",
                    help="frozen boards: the firmware profile the board runs (production: provisioned once, "
                         "no REPL after; docs/security.md)")
    ap.add_argument("--allow-small-heap", action="store_true",
                    help="stock boards: deploy .mpy files even where the heap shows no PSRAM (development only)")
    args = ap.parse_args(argv)
    try:
        rep = deploy(args.port, args.board, args.reader, reset=not args.no_reset,
                     hello_timeout=None if args.no_hello else args.hello_timeout, mqtt=args.mqtt,
                     mqtt_user=os.environ.get("GV_MQTT_USER"), mqtt_password=os.environ.get("GV_MQTT_PASSWORD"),
                     repl_timeout=args.repl_timeout,
                     build_root=Path(args.build_dir) if args.build_dir else None,
                     src=Path(args.src) if args.src else None, flash=args.flash, erase=args.erase,
                     allow_small_heap=args.allow_small_heap, db=args.db, profile=args.profile)
    except (DeployError, boards.BoardError, build.BuildError, provision.ProvisionError) as e:
        code = getattr(e, "code", 1)
        if isinstance(e, ConnectionLost):
            msg = (f"connection to {args.port} lost ({e}). The board may be half deployed: it says so "
                   f"in /deploy.json. Reconnect and rerun the same command to finish.")
        else:
            msg = str(e)
        print(f"deploy: {msg}", file=sys.stderr)
        return code
    if args.report:
        Path(args.report).write_text(json.dumps(rep.as_dict(), indent=1) + "\n")
    print(f"deploy: done: copied {len(rep.copied)} files ({rep.bytes_copied} bytes), removed "
          f"{len(rep.removed)}, config {'written' if rep.config_written else 'unchanged'}, "
          f"verified {rep.verified}{', resumed a cut deploy' if rep.resumed else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

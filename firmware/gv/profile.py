# The firmware profile and what it decides: the serial console and the store's in-place writes.
#
# "production" is built by `make firmware PROFILE=production` (tools/firmware.py): flash encryption
# in release mode, secure boot, NVS encryption, JTAG off (docs/security.md). On top of that this
# module keeps the serial REPL shut while the reader holds secrets: on a board whose flash is
# encrypted the REPL is the one way left to read /config.json (the running firmware decrypts).
#   - No /config.json yet: the REPL is there, so `tools.deploy` can provision the board once.
#   - /deploy.json "in-progress" (a provisioning deploy was cut off): the REPL is there to finish it.
#   - Otherwise: Ctrl-C is a plain character (micropython.kbd_intr(-1)), main.py never returns to
#     the REPL (a reset instead), and Ctrl-A/Ctrl-D reach nothing: the app never reads stdin.
# Why not a service jumper: a thief who holds the board holds the jumper too.
# "development" (stock .mpy boards, the default frozen build): the console as MicroPython has it.
#
# The ESP32 port re-arms Ctrl-C before it runs each of boot.py and main.py, so both call guard()
# first thing (see there). The profile comes from the frozen gv_build only: a gv_build.py on the
# filesystem ("" is first in sys.path) cannot turn a production board into a development one.
import sys

import micropython

PRODUCTION = "production"
_locked = False
_said = False


def _no_kbd(c):
    pass


# micropython.kbd_intr on the board. Not on the unix port: there kbd_intr(-1) restores SIGINT's
# default action, so a ^C would kill the process; the virtual board's launcher takes ^C off its
# terminal instead when told (_report). A dict lookup, not an `if`: no jump before the lock.
_kbd = {"esp32": micropython.kbd_intr}.get(sys.platform, _no_kbd)


def _frozen(attr, default):
    # gv_build's attr from the frozen build only (never a file: "" is first in sys.path)
    old = sys.path[:]
    sys.path[:] = [p for p in old if p in (".frozen", "/rom")]
    try:
        import gv_build

        return getattr(gv_build, attr, default)
    except ImportError:
        return default
    finally:
        sys.path[:] = old


def name():
    """This firmware's profile: gv_build.PROFILE of the frozen build; "development" without one."""
    return _frozen("PROFILE", "development")


def build_id():
    """The frozen build's id (tools/firmware.py hashes the sources into it); None on .mpy files."""
    return _frozen("ID", None)


def production():
    return name() == PRODUCTION


def holds_secrets():
    """True unless the board is unprovisioned (no /config.json) or mid-provisioning."""
    import os

    try:
        os.stat("/config.json")
    except OSError:
        return False
    try:
        import json

        with open("/deploy.json") as f:
            return json.load(f).get("state") != "in-progress"
    except (OSError, ValueError, AttributeError):
        return True  # a config without a deploy record: never hand it out


def _report():
    try:
        import vboard

        vboard.send({"console": "locked"})
    except ImportError:
        pass


def guard():
    """boot.py and main.py, first thing (after `from gv.profile import guard`): in production,
    while the flash holds secrets, Ctrl-C stops nothing. Returns True when locked.

    The ESP32 port arms Ctrl-C before it runs each file, and a Ctrl-C that lands before the lock
    is raised at the next check point of the VM (a jump, a sleep), so the lock comes first, before
    any: a Ctrl-C taken earlier is raised after it, inside this call, and the caller calls guard()
    again (`except KeyboardInterrupt`), when no new one can arrive. If boot.py died of one, the
    port would skip main.py and start the REPL."""
    global _locked, _said
    _kbd(-1)
    _locked = True
    if production() and holds_secrets():
        if not _said:
            _said = True
            _report()
            print("grindvakt: production firmware: no REPL on this console (docs/security.md)")
        import time

        time.sleep_ms(1)  # raises a Ctrl-C taken before the lock (the caller drops it)
        return True
    _locked = False
    _kbd(3)
    return False


def locked():
    return _locked


def hold():
    """main.py, after the app: a locked console never falls through to the REPL."""
    if _locked:
        import machine

        machine.reset()


def store_in_place():
    """In-place (NOR) deltas are off on production firmware: with flash encryption an encrypted
    write is a whole 16-byte unit, so entries cannot be programmed a byte at a time into room
    LittleFS wrote as 0xFF (docs/allowlist-format.md). The store also turns them off by itself
    on a partition that says it is encrypted."""
    return not production()
